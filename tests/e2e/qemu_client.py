"""Boot diskless QEMU clients (stock iPXE ROM) and watch their serial ports.

A client is ``qemu-system-x86_64`` under TCG with no disk, booting from the network
(``-boot n``) with QEMU's user-mode network: its built-in DHCP hands out 10.0.2.15, its TFTP
server serves ``tftp_root`` and names ``bootfile`` (iPXE fetches and runs it), and the host is
reachable from the guest as 10.0.2.2 — so an iSCSI portal on the host's 127.0.0.1:<port> is
``iscsi:10.0.2.2::<port>:<lun>:<iqn>`` for the client.

Serial ports: COM1 (``com1.log``) gets what the boot sector of ``bootdisk.py`` writes straight to
the UART; SeaBIOS's screen copy ("sercon") — which carries iPXE's messages such as
``Could not open SAN device`` — is moved to COM2 (``com2.log``) by the fw_cfg file
``etc/sercon-port`` holding the port number 0x2f8, so COM1 stays clean of screen output.

Each QEMU runs in its own session/process group (no terminal signals reach it) and is stopped by
its PID — SIGTERM, then SIGKILL — when the expected text appears, a failure text appears, the
timeout passes, the caller is cancelled, or the Python process exits.

Usage::

    result = await boot_client_async(workdir, "52:54:00:00:00:01", tftp_root)
    assert result.ok, result.reason

    results = await boot_clients([ClientSpec(workdir_a, mac_a, tftp), ClientSpec(workdir_b, mac_b, tftp)])

    # look at the target while the client is still logged in (then it is stopped)
    result = await run_client(ClientSpec(workdir, mac, tftp, while_booted=backend.list_targets))
    result.while_booted_result  # -> what list_targets returned

    result = boot_client(workdir, mac, tftp_root)   # synchronous wrapper (not inside a running loop)

Boot time here: about 6 s per client (iPXE banner ~2 s, DHCP ~3 s, iSCSI ~0.1 s).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.bootdisk import INT13_ERR, WRITE_OK

QEMU = "qemu-system-x86_64"
# iPXE's own failure messages (on COM2 via sercon) and the markers our scripts echo on failure
DEFAULT_FAIL = (INT13_ERR, "GGNET-SANBOOT-FAILED", "GGNET-CHAIN-FAILED", "GGNET-NOT-BOOTING")
_POLL_S = 0.05

_live: set[int] = set()  # PIDs of running clients, killed if the test process exits early


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_live):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass(frozen=True)
class BootResult:
    ok: bool  # the expected text appeared on COM1
    reason: str  # "expect" | "fail: <text>" | "timeout" | "qemu exited rc=N"
    com1_text: str
    com2_text: str
    elapsed: float  # seconds from QEMU start to the decision
    while_booted_result: Any = None  # what ``while_booted`` returned, when it ran


@dataclass(frozen=True)
class ClientSpec:
    workdir: Path
    mac: str
    tftp_root: Path
    bootfile: str = "boot.ipxe"
    expect: str = WRITE_OK
    fail: Sequence[str] = field(default=DEFAULT_FAIL)
    timeout: float = 120.0
    # awaited once the expected text appeared, while the client is still running (and logged in)
    while_booted: Callable[[], Awaitable[Any]] | None = None


def available() -> str | None:
    """None when a client can be booted here, else why not (for pytest.skip)."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (Debian: qemu-system-x86)"
    if not Path("/usr/lib/ipxe/qemu/efi-e1000.rom").exists() and not Path("/usr/lib/ipxe/qemu/pxe-e1000.rom").exists():
        return "the iPXE ROMs are not installed (Debian: ipxe-qemu)"
    return None


def _opt(value: str | os.PathLike[str]) -> str:
    """Escape a value inside a QEMU -option a=b,c=d list (a comma is written twice)."""
    return str(value).replace(",", ",,")


