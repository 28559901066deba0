"""The real `ggnet` process in a real terminal (tmux): log in, add a machine, see it, quit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from core.models import Role
from core.services import machines
from tests.conftest import make_user
from tests.tui.helpers import PASSWORD

pytestmark = [
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (scripts/test.sh installs it)"),
    pytest.mark.slow,  # a real terminal, a real console
]


class Tmux:
    def __init__(self, tmp_path: Path) -> None:
        self.socket = f"ggnet-test-{uuid.uuid4().hex[:8]}"
        self.session = "console"
        self.tmp_path = tmp_path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.session, *keys)
        time.sleep(0.3)  # let the console move focus before the next keys (a person types slower)

    def text(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.session, "-l", *keys)
        time.sleep(0.3)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.session).stdout

    def alive(self) -> bool:
        dead = self.run("display-message", "-p", "-t", self.session, "#{pane_dead}")
        return dead.returncode == 0 and dead.stdout.strip() == "0"

    def wait_for(self, needle: str, tries: int = 100) -> str:
        for _ in range(tries):
            shown = self.screen()
            if needle in shown:
                return shown
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} never appeared; the terminal shows:\n{self.screen()}")

    def kill(self) -> None:
        self.run("kill-server")


def console_env(core, tmp_path: Path, term: str = "xterm-256color") -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "TERM": term,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "GGNET_DATA_DIR": str(core.settings.data_dir),
        "GGNET_DATABASE_URL": core.settings.database_url,
        "GGNET_LOG_FILE": str(tmp_path / "console.log"),
        "GGNET_REFRESH_SECONDS": "0.5",
        "PYTHONFAULTHANDLER": "1",
        "GGNET_TGT_CONTROL_PORT": "32000",  # a port no tgtd listens on: never touch a system tgtd
    }


def start_console(term: Tmux, env: dict[str, str]) -> None:
    ggnet = str(Path(sys.executable).parent / "ggnet")
    command = " ".join(f"{k}='{v}'" for k, v in env.items()) + f" {ggnet}"
    term.run("new-session", "-d", "-s", term.session, "-x", "80", "-y", "24", f"env -i {command}")


def console_pids(term: Tmux) -> set[int]:
    """The pane's process and everything below it (the shell may or may not exec ggnet)."""
    pane = int(term.run("display-message", "-p", "-t", term.session, "#{pane_pid}").stdout)
    pids, todo = set(), [pane]
    while todo:
        pid = todo.pop()
        pids.add(pid)
        children = Path(f"/proc/{pid}/task/{pid}/children")
        if children.exists():
            todo += [int(p) for p in children.read_text().split()]
    return pids


