"""Console speed and size.

    python benchmarks/bench_tui.py [--rounds 5] [--machines 1000]

1. Start-up: wall time from spawning the process to the login screen being drawn in a real
   terminal (tmux, 80x24), for `ggnet` and for a bare Textual app with one DataTable started the
   same way (python -c ...) in the same run; median of --rounds each, and the ratio.
2. Machines screen with N machines (headless Pilot, 120x40, SQLite, in a child process):
   time to first paint; the UI cost of one refresh in which 50 statuses change (keyed diff and
   the repaint it causes) and the whole refresh including the database read; peak RSS.
   Anchor for the refresh CPU: a bare Textual DataTable with the same rows and columns doing
   the same 50 updates (update_cell) and repaint, in the same process; the ratio of the two.
3. A machine's details with 1,000 boots in its history (headless Pilot, 120x40, SQLite, in a
   child process): wall and CPU time from Enter on Machines (the cursor on the machine's row,
   Machines done reacting to it) to the first paint with the history (the database read, the
   rows, the paint, and the Pilot's wait for the console to fall idle after it: at least 20 ms):
   the first open and the median of 5 later ones.
   Anchor: a bare Textual screen with one DataTable
   filled with the same 1,000 rows (add_rows) and painted, in the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BARE_APP = """
from textual.app import App
from textual.widgets import DataTable, Footer, Header
class Bare(App):
    def compose(self):
        yield Header()
        table = DataTable()
        table.add_columns("Name", "Status")
        table.add_row("READY-MARKER", "ok")
        yield table
        yield Footer()