def qemu_command(spec: ClientSpec, com1: Path, com2: Path, sercon: Path) -> list[str]:
    nic = f"user,model=e1000,mac={spec.mac},tftp={_opt(Path(spec.tftp_root).resolve())},bootfile={_opt(spec.bootfile)}"
    return [
        QEMU, "-accel", "tcg", "-display", "none", "-monitor", "none",
        "-m", "128", "-boot", "n", "-no-reboot",
        "-nic", nic,
        "-serial", f"file:{_opt(com1)}", "-serial", f"file:{_opt(com2)}",
        "-fw_cfg", f"name=etc/sercon-port,file={_opt(sercon)}",
    ]  # fmt: skip


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("latin1")
    except FileNotFoundError:
        return ""


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        try:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 5)
        except ProcessLookupError:
            pass
        except TimeoutError:
            proc.kill()
            await proc.wait()
    _live.discard(proc.pid)


async def _settle(log: Path, quiet: float = 0.5, limit: float = 3.0) -> None:
    """Wait until ``log`` stops growing (a failure message is printed over a few lines)."""
    start, last, size = time.monotonic(), time.monotonic(), -1
    while time.monotonic() - start < limit and time.monotonic() - last < quiet:
        now = log.stat().st_size if log.exists() else 0
        if now != size:
            size, last = now, time.monotonic()
        await asyncio.sleep(_POLL_S)


async def run_client(spec: ClientSpec) -> BootResult:
    """Boot one client and decide: expected text, failure text, QEMU exiting, or timeout."""
    workdir = Path(spec.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    com1, com2, sercon = workdir / "com1.log", workdir / "com2.log", workdir / "sercon.bin"
    for log in (com1, com2):
        log.write_bytes(b"")
    sercon.write_bytes(b"\xf8\x02")  # 0x02f8 little-endian: SeaBIOS copies the screen to COM2
    with open(workdir / "qemu.stderr", "wb") as stderr:
        start = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *qemu_command(spec, com1, com2, sercon),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    _live.add(proc.pid)
    reason = "timeout"
    try:
        while time.monotonic() - start < spec.timeout:
            text1, text2 = _read(com1), _read(com2)
            if spec.expect in text1:
                reason = "expect"
                break
            hit = next((f for f in spec.fail if f in text1 or f in text2), None)
            if hit is not None:
                reason = f"fail: {hit}"
                await _settle(com2)  # let the rest of the sentence arrive
                break
            if proc.returncode is not None:
                err = _read(workdir / "qemu.stderr").strip()
                reason = f"qemu exited rc={proc.returncode}" + (f": {err}" if err else "")
                break
            await asyncio.sleep(_POLL_S)
        elapsed = time.monotonic() - start
        extra = await spec.while_booted() if reason == "expect" and spec.while_booted is not None else None
    finally:
        await _stop(proc)
    return BootResult(reason == "expect", reason, _read(com1), _read(com2), elapsed, extra)


async def boot_client_async(
    workdir: Path,
    mac: str,
    tftp_root: Path,
    bootfile: str = "boot.ipxe",
    expect: str = WRITE_OK,
    fail: Sequence[str] = DEFAULT_FAIL,
    timeout: float = 120.0,
    while_booted: Callable[[], Awaitable[Any]] | None = None,
) -> BootResult:
    return await run_client(
        ClientSpec(Path(workdir), mac, Path(tftp_root), bootfile, expect, tuple(fail), timeout, while_booted)
    )


async def boot_clients(specs: Sequence[ClientSpec]) -> list[BootResult]:
    """Boot several clients at once (a boot storm); results in the order of ``specs``."""
    return list(await asyncio.gather(*(run_client(s) for s in specs)))


def boot_client(
    workdir: Path,
    mac: str,
    tftp_root: Path,
    bootfile: str = "boot.ipxe",
    expect: str = WRITE_OK,
    fail: Sequence[str] = DEFAULT_FAIL,
    timeout: float = 120.0,
) -> BootResult:
    """Synchronous wrapper of ``boot_client_async`` (for scripts and benchmarks, not inside a running loop)."""
    return asyncio.run(boot_client_async(workdir, mac, tftp_root, bootfile, expect, fail, timeout))
