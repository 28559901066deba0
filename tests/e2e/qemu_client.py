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
    result = await run_client(ClientSpec(workdir, mac, tftp, while_booted=backend.observe))
    result.while_booted_result  # -> what observe returned

    result = boot_client(workdir, mac, tftp_root)   # synchronous wrapper (not inside a running loop)

    # an OS-phase client (tests/e2e/osphase): UEFI firmware, timed milestones, an action at a marker
    result = await run_client(ClientSpec(workdir, mac, tftp, firmware="uefi", memory_mib=512,
                                         expect="OSPHASE-DONE", milestones={"kernel": "Linux version"},
                                         hooks=[Hook("Linux version", change_the_target)]))
    result.milestones["kernel"]          # seconds from QEMU's start to the first "Linux version"
    result.hooks["Linux version"].text   # the serial text when the action had finished
    Hook("Linux version", act, pause=True)  # the guest is stopped while ``act`` runs

Firmware: ``bios`` is SeaBIOS with the NIC's stock iPXE ROM (``-nic``); ``uefi`` is OVMF with
iPXE's EFI driver (``efi-e1000.rom``) on a q35 machine; ``uefi-secure`` is OVMF with Secure Boot
enforced and Microsoft's keys enrolled (``OVMF_CODE_4M.secboot.fd`` + ``OVMF_VARS_4M.ms.fd``, SMM,
secure pflash). QEMU loads the iPXE ROM itself and OVMF does not verify it, so under Secure Boot
iPXE runs and everything it starts is verified. Under OVMF everything (iPXE's messages too) goes
to COM1; COM2 stays empty.

Boot time here: about 6 s per client (iPXE banner ~2 s, DHCP ~3 s, iSCSI ~0.1 s).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tests.e2e.bootdisk import INT13_ERR, WRITE_OK

QEMU = "qemu-system-x86_64"
# iPXE's own failure messages (on COM2 via sercon) and the markers our scripts echo on failure
DEFAULT_FAIL = (INT13_ERR, "GGNET-SANBOOT-FAILED", "GGNET-CHAIN-FAILED", "GGNET-NOT-BOOTING")
_POLL_S = 0.05

Firmware = Literal["bios", "uefi", "uefi-secure"]
OVMF = Path("/usr/share/OVMF")
OVMF_FILES: dict[str, tuple[Path, Path]] = {  # firmware: (code, template of the variable store)
    "uefi": (OVMF / "OVMF_CODE_4M.fd", OVMF / "OVMF_VARS_4M.fd"),
    "uefi-secure": (OVMF / "OVMF_CODE_4M.secboot.fd", OVMF / "OVMF_VARS_4M.ms.fd"),
}
EFI_IPXE_ROM = Path("/usr/lib/ipxe/qemu/efi-e1000.rom")

_live: set[int] = set()  # PIDs of running clients, killed if the test process exits early


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_live):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass(frozen=True)
class Hook:
    """Run ``action`` once, the moment ``marker`` first shows on a serial port. The client keeps
    running meanwhile, unless ``pause``: then QEMU is stopped (SIGSTOP) until the action is done,
    so the guest cannot get ahead of it (say, log in before a target is changed)."""

    marker: str
    action: Callable[[], Awaitable[Any]]
    pause: bool = False


@dataclass(frozen=True)
class HookRun:
    result: Any  # what the action returned
    seen_at: float  # seconds from QEMU's start to the marker
    done_at: float  # ... to the end of the action
    text: str  # COM1 + COM2 as they were when the action had finished (what the guest had done by then)


@dataclass(frozen=True)
class BootResult:
    ok: bool  # the expected text appeared on COM1
    reason: str  # "expect" | "fail: <text>" | "timeout" | "qemu exited rc=N"
    com1_text: str
    com2_text: str
    elapsed: float  # seconds from QEMU start to the decision
    while_booted_result: Any = None  # what ``while_booted`` returned, when it ran
    milestones: dict[str, float] = field(default_factory=dict)  # name: seconds to its text's first sight
    hooks: dict[str, HookRun] = field(default_factory=dict)  # by marker, for the hooks that ran


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
    firmware: Firmware = "bios"
    memory_mib: int = 128
    milestones: Mapping[str, str] = field(default_factory=dict)  # name: text whose first sight is timed
    hooks: Sequence[Hook] = ()