def running(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if state != "Z":  # a zombie has exited; only its parent has not collected it yet
            alive.add(pid)
    return alive


def log_in_at_once(term: Tmux, username: str) -> None:
    """User name, Tab, password, Enter in one burst, as a password manager or a paste types them."""
    term.run("send-keys", "-t", term.session, username, "Tab", PASSWORD, "Enter")


async def test_log_in_add_machine_quit(sqlite_core, tmp_path: Path):
    core = sqlite_core
    admin = await make_user(core, "root-admin", Role.ADMIN)
    term = Tmux(tmp_path)
    try:
        start_console(term, console_env(core, tmp_path))
        term.run("set-option", "-t", term.session, "remain-on-exit", "on")  # keep a crash on screen
        term.wait_for("Log in to ggnet")
        term.wait_for("SQLite")  # the header names the database once it is open
        log_in_at_once(term, "root-admin")
        shown = term.wait_for("Dashboard")
        assert "root-admin (admin)" in shown and "SQLite" in shown
        term.keys("2")
        term.wait_for("Name")
        term.keys("a")
        term.wait_for("Add a machine")
        term.text("pc01")
        term.keys("Tab")
        term.text("5254.00aa.0001")
        term.keys("Enter")
        shown = term.wait_for("Machine pc01 added")
        row = next(line for line in shown.splitlines() if line.strip().startswith("pc01"))
        assert "offline" in row
        term.keys("q")
        for _ in range(300):
            if not term.alive():
                break
            time.sleep(0.1)
        if term.alive():  # still running: make Python print where it is stuck (PYTHONFAULTHANDLER)
            pid = int(term.run("display-message", "-p", "-t", term.session, "#{pane_pid}").stdout or 0)
            if pid:
                os.kill(pid, signal.SIGABRT)
                time.sleep(1)
        assert not term.alive(), f"ggnet did not exit after q; screen:\n{term.screen()}"
    finally:
        term.kill()
    assert [m.name for m in await machines.list_machines(core, admin)] == ["pc01"]


async def test_console_exits_when_the_terminal_goes_away(sqlite_core, tmp_path: Path):
    """tmux kill-server: the logged-in console (refreshing its Machines screen) is gone within
    5 s, from its SIGHUP or, should the exit stall, from its watchdog."""
    core = sqlite_core
    await make_user(core, "root-admin", Role.ADMIN)
    term = Tmux(tmp_path)
    try:
        start_console(term, console_env(core, tmp_path, term="linux"))
        term.wait_for("Log in to ggnet")
        term.wait_for("SQLite")
        log_in_at_once(term, "root-admin")
        term.wait_for("Dashboard")
        term.keys("2")
        term.wait_for("Machines")
        pids = console_pids(term)
        term.kill()  # the terminal disappears: the console gets SIGHUP and its tty is gone
        for _ in range(50):  # a bound, not a timing assertion: 5 s is what "gone" means here
            if not running(pids):
                break
            time.sleep(0.1)
        left = running(pids)
        for pid in left:  # never leave a console behind, even when this test fails
            os.kill(pid, signal.SIGKILL)
        assert not left, "ggnet kept running after its terminal went away"
    finally:
        term.kill()
    log = (tmp_path / "console.log").read_text()
    assert "Traceback" not in log and "unexpected error" not in log


def test_details_show_a_real_clients_boot_and_the_console_goes_with_its_terminal(tmp_path: Path):
    """A real `ggnet serve` on a private tgtd, the console in tmux: log in, open pc01's details,
    boot a real QEMU client (stock iPXE, sanboot over iSCSI) and see its boot appear in the
    history; then kill the tmux server: the console is gone within 5 s."""
    import asyncio

    from tests.cli import ggnet_executable
    from tests.e2e import qemu_client
    from tests.e2e.bootdisk import make_prev_disk
    from tests.e2e.serve import GgnetServe
    from tests.e2e.tgtd import free_tcp_port, start_private_tgtd
    from tests.e2e.tgtd import unavailable as tgtd_unavailable

    why = qemu_client.available() or tgtd_unavailable()
    if why:
        pytest.skip(why)
    daemon = start_private_tgtd(tmp_path)
    site = {
        "GGNET_DATA_DIR": str(tmp_path / "data"),
        "GGNET_TFTP_ROOT": str(tmp_path / "tftp"),
        "GGNET_TARGET_BACKEND": "tgt",
        "GGNET_TGT_CONTROL_PORT": str(daemon.control_port),
        "GGNET_PORTAL": f"127.0.0.1:{daemon.portal_port}",
        "GGNET_HTTP_ADDRESS": f"127.0.0.1:{free_tcp_port()}",
        "GGNET_BOOT_ADDRESS": "10.0.2.2",  # the host as QEMU's user network shows it to the client
        "GGNET_RESERVED_SPACE": "1M",
        "GGNET_WOL_ADDRESS": "127.0.0.1:9",
        "GGNET_LOG_FILE": str(tmp_path / "console.log"),
    }
    cli_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GGNET_")},
        **site,
        "GGNET_USER": "root-admin",
        "GGNET_PASSWORD": PASSWORD,
        "GGNET_NEW_PASSWORD": PASSWORD,
    }

    def ggnet(*args: str) -> None:
        result = subprocess.run([ggnet_executable(), *args], env=cli_env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"ggnet {' '.join(args)}: {result.stderr}"

    serve = GgnetServe(cli_env, tmp_path / "serve.log")
    term = Tmux(tmp_path)
    try:
        ggnet("init", "--admin", "root-admin")
        ggnet("machine", "add", "pc01", "--mac", "52:54:00:e8:00:01")
        ggnet("image", "import", str(make_prev_disk(tmp_path / "v1.raw", token="v1")), "--name", "desk")
        ggnet("machine", "set", "pc01", "--image", "desk")
        serve.start()
        console = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "TERM": "xterm-256color",
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "GGNET_REFRESH_SECONDS": "0.5",
            "PYTHONFAULTHANDLER": "1",
            **site,
        }
        start_console(term, console)
        term.wait_for("Log in to ggnet")
        term.wait_for("SQLite")
        log_in_at_once(term, "root-admin")
        term.wait_for("Dashboard")
        term.keys("2")
        term.wait_for("pc01")
        term.keys("Enter")
        term.wait_for("Machine pc01")
        shown = term.wait_for("Requested")
        assert "ready" not in shown  # no boot yet

        def booted_row() -> str | None:
            return next((line for line in term.screen().splitlines() if "ready" in line and " s " in line), None)

        async def while_logged_in() -> str | None:
            """While the client still runs on its disk: its boot shows, with how long it took to log in."""
            for _ in range(300):
                row = await asyncio.to_thread(booted_row)
                if row:
                    return row
                await asyncio.sleep(0.1)
            return None

        spec = qemu_client.ClientSpec(
            tmp_path / "client", "52:54:00:e8:00:01", tmp_path / "tftp", while_booted=while_logged_in
        )
        result = asyncio.run(qemu_client.run_client(spec))
        assert result.ok, f"{result.reason}\n{result.com2_text[-2000:]}"
        row = result.while_booted_result
        assert row, f"the boot never showed in pc01's details; the terminal shows:\n{term.screen()}"
        assert "desk v1" in row and "127.0.0.1" in row  # its version, and where it logged in from

        pids = console_pids(term)
        term.kill()  # the terminal disappears
        for _ in range(50):  # a bound, not a timing assertion: 5 s is what "gone" means here
            if not running(pids):
                break
            time.sleep(0.1)
        left = running(pids)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, "ggnet kept running after its terminal went away"
    finally:
        term.kill()
        serve.stop()
        daemon.stop()
    log = (tmp_path / "console.log").read_text()
    assert "Traceback" not in log and "unexpected error" not in log
