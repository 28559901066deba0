"""Screenshots of every screen and dialog at 80x24 and 120x40, on deterministic data:
fixed timestamps in the database, a frozen clock, a fixed host name and free space, no
target stack, no cursor blink, no animation, no toasts, isolated XDG directories (conftest).

Update after an intended change with: pytest tests/tui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import text

from core.context import Core
from core.doctor import Check
from core.models import Boot, DiscoveredMac, MachineObservation, Role
from core.services import images, machines
from tests.conftest import make_database_url, make_settings, make_user
from tests.tui.helpers import FROZEN, FakeProbe, fill, log_in, make_app, quiet, wait_for

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]
IMPORT_DIR = Path("/tmp/ggnet-snapshot-files")  # a fixed path: the file picker shows it
LOG_LINES = [
    '{"event": "audit", "operation": "auth.login", "actor": "root-admin", "level": "info", "timestamp": "2026-03-14T09:30:00Z"}',
    '{"event": "permission denied", "reason": "viewer \'vera\' may not manage machines", "level": "warning", "timestamp": "2026-03-14T09:31:00Z"}',
    '{"event": "unexpected error in the console", "incident": "1a2b3c4d", "level": "error", "timestamp": "2026-03-14T09:32:00Z"}',
]


CSV_TEXT = "name,mac,ip\npc06,52:54:00:aa:00:06,10.0.0.26\npc07,nonsense,\npc01,52:54:00:aa:00:08,\n"


def _import_files() -> None:
    """The fixed directory holds exactly these files (whichever test ran before, in any worktree)."""
    import shutil as _shutil

    _shutil.rmtree(IMPORT_DIR, ignore_errors=True)
    IMPORT_DIR.mkdir()
    (IMPORT_DIR / "game.vhdx").write_bytes(b"")
    (IMPORT_DIR / "machines.csv").write_text(CSV_TEXT)


_seeded_template: dict[str, Path] = {}


def _settings(tmp_path: Path, template_root: Path, seed: bool) -> Any:
    if seed and "db" in _seeded_template:  # seeded once per run, copied for each test
        shutil.copy(_seeded_template["db"], tmp_path / "ggnet.db")
        url = f"sqlite+aiosqlite:///{tmp_path / 'ggnet.db'}"
    else:
        url, _ = asyncio.run(make_database_url("sqlite", tmp_path, template_root))
    settings = make_settings(tmp_path, url, refresh_seconds=600, idle_lock_minutes=0)
    log = tmp_path / "console.log"
    log.write_text("\n".join(LOG_LINES) + "\n")
    settings.log_file = log  # what the Logs screen shows; the test run logs elsewhere

    async def fill_database() -> None:
        core = Core.open(settings)
        admin = await make_user(core, "root-admin", Role.ADMIN)
        await make_user(core, "oscar", Role.OPERATOR)
        for i, (mode, ip) in enumerate(
            [
                ("bios", "10.0.0.21"),
                ("uefi", "10.0.0.22"),
                ("uefi-secure", None),
                ("bios", "10.0.0.24"),
                ("uefi", "10.0.0.25"),
            ],
            start=1,
        ):
            await machines.add_machine(core, admin, name=f"pc0{i}", mac=f"52:54:00:aa:00:0{i}", ip=ip, boot_mode=mode)
        disk = tmp_path / "win11.raw"
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "4M"], check=True)
        await images.import_image(core, admin, disk, name="win11")
        await images.assign_image(core, admin, "pc01", "win11")
        await core.close()

    if seed and "db" not in _seeded_template:
        asyncio.run(fill_database())
        _seeded_template["db"] = template_root / "tui-seeded.db"
        shutil.copy(tmp_path / "ggnet.db", _seeded_template["db"])
    return settings


@pytest.fixture
def seeded(tmp_path: Path, template_root: Path) -> Any:
    return _settings(tmp_path, template_root, seed=True)


@pytest.fixture
def empty(tmp_path: Path, template_root: Path) -> Any:
    return _settings(tmp_path, template_root, seed=False)


async def freeze_times(core: Core) -> None:
    """Every stored timestamp to the frozen clock, so screens show the same dates every run."""
    at = FROZEN.replace(tzinfo=None).isoformat(sep=" ")
    async with core.db.transaction() as session:
        for statement in (
            "UPDATE users SET created_at=:t, updated_at=:t, last_login_at=:t",
            "UPDATE machines SET created_at=:t, updated_at=:t",
            "UPDATE images SET created_at=:t, updated_at=:t",
            "UPDATE image_versions SET created_at=:t",
            "UPDATE audit_events SET at=:t",
        ):
            await session.execute(text(statement), {"t": at})


SITE_CHECKS = [  # what the doctor would find: fixed, since every host differs
    Check(
        "reflink", "warn", "ext4 cannot make reflink clones: every writeback is a full copy; put GGNET_DATA_DIR on XFS"
    ),
    Check(
        "boot files (uefi)",
        "fail",
        "/var/lib/ggnet/tftp has neither ipxe.efi nor snponly.efi: UEFI machines cannot load iPXE; "
        "copy it from /usr/lib/ipxe/ (apt-get install ipxe)",
    ),
]


def console(settings: Any, term: str | None = None) -> Any:
    app = make_app(Core.open(settings), FakeProbe({"pc02", "pc04"}), term=term)
    app.disk_usage = lambda _path: SimpleNamespace(free=40 * 2**30, total=100 * 2**30)

    async def site_checks() -> list[Check]:
        return SITE_CHECKS

    app.check_site = site_checks
    return app


def logged_in(mode: str, then: Callable[[Any], Awaitable[None]] | None = None) -> Callable[[Any], Awaitable[None]]:
    async def run_before(pilot: Any) -> None:
        app = pilot.app
        await log_in(pilot, "root-admin")
        await wait_for(pilot, lambda: app.actor and app.monitor.polled_at)
        app.clear_notifications()  # the login toast: gone or not by the screenshot, by machine speed
        await app._refresh_site_checks()
        await freeze_times(app.core)
        await app.action_go(mode)
        screen = app.screen
        done = screen.refreshes
        screen.action_refresh_now()
        await wait_for(pilot, lambda: screen.refreshes > done and screen.settled)
        if then is not None:
            await then(pilot)
        await pilot.pause()
        quiet(app)

    return run_before


def snap(snap_compare: Any, settings: Any, size: tuple[int, int], run_before: Any) -> None:
    app = console(settings)
    assert snap_compare(app, terminal_size=size, run_before=run_before)


async def _settled(pilot: Any) -> None:
    await pilot.pause()
    quiet(pilot.app)


# --- screens -------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_first_run(snap_compare, empty, size):
    async def run_before(pilot: Any) -> None:
        await wait_for(
            pilot, lambda: type(pilot.app.screen).__name__ == "FirstRunScreen" and pilot.app.screen.query("#again")
        )
        await _settled(pilot)

    snap(snap_compare, empty, size, run_before)


@pytest.mark.parametrize("size", SIZES)
def test_login_refused(snap_compare, seeded, size):
    async def run_before(pilot: Any) -> None:
        await log_in(pilot, "root-admin", "not-the-password")
        await wait_for(pilot, lambda: "wrong" in str(pilot.app.screen.query_one("#message").render()))
        await _settled(pilot)

    snap(snap_compare, seeded, size, run_before)


@pytest.mark.parametrize("mode", ["dashboard", "machines", "images", "sessions", "targets", "users", "audit", "logs"])
@pytest.mark.parametrize("size", SIZES)
def test_screen(snap_compare, seeded, size, mode):
    snap(snap_compare, seeded, size, logged_in(mode))


# --- dialogs -------------------------------------------------------------------


async def _press(pilot: Any, *keys: str, ready: str) -> None:
    await pilot.press(*keys)
    await wait_for(pilot, lambda: pilot.app.screen.query(ready))


async def _add_form(pilot: Any) -> None:
    await _press(pilot, "a", ready="#save")


async def _edit_with_error(pilot: Any) -> None:
    await _press(pilot, "e", ready="#save")
    await fill(pilot, "#f-ip", "10.0.0.300")
    await pilot.press("enter")
    await wait_for(pilot, lambda: "hidden" not in pilot.app.screen.query_one("#e-ip").classes)


async def _delete_marked(pilot: Any) -> None:
    await pilot.press("space", "space")
    await _press(pilot, "ctrl+d", ready="#yes")


async def _help(pilot: Any) -> None:
    await _press(pilot, "question_mark", ready=".dialog-title")


async def _csv_preview(pilot: Any) -> None:
    csv = IMPORT_DIR / "machines.csv"
    _import_files()
    await _press(pilot, "c", ready="#path")
    await fill(pilot, "#path", str(csv))
    await pilot.press("enter")
    await wait_for(pilot, lambda: "bad row" in str(pilot.app.screen.query_one("#report").render()))


async def _palette(pilot: Any) -> None:
    await _press(pilot, "ctrl+p", ready="CommandInput")
    await pilot.press(*"wake")
    await wait_for(pilot, lambda: pilot.app.screen.query_one("CommandList").option_count == 1)
    await pilot.pause(0.3)


async def _lock(pilot: Any) -> None:
    pilot.app.action_lock()
    await wait_for(pilot, lambda: pilot.app.screen.query("#password"))
    await fill(pilot, "#password", "wrong-password-1")
    await pilot.press("enter")
    await wait_for(pilot, lambda: "wrong" in str(pilot.app.screen.query_one("#message").render()))


async def _audit_event(pilot: Any) -> None:
    await _press(pilot, "enter", ready=".dialog-title")


async def _import_dialog(pilot: Any) -> None:
    _import_files()  # machines.csv is there too: the picker shows disk images only
    pilot.app.core.settings.import_dir = IMPORT_DIR
    await _press(pilot, "a", ready="#tree")
    await pilot.pause(0.3)


async def _confirm_stop_logged_in(pilot: Any) -> None:
    from ggnet_tui.screens.modals import ConfirmScreen

    pilot.app.push_screen(
        ConfirmScreen(
            "The client of pc02 is still logged in: stopping cuts its disk off while it runs.",
            yes="Stop anyway",
            type_to_confirm="pc02",
        )
    )
    await wait_for(pilot, lambda: pilot.app.screen.query("#word"))


DIALOGS = {
    "machine_add": ("machines", _add_form),
    "machine_edit_error": ("machines", _edit_with_error),
    "machine_delete_confirm": ("machines", _delete_marked),
    "machine_help": ("machines", _help),
    "machine_csv_preview": ("machines", _csv_preview),
    "palette": ("machines", _palette),
    "lock": ("dashboard", _lock),
    "audit_event": ("audit", _audit_event),
    "image_import": ("images", _import_dialog),
    "session_stop_confirm": ("sessions", _confirm_stop_logged_in),
}


def test_linux_console_theme(snap_compare, seeded):
    """TERM=linux: the 16-colour ANSI theme and no eighth-block glyphs."""
    assert snap_compare(console(seeded, "linux"), terminal_size=(80, 24), run_before=logged_in("machines"))


# --- the views of issue 9 part 2 --------------------------------------------------------------


async def _boot_history(pilot: Any) -> None:
    """pc01's history as the engine records it (times fixed), its observation, then its details."""
    core = pilot.app.core
    t0 = FROZEN - timedelta(hours=2)
    async with core.db.transaction() as session:
        machine = (await session.execute(text("SELECT id FROM machines WHERE name = 'pc01'"))).scalar_one()
        version = (await session.execute(text("SELECT id FROM image_versions"))).scalar_one()
        for i, (state, error, reason, login) in enumerate(
            [
                ("ended", None, "superseded", 14),
                ("ended", None, "offline", 11),
                ("refused", "12 MiB free, 10240 MiB reserved", "refused", None),
                ("ready", None, None, 9),
            ]
        ):
            at = t0 + timedelta(minutes=20 * i)
            session.add(
                Boot(
                    server=core.settings.server_name,
                    machine_id=machine,
                    machine_name="pc01",
                    mac="52:54:00:aa:00:01",
                    origin="pc",
                    requested_at=at,
                    requested_by="pc",
                    client_address="10.0.0.21",
                    policy="fresh",
                    image_version_id=None if error else version,
                    state=state,
                    error=error,
                    end_reason=reason,
                    ended_at=at + timedelta(minutes=15) if reason else None,
                    prepared_at=None if error else at + timedelta(seconds=1),
                    prepare_ms=None if error else 180 + i,
                    login_at=at + timedelta(seconds=login) if login else None,
                    login_address="10.0.0.21" if login else None,
                )
            )
        session.add(
            MachineObservation(
                machine_id=machine,
                server=core.settings.server_name,
                status="booted",
                logged_in=True,
                client_address="10.0.0.21",
                target_present=True,
                read_bytes=1536 << 20,
                written_bytes=200 << 20,
                writeback_bytes=210 << 20,
                last_seen_at=FROZEN,
                observed_at=FROZEN,
            )
        )
    screen = pilot.app.screen
    done = screen.refreshes
    screen.action_refresh_now()
    await wait_for(pilot, lambda: screen.refreshes > done and screen.settled)
    await pilot.press("enter")
    await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "MachineDetailsScreen")
    details = pilot.app.screen
    await wait_for(pilot, lambda: details.refreshes and details.settled and details.table.row_count == 4)