def available(firmware: Firmware = "bios") -> str | None:
    """None when a client with this firmware can be booted here, else why not (for pytest.skip)."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (Debian: qemu-system-x86)"
    if not EFI_IPXE_ROM.exists() and not Path("/usr/lib/ipxe/qemu/pxe-e1000.rom").exists():
        return "the iPXE ROMs are not installed (Debian: ipxe-qemu)"
    if firmware != "bios":
        if not EFI_IPXE_ROM.exists():
            return f"{EFI_IPXE_ROM} (iPXE's EFI driver) is not installed (Debian: ipxe-qemu)"
        missing = [str(p) for p in OVMF_FILES[firmware] if not p.exists()]
        if missing:
            return f"{', '.join(missing)} not installed (Debian: ovmf)"
    return None


def _opt(value: str | os.PathLike[str]) -> str:
    """Escape a value inside a QEMU -option a=b,c=d list (a comma is written twice)."""
    return str(value).replace(",", ",,")


def qemu_command(spec: ClientSpec, com1: Path, com2: Path, sercon: Path) -> list[str]:
    user_net = f"user,tftp={_opt(Path(spec.tftp_root).resolve())},bootfile={_opt(spec.bootfile)}"
    if spec.firmware == "bios":
        return [
            QEMU, "-accel", "tcg", "-display", "none", "-monitor", "none",
            "-m", str(spec.memory_mib), "-boot", "n", "-no-reboot",
            "-nic", user_net.replace("user,", f"user,model=e1000,mac={spec.mac},", 1),
            "-serial", f"file:{_opt(com1)}", "-serial", f"file:{_opt(com2)}",
            "-fw_cfg", f"name=etc/sercon-port,file={_opt(sercon)}",
        ]  # fmt: skip
    code, _ = OVMF_FILES[spec.firmware]
    machine = ["-machine", "q35"]
    if spec.firmware == "uefi-secure":  # Secure Boot firmware keeps its variables in SMM-protected flash
        machine = ["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"]
    return [
        QEMU, "-accel", "tcg", *machine, "-display", "none", "-monitor", "none",
        "-m", str(spec.memory_mib), "-no-reboot",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_opt(code)}",
        "-drive", f"if=pflash,format=raw,unit=1,file={_opt(Path(spec.workdir) / 'ovmf-vars.fd')}",
        "-netdev", f"{user_net},id=net0",
        "-device", f"e1000,netdev=net0,mac={spec.mac},romfile={_opt(EFI_IPXE_ROM)},bootindex=1",
        "-serial", f"file:{_opt(com1)}", "-serial", f"file:{_opt(com2)}",
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
    if spec.firmware != "bios":  # each client gets a fresh copy of the firmware's variable store
        shutil.copyfile(OVMF_FILES[spec.firmware][1], workdir / "ovmf-vars.fd")
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
    milestones: dict[str, float] = {}
    hooks: dict[str, HookRun] = {}
    try:
        while time.monotonic() - start < spec.timeout:
            text1, text2 = _read(com1), _read(com2)
            now = time.monotonic() - start
            for name, text in spec.milestones.items():
                if name not in milestones and (text in text1 or text in text2):
                    milestones[name] = round(now, 2)
            for hook in spec.hooks:
                if hook.marker not in hooks and (hook.marker in text1 or hook.marker in text2):
                    if hook.pause:
                        os.kill(proc.pid, signal.SIGSTOP)
                    try:
                        result = await hook.action()
                    finally:
                        if hook.pause:
                            os.kill(proc.pid, signal.SIGCONT)
                    hooks[hook.marker] = HookRun(
                        result, round(now, 2), round(time.monotonic() - start, 2), _read(com1) + _read(com2)
                    )
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
    return BootResult(reason == "expect", reason, _read(com1), _read(com2), elapsed, extra, milestones, hooks)


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