Bare().run()
"""


def _time_to_text(command: str, needle: str, env: dict[str, str]) -> float:
    socket = f"bench-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", socket]
    env_prefix = " ".join(f"{k}='{v}'" for k, v in env.items())
    start = time.perf_counter()
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "b", "-x", "80", "-y", "24", f"env {env_prefix} {command}"], check=True
    )
    try:
        while time.perf_counter() - start < 30:
            shown = subprocess.run([*tmux, "capture-pane", "-p", "-t", "b"], capture_output=True, text=True).stdout
            if needle in shown:
                return time.perf_counter() - start
            time.sleep(0.005)
        raise RuntimeError(f"{needle!r} never appeared")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def bench_startup(rounds: int) -> dict[str, float]:
    data = Path(tempfile.mkdtemp(prefix="ggnet-bench-"))
    env = {"GGNET_DATA_DIR": str(data), "GGNET_TGT_CONTROL_PORT": "32000", "TERM": "xterm-256color"}
    # a database with one user, so ggnet opens on its login screen
    subprocess.run(
        [str(Path(sys.executable).parent / "ggnet"), "init", "--admin", "admin"],
        check=True,
        env={**os.environ, **env, "GGNET_NEW_PASSWORD": "correct-horse-1"},
        capture_output=True,
    )
    ggnet = f"{Path(sys.executable).parent / 'ggnet'}"
    bare_file = data / "bare.py"
    bare_file.write_text(BARE_APP)
    bare = f"{sys.executable} {bare_file}"
    ggnet_times, bare_times = [], []
    for _ in range(rounds):  # interleaved, so both see the same machine state
        bare_times.append(_time_to_text(bare, "READY-MARKER", env))
        ggnet_times.append(_time_to_text(ggnet, "Log in to ggnet", env))
    g, b = statistics.median(ggnet_times), statistics.median(bare_times)
    return {"ggnet_login_s": g, "bare_datatable_s": b, "ratio": g / b}


async def _machines(count: int) -> dict[str, float]:
    from core import auth
    from core.config import Settings
    from core.context import Core
    from core.log import configure_logging
    from core.services import machines, users
    from tests.tui.helpers import FakeProbe, make_app, wait_for

    auth.set_bcrypt_rounds(4)
    data = Path(tempfile.mkdtemp(prefix="ggnet-bench-"))
    settings = Settings(data_dir=data, refresh_seconds=600, idle_lock_minutes=0)
    configure_logging(settings.log_file)
    core = Core.open(settings)
    await core.db.upgrade()
    await users.create_first_admin(core, "admin", "correct-horse-1")
    admin = await users.login(core, "admin", "correct-horse-1")
    lines = ["name,mac,ip"] + [
        f"pc{i:04d},52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x},10.0.{i // 250}.{i % 250 + 1}"
        for i in range(1, count + 1)
    ]
    await machines.import_csv(core, admin, "\n".join(lines))
    names = [f"pc{i:04d}" for i in range(1, count + 1)]
    probe = FakeProbe(set(names[::2]))
    app = make_app(core, probe)
    result: dict[str, float] = {}
    async with app.run_test(size=(120, 40)) as pilot:
        await app.log_in("admin", "correct-horse-1")
        await wait_for(pilot, lambda: app.monitor.polled_at)
        start = time.perf_counter()
        await app.action_go("machines")
        screen = app.screen
        await wait_for(pilot, lambda: screen.refreshes >= 1, delay=0.001, steps=100000)
        await pilot.pause()  # the paint
        result["first_paint_ms"] = (time.perf_counter() - start) * 1000
        assert screen.table.row_count == count

        # 50 PCs change state: the monitor has the new statuses; one refresh shows them
        probe.online = set(names[::2]) ^ set(names[:50])  # the first 50 flip
        await app.monitor.poll(app.actor)
        changed_before = sum(
            1 for n in names if screen.table.rows_by_key[n]["status"].plain != app.monitor.statuses[n].state
        )
        idle = []
        for _ in range(3):  # what a Pilot pause costs when nothing changed (subtracted below)
            start = time.perf_counter()
            await pilot.pause()
            idle.append(time.perf_counter() - start)
        start, cpu_start = time.perf_counter(), time.process_time()
        screen.rebuild()  # the keyed diff: update_cell for the changed statuses only
        result["refresh_50_diff_ms"] = (time.perf_counter() - start) * 1000
        await pilot.pause()  # the repaint it causes
        result["refresh_50_ui_ms"] = (time.perf_counter() - start - min(idle)) * 1000
        # the CPU it cost (the wall figure above also holds Textual's frame pacing and the loop's waits)
        cpu = [(time.process_time() - cpu_start) * 1000]
        result["cells_changed"] = changed_before
        for round_ in range(4):  # more rounds of 50 changes, flipping back and forth (median)
            probe.online = set(names[::2]) ^ (set(names[:50]) if round_ % 2 else set())
            await app.monitor.poll(app.actor)
            cpu_start = time.process_time()
            screen.rebuild()
            await pilot.pause()
            cpu.append((time.process_time() - cpu_start) * 1000)
        result["refresh_50_cpu_ms"] = statistics.median(cpu)

        # for comparison: one status change (DataTable repaints every visible row after any change)
        probe.online = set(names[::2]) ^ {names[0]}
        await app.monitor.poll(app.actor)
        start = time.perf_counter()
        screen.rebuild()
        await pilot.pause()
        result["refresh_1_ui_ms"] = (time.perf_counter() - start - min(idle)) * 1000

        probe.online = set(names[::2])
        await app.monitor.poll(app.actor)
        done = screen.refreshes
        start = time.perf_counter()
        screen.action_refresh_now()  # database read of all machines + sessions, then the diff
        await wait_for(pilot, lambda: screen.refreshes > done, delay=0.001, steps=100000)
        await pilot.pause()
        result["refresh_50_with_db_ms"] = (time.perf_counter() - start) * 1000
    await core.close()
    result["anchor_refresh_50_cpu_ms"] = await _bare_datatable(count)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


async def _bare_datatable(count: int, rounds: int = 5) -> float:
    """CPU of 50 update_cell calls and the repaint in a bare DataTable of ``count`` rows (median)."""
    from textual.app import App, ComposeResult
    from textual.widgets import DataTable

    columns = ["", "Name", "Status", "MAC", "IP", "Image", "Session", "Boot", "Last seen"]

    class Bare(App[None]):
        def compose(self) -> ComposeResult:
            yield DataTable(cursor_type="row")

    app = Bare()
    figures = []
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(DataTable)
        keys = table.add_columns(*columns)
        for i in range(count):
            table.add_row(
                "",
                f"pc{i:04d}",
                "online" if i % 2 else "offline",
                "52:54:00:00:00:00",
                "10.0.0.1",
                "-",
                "-",
                "bios",
                "-",
                key=str(i),
            )
        await pilot.pause()
        for round_ in range(rounds):
            start = time.process_time()
            for i in range(50):
                table.update_cell(str(i), keys[2], "online" if (i + round_) % 2 else "offline")
            await pilot.pause()
            figures.append((time.process_time() - start) * 1000)
    return statistics.median(figures)


async def _details(boots: int, rounds: int = 5) -> dict[str, float]:
    """Opening a machine's details with ``boots`` boots in its history (pc0001's, then pc0002's, in
    turn), and the bare anchor."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert

    from core import auth
    from core.config import Settings
    from core.context import Core
    from core.log import configure_logging
    from core.models import Boot
    from core.services import machines, users
    from tests.tui.helpers import make_app, wait_for

    auth.set_bcrypt_rounds(4)
    data = Path(tempfile.mkdtemp(prefix="ggnet-bench-"))
    settings = Settings(data_dir=data, refresh_seconds=600, idle_lock_minutes=0)
    configure_logging(settings.log_file)
    core = Core.open(settings)
    await core.db.upgrade()
    await users.create_first_admin(core, "admin", "correct-horse-1")
    admin = await users.login(core, "admin", "correct-horse-1")
    pcs = [await machines.add_machine(core, admin, name=f"pc000{n}", mac=f"52:54:00:00:00:0{n}") for n in (1, 2)]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        {
            "server": settings.server_name,
            "machine_id": machine.id,
            "machine_name": machine.name,
            "mac": machine.mac,
            "origin": "pc",
            "requested_at": start + timedelta(minutes=i),
            "requested_by": "pc",
            "client_address": "10.0.0.21",
            "policy": "fresh",
            "state": "ended" if i % 10 else "refused",
            "error": None if i % 10 else "12 MiB free, 10240 MiB reserved",
            "login_at": start + timedelta(minutes=i, seconds=12) if i % 10 else None,
            "login_address": "10.0.0.21",
            "ended_at": start + timedelta(minutes=i, seconds=50),
            "end_reason": "superseded" if i % 10 else "refused",
        }
        for machine in pcs
        for i in range(boots)
    ]
    async with core.db.transaction() as session:
        await session.execute(insert(Boot), rows)
    app = make_app(core)
    walls, cpus = [], []
    async with app.run_test(size=(120, 40)) as pilot:
        await app.log_in("admin", "correct-horse-1")
        await app.action_go("machines")
        # the login's own work (site checks, first liveness poll) is over before anything is timed
        await wait_for(pilot, lambda: app.screen.refreshes >= 1 and app.site_checks and app.monitor.polled_at)
        await pilot.pause(0.5)
        machines_screen = app.screen
        for round_ in range(rounds + 1):
            # Enter on pc0001's row, then pc0002's, ...: each opening shows another machine
            machines_screen.table.move_cursor(machines_screen.table.order.index(pcs[round_ % 2].name))
            await pilot.pause()  # the cursor rests on the row (Machines shows its summary) before Enter
            wall, cpu = time.perf_counter(), time.process_time()
            await machines_screen.action_details()
            want = pcs[round_ % 2].name

            def shown(want: str = want) -> bool:
                screen = app.screen
                return screen is not machines_screen and screen.machine is not None and screen.machine.name == want

            await wait_for(pilot, shown, delay=0.001, steps=100000)
            await pilot.pause()  # the paint
            walls.append((time.perf_counter() - wall) * 1000)
            cpus.append((time.process_time() - cpu) * 1000)
            assert app.screen.table.row_count == min(boots, 1000)
            app.pop_screen()
            await pilot.pause()
    await core.close()
    return {
        "first_details_ms": walls[0],
        "first_details_cpu_ms": cpus[0],
        "details_ms": statistics.median(walls[1:]),
        "details_cpu_ms": statistics.median(cpus[1:]),
        "anchor_details_ms": await _bare_history(boots, rounds),
    }


