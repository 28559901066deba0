"""OS-phase clients: what they print, how to boot one, and what its serial console says happened.

The guest (``guest/*.sh``, on the disk from ``disk.py``) prints lines starting with ``OSPHASE-`` on
COM1, each ending with the guest's uptime (``[t=4.96]``):

    OSPHASE-INIT-START                      the initramfs runs (the kernel came from the iSCSI disk)
    OSPHASE-IBFT initiator=.. target=.. addr=host:port lun=.. chap=<user> secret_len=N secret_sha256=<16 hex> nic=.. ip=..
    OSPHASE-LOGIN-START / OSPHASE-LOGIN-OK  the OS's own iSCSI login with the iBFT's values
    OSPHASE-DISKS lun1=sda lun2=sdb         every LUN this one login sees, with its device
    OSPHASE-ROOT-MOUNTED dev=/dev/sda2 ..   the root file system is mounted from the iSCSI disk
    OSPHASE-OS-REACHED root=..              /sbin/init of that root runs
    OSPHASE-ROOT-PREV fresh | kept boots=N last=<boot id>   what earlier boots left on the system disk
    OSPHASE-ROOT-WRITE-OK boot_id=<id>      this boot's line is written (and flushed)
    OSPHASE-GAME-NONE | OSPHASE-GAME-DISK dev=.. content=GGNET-GAME-CONTENT <word>
    OSPHASE-GAME-PREV ... / OSPHASE-GAME-WRITE-OK boot_id=<id>   the same on the game disk
    OSPHASE-DONE                            flushed, root read-only; the guest powers off
    OSPHASE-FAIL-<what> ...                 a step failed (LOGIN, NO-IBFT, NO-ROOT, ...); powers off

``os_client`` makes the ``ClientSpec`` (tests/e2e/qemu_client.py) for such a client: the same TFTP
root and boot file as any client (QEMU's user network), the firmware, the failure texts, and the
milestones every report times. ``OsReport.parse`` turns the serial text into facts to assert.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.qemu_client import ClientSpec, Firmware, Hook

DONE = "OSPHASE-DONE"
FAIL = "OSPHASE-FAIL"  # every failure the guest reports starts with it
LOGIN_START = "OSPHASE-LOGIN-START"
LOGIN_FAILED = "OSPHASE-FAIL-LOGIN"
ROOT_MOUNTED = "OSPHASE-ROOT-MOUNTED"
KERNEL_START = "Linux version"
SANBOOT_FAILED = "GGNET-SANBOOT-FAILED"  # the scripts in this suite echo it when sanboot returns
CHAIN_FAILED = "GGNET-CHAIN-FAILED"
# the firmware's and the boot loaders' failures (the guest's own start with FAIL)
FIRMWARE_FAIL = (SANBOOT_FAILED, CHAIN_FAILED, "GGNET-EFI-FAIL", "Kernel panic", "grub> ", "grub rescue>",
                 "Could not find kernel", "Boot failed")  # fmt: skip
OS_FAIL = (*FIRMWARE_FAIL, FAIL)
# name: the first text that shows it (the same on BIOS and UEFI)
MILESTONES = {
    "sanboot": "Registered SAN device",  # iPXE opened the iSCSI disk (its firmware-phase login)
    "kernel": KERNEL_START,  # the boot loader started Debian's kernel
    "os login": "OSPHASE-LOGIN-OK",  # the OS logged in again from the iBFT
    "root mounted": ROOT_MOUNTED,
    "done": DONE,
}
MEMORY_MIB = 512
TIMEOUT = 300.0  # a TCG boot takes 20-35 s alone; several at once on two cores take longer


def os_client(
    workdir: Path,
    mac: str,
    tftp_root: Path,
    firmware: Firmware = "bios",
    *,
    bootfile: str = "boot.ipxe",
    expect: str = DONE,
    fail: Sequence[str] = OS_FAIL,
    hooks: Sequence[Hook] = (),
    timeout: float = TIMEOUT,
) -> ClientSpec:
    """A diskless client that runs the OS phase: it stops at ``expect`` (the guest powers off by itself
    after DONE), or at any of ``fail``. To expect a failure, pass its marker: ``expect`` wins over
    ``fail`` when both show, so ``expect=LOGIN_FAILED`` works with the default ``fail``."""
    return ClientSpec(
        Path(workdir), mac, Path(tftp_root), bootfile, expect, tuple(fail), timeout,
        firmware=firmware, memory_mib=MEMORY_MIB, milestones=MILESTONES, hooks=tuple(hooks),
    )  # fmt: skip


_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\r")
_LINE = re.compile(r"^OSPHASE-(\S+)(?: (.*?))?(?: \[t=([\d.]+)\])?$")


def clean(text: str) -> str:
    """Serial text without terminal escapes and carriage returns (OVMF's console has both)."""
    return _ESCAPES.sub("", text)


@dataclass(frozen=True)
class DiskVisit:
    """What the OS found on one of its disks and what it wrote there."""

    previous: str  # "fresh" (no earlier boot wrote here) or "kept"
    previous_boots: int
    last_boot_id: str | None  # the latest earlier boot's id, when kept
    written_boot_id: str | None  # this boot's id, once its line was written and read back


@dataclass(frozen=True)
class OsReport:
    lines: dict[str, str]  # marker (without OSPHASE-) -> the rest of its first line
    uptimes: dict[str, float]  # marker -> the guest's uptime when it printed it
    ibft: dict[str, str] = field(default_factory=dict)
    disks: dict[int, str] = field(default_factory=dict)  # LUN -> device, as the OS's login saw them
    boot_id: str | None = None
    root: DiskVisit | None = None
    game: DiskVisit | None = None
    game_content: str | None = None  # the word after GGNET-GAME-CONTENT on the game disk
    secure_boot: bool = False  # the kernel reported Secure Boot enabled (and locked itself down)

    @property
    def root_mounted(self) -> bool:
        return "ROOT-MOUNTED" in self.lines

    @property
    def done(self) -> bool:
        return "DONE" in self.lines

    @property
    def failures(self) -> list[str]:
        return [f"{k} {v}".strip() for k, v in self.lines.items() if k.startswith("FAIL")]

    @classmethod
    def parse(cls, serial_text: str) -> OsReport:
        lines: dict[str, str] = {}
        uptimes: dict[str, float] = {}
        for raw in clean(serial_text).splitlines():
            match = _LINE.match(raw.strip())
            if match and match.group(1) not in lines:
                lines[match.group(1)] = match.group(2) or ""
                if match.group(3):
                    uptimes[match.group(1)] = float(match.group(3))
        ibft = dict(re.findall(r"(\w+)=(\S*)", lines.get("IBFT", "")))
        disks = {int(lun): dev for lun, dev in re.findall(r"lun(\d+)=(\S+)", lines.get("DISKS", ""))}
        root = _visit(lines, "ROOT")
        game = _visit(lines, "GAME")
        content = re.search(r"content=GGNET-GAME-CONTENT (\S+)", lines.get("GAME-DISK", ""))
        return cls(
            lines, uptimes, ibft, disks,
            boot_id=root.written_boot_id if root else None, root=root, game=game,
            game_content=content.group(1) if content else None,
            secure_boot="Secure boot enabled" in serial_text,
        )  # fmt: skip


def _visit(lines: dict[str, str], disk: str) -> DiskVisit | None:
    previous = lines.get(f"{disk}-PREV")
    if previous is None:
        return None
    boots = re.search(r"boots=(\d+)", previous)
    last = re.search(r"last=(\S+)", previous)
    written = re.search(r"boot_id=(\S+)", lines.get(f"{disk}-WRITE-OK", ""))
    return DiskVisit(
        previous.split()[0],
        int(boots.group(1)) if boots else 0,
        last.group(1) if last else None,
        written.group(1) if written else None,
    )
