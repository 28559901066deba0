"""A private tgtd for tests: its own control port and an iSCSI portal on a free loopback port.

``tgtd -f -C <control port> --iscsi portal=127.0.0.1:<port>`` runs in the foreground in its own
process group. Stopping it takes care: tgtd ignores SIGTERM while it holds targets, so we delete
every target (``--force``), then ask the daemon to exit (``--op delete --mode system``), and only
if it is still alive kill it by its PID.

``tgtd_daemon`` is a pytest fixture (imported by ``tests/e2e/conftest.py`` and ``tests/test_tgt.py``).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SOCKET_DIR = Path("/var/run/tgtd")


def unavailable() -> str | None:
    """None when a private tgtd can run here, else why not (for pytest.skip)."""
    if shutil.which("tgtd") is None or shutil.which("tgtadm") is None:
        return "tgtd/tgtadm are not installed (Debian package: tgt)"
    if os.geteuid() != 0:
        return "tgtd needs root"
    return None


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_control_port() -> int:
    """A control port whose socket no tgtd uses (tgtd's socket is /var/run/tgtd/socket.<port>)."""
    for _ in range(1000):
        port = random.randint(1000, 30000)  # tgtd refuses -C values above 32767
        if not (SOCKET_DIR / f"socket.{port}").exists() and not (SOCKET_DIR / f"socket.{port}.lock").exists():
            return port
    raise RuntimeError("no free tgtd control port")


@dataclass
class TgtDaemon:
    control_port: int
    portal_host: str
    portal_port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def tgtadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tgtadm", "-C", str(self.control_port), *args],
                              capture_output=True, text=True, timeout=10, check=check)  # fmt: skip

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["tgtd", "-f", "-C", str(self.control_port), "--iscsi", f"portal={self.portal_host}:{self.portal_port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tgtd exited with {self.process.returncode}: {self.log_path.read_text()}")
            if self.tgtadm("--op", "show", "--mode", "sys", check=False).returncode == 0:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("tgtd did not answer on its control port within 10 s")

    def delete_all_targets(self) -> None:
        shown = self.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "target", check=False).stdout
        for line in shown.splitlines():
            if line.startswith("Target ") and ":" in line:
                tid = line.split()[1].rstrip(":")
                self.tgtadm(
                    "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", tid, "--force", check=False
                )

    def stop(self) -> None:
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            try:
                self.delete_all_targets()
                self.tgtadm("--op", "delete", "--mode", "system", check=False)
            except subprocess.TimeoutExpired:
                pass
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)  # by PID: only the daemon this helper started
                proc.wait(5)
        for leftover in (f"socket.{self.control_port}", f"socket.{self.control_port}.lock"):
            (SOCKET_DIR / leftover).unlink(missing_ok=True)
        self.process = None

    def restart_empty(self) -> None:
        """Stop and start again with nothing configured (what a tgt service restart looks like)."""
        self.stop()
        self.start()


def start_private_tgtd(log_dir: Path) -> TgtDaemon:
    daemon = TgtDaemon(free_control_port(), "127.0.0.1", free_tcp_port(), log_dir / "tgtd.log")
    daemon.start()
    return daemon


@pytest.fixture
def tgtd_daemon(tmp_path: Path) -> Iterator[TgtDaemon]:
    """A private, empty tgtd for one test; stopped (with everything in it) afterwards."""
    why = unavailable()
    if why:
        pytest.skip(why)
    daemon = start_private_tgtd(tmp_path)
    try:
        yield daemon
    finally:
        daemon.stop()