async def _bare_history(boots: int, rounds: int) -> float:
    """A bare screen with one DataTable of ``boots`` rows of 7 columns: pushed, filled, painted."""
    from textual.app import App, ComposeResult
    from textual.screen import Screen
    from textual.widgets import DataTable

    class History(Screen[None]):
        def compose(self) -> ComposeResult:
            yield DataTable(cursor_type="row")

        def on_mount(self) -> None:
            table = self.query_one(DataTable)
            table.add_columns("Requested", "Image", "Login", "Client", "Outcome", "By", "Games")
            table.add_rows(
                ("01-01 10:00", "win11 v3", "12 s", "10.0.0.21", "ended (superseded)", "pc", "-") for _ in range(boots)
            )

    class Bare(App[None]):
        pass

    app = Bare()
    figures = []
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(rounds):
            start = time.perf_counter()
            await app.push_screen(History())
            await pilot.pause()
            figures.append((time.perf_counter() - start) * 1000)
            app.pop_screen()
            await pilot.pause()
    return statistics.median(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--boots", type=int, default=1000)
    parser.add_argument("--child-machines", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-boots", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--skip-startup", action="store_true", help="leave out the tmux start-up figures")
    args = parser.parse_args()
    if args.child_machines:
        print(json.dumps(asyncio.run(_machines(args.child_machines))))
        return
    if args.child_boots:
        print(json.dumps(asyncio.run(_details(args.child_boots))))
        return
    if not args.skip_startup:
        startup = bench_startup(args.rounds)
        print(
            f"start-up to login screen: ggnet {startup['ggnet_login_s'] * 1000:.0f} ms, "
            f"bare Textual+DataTable {startup['bare_datatable_s'] * 1000:.0f} ms, ratio {startup['ratio']:.2f}x "
            f"(median of {args.rounds}; aim <= 2x)"
        )
    child = subprocess.run(
        [sys.executable, __file__, "--child-machines", str(args.machines)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"machines screen, {args.machines} machines: first paint {figures['first_paint_ms']:.0f} ms")
    print(
        f"one refresh with {figures['cells_changed']:.0f} status changes: keyed diff "
        f"{figures['refresh_50_diff_ms']:.1f} ms, diff + repaint {figures['refresh_50_ui_ms']:.1f} ms "
        f"(aim < 30 ms; one change alone: {figures['refresh_1_ui_ms']:.1f} ms), "
        f"whole refresh with the database read {figures['refresh_50_with_db_ms']:.1f} ms"
    )
    cpu, anchor = figures["refresh_50_cpu_ms"], figures["anchor_refresh_50_cpu_ms"]
    print(
        f"refresh CPU, 50 changes in {args.machines} rows: ggnet {cpu:.1f} ms (aim < 30 ms), "
        f"bare DataTable doing the same 50 updates {anchor:.1f} ms, ratio {cpu / anchor:.2f}x"
    )
    print(f"peak memory (RSS) with {args.machines} machines: {figures['peak_rss_mb']:.0f} MB (aim < 150 MB)")
    print_details(args.boots)


def print_details(boots: int) -> None:
    child = subprocess.run(
        [sys.executable, __file__, "--child-boots", str(boots)], capture_output=True, text=True, check=True, cwd=ROOT
    )
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    ours, anchor = figures["details_ms"], figures["anchor_details_ms"]
    print(
        f"machine details with {boots} boots in its history: opens in {ours:.0f} ms "
        f"(CPU {figures['details_cpu_ms']:.0f} ms; median of 5; aim < 100 ms), the first time "
        f"{figures['first_details_ms']:.0f} ms (CPU {figures['first_details_cpu_ms']:.0f} ms); "
        f"a bare DataTable screen with the same rows {anchor:.0f} ms, ratio {ours / anchor:.2f}x"
    )


if __name__ == "__main__":
    main()