async def _discovered(pilot: Any) -> None:
    core = pilot.app.core
    async with core.db.transaction() as session:
        for i, address in enumerate(("10.0.0.61", None, "10.0.0.63")):
            session.add(
                DiscoveredMac(
                    server=core.settings.server_name,
                    mac=f"52:54:00:cc:00:0{i + 1}",
                    first_seen_at=FROZEN - timedelta(days=1, minutes=i),
                    last_seen_at=FROZEN - timedelta(minutes=10 * i),
                    requests=3 - i,
                    last_address=address,
                )
            )
    screen = pilot.app.screen
    done = screen.refreshes
    screen.action_refresh_now()
    await wait_for(pilot, lambda: screen.refreshes > done and screen.settled and screen.table.row_count == 3)
    await pilot.press("space")


async def _jobs(pilot: Any) -> None:
    from ggnet_tui.jobs import CANCELLED, DONE, Job

    app = pilot.app
    frozen = 1000.0
    done = Job("import win11.vhdx as win11", FROZEN - timedelta(minutes=30), clock=lambda: frozen, started=frozen - 300)
    done.progress(100)
    done.finish(DONE, "imported win11 version 1 (active)")
    cancelled = Job("import old.qcow2 as old", FROZEN - timedelta(minutes=20), clock=lambda: frozen, started=frozen - 5)
    cancelled.progress(12)
    cancelled.finish(CANCELLED, "cancelled; nothing was left behind")
    hashing = Job("import game.vhdx as game", FROZEN - timedelta(minutes=4), clock=lambda: frozen, started=frozen - 240)
    hashing.set_stage("checksum")
    hashing.progress(100)
    converting = Job(
        "import win12.vhdx as a new version of win11",
        FROZEN - timedelta(minutes=1),
        source_bytes=40 << 30,
        clock=lambda: frozen,
        started=frozen - 60,
    )
    converting.set_stage("converting")
    converting.progress(40)
    for job in (done, cancelled, hashing, converting):
        app.jobs.add(job)
    screen = app.screen
    count = screen.refreshes
    screen.action_refresh_now()
    await wait_for(pilot, lambda: screen.refreshes > count and screen.settled and screen.table.row_count == 4)
    for job in (hashing, converting):  # not running for real: nothing to cancel at the end
        job.state = DONE


