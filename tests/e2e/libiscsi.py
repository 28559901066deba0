"""Real initiators from libiscsi-bin for tests: ``iscsi-perf`` keeps a session reading, ``iscsi-inq`` logs in once,
``iscsi-ls`` discovers.

libiscsi (1.19, lib/init.c) takes CHAP credentials from ``LIBISCSI_CHAP_USERNAME`` and
``LIBISCSI_CHAP_PASSWORD`` when the URL names none, so secrets go through the environment (readable
only by the same user), never an argv. Each reader runs in its own process group and is killed by
its PID at the end of the ``with`` block (and, like the QEMU clients, when the test process exits).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.qemu_client import _live


def unavailable() -> str | None:
    if shutil.which("iscsi-perf") is None or shutil.which("iscsi-inq") is None:
        return "iscsi-perf/iscsi-inq are not installed (Debian package: libiscsi-bin)"
    return None


def _env(username: str | None, secret: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBISCSI_")}
    if username is not None and secret is not None:
        env |= {"LIBISCSI_CHAP_USERNAME": username, "LIBISCSI_CHAP_PASSWORD": secret}
    return env


def url(host: str, port: int, target_iqn: str, lun: int) -> str:
    return f"iscsi://{host}:{port}/{target_iqn}/{lun}"


def inquiry(host: str, port: int, target_iqn: str, lun: int, initiator: str, username: str | None,
            secret: str | None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Log in, send a SCSI INQUIRY, log out: returncode 0 when the target let this initiator in."""
    return subprocess.run(["iscsi-inq", "-i", initiator, url(host, port, target_iqn, lun)], env=_env(username, secret),
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip


async def login(host: str, port: int, target_iqn: str, lun: int, initiator: str, username: str | None,
                secret: str | None) -> tuple[int, str]:  # fmt: skip
    """``inquiry`` from inside an event loop: (returncode, what iscsi-inq printed)."""
    proc = await asyncio.create_subprocess_exec(
        "iscsi-inq", "-i", initiator, url(host, port, target_iqn, lun), env=_env(username, secret),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(errors="replace")


async def discover(host: str, port: int, initiator: str, username: str | None, secret: str | None) -> list[str]:
    """The targets a SendTargets discovery shows this initiator (``iscsi-ls``); [] when it shows none
    or the discovery session is refused."""
    proc = await asyncio.create_subprocess_exec(
        "iscsi-ls", "-i", initiator, f"iscsi://{host}:{port}", env=_env(username, secret),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return re.findall(r"Target:(\S+)", out.decode(errors="replace"))


class Reader:
    """``iscsi-perf`` reading a LUN without pause (``in_flight`` commands at once) until stopped."""

    def __init__(self, log: Path, host: str, port: int, target_iqn: str, lun: int, initiator: str, username: str,
                 secret: str, in_flight: int = 8) -> None:  # fmt: skip
        self.log = log
        self.argv = ["iscsi-perf", "-i", initiator, "-m", str(in_flight), "-b", "64", url(host, port, target_iqn, lun)]
        self.env = _env(username, secret)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Reader:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        _live.add(self.proc.pid)
        return self

    def wait_reading(self, timeout: float = 20) -> None:
        """Until iscsi-perf reports its first second of reads."""
        deadline = time.monotonic() + timeout
        while "iops" not in self.output():
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"iscsi-perf is not reading: {self.output()[-500:]}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log.read_bytes().decode(errors="replace").replace("\r", "\n")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)  # by PID: only the reader this helper started
            self.proc.wait(5)
            _live.discard(self.proc.pid)