async def _columns(pilot: Any) -> None:
    await _press(pilot, "C", ready="SelectionList")


async def _apply_form(pilot: Any) -> None:
    await _boot_history(pilot)
    await _press(pilot, "A", ready="#save")


async def _adopt_bulk(pilot: Any) -> None:
    await _discovered(pilot)  # marks the first
    await pilot.press("space")
    await _press(pilot, "a", ready="#save")


DIALOGS.update(
    {
        "columns": ("machines", _columns),
        "maintenance_apply": ("machines", _apply_form),
        "adopt_bulk": ("discovered", _adopt_bulk),
    }
)

VIEWS = {
    "details": ("machines", _boot_history),
    "discovered": ("discovered", _discovered),
    "jobs": ("jobs", _jobs),
}


@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("size", SIZES)
def test_view(snap_compare, seeded, size, view):
    mode, action = VIEWS[view]
    snap(snap_compare, seeded, size, logged_in(mode, action))


@pytest.mark.parametrize("view", list(VIEWS))
def test_linux_console_view(snap_compare, seeded, view):
    """TERM=linux: the progress bar in ASCII, the sort arrows too."""
    mode, action = VIEWS[view]
    assert snap_compare(console(seeded, "linux"), terminal_size=(80, 24), run_before=logged_in(mode, action))


@pytest.mark.parametrize("dialog", list(DIALOGS))
@pytest.mark.parametrize("size", SIZES)
def test_dialog(snap_compare, seeded, size, dialog):
    mode, action = DIALOGS[dialog]
    snap(snap_compare, seeded, size, logged_in(mode, action))


@pytest.mark.parametrize("dialog", ["session_stop_confirm", "image_import", "palette", "columns"])
def test_linux_console_dialog(snap_compare, seeded, dialog):
    """TERM=linux: a disabled button keeps its label, the type-to-confirm field is visible,
    the file tree, the palette and the column choice draw no emoji or eighth-blocks."""
    mode, action = DIALOGS[dialog]
    assert snap_compare(console(seeded, "linux"), terminal_size=(80, 24), run_before=logged_in(mode, action))
