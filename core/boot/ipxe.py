"""iPXE boot scripts: rendering (pure) and writing them into the TFTP root (atomic).

``boot.ipxe`` is what iPXE loads first; it chains ``${mac:hexhyp}.ipxe``, the script of the
machine with that MAC. A machine's script either sanboots its own iSCSI disk (while it has a
boot session) or says why it does not and exits, so the firmware falls back to its next boot
device. No script ever drops to the iPXE shell: from there anyone at the keyboard could type
a sanboot of their own.

Injection: iPXE splits a script line on whitespace, treats a token starting with ``#`` as a
comment, ``||``/``&&``/``;`` tokens as command separators and expands ``${...}``. Every value
written into a script is therefore checked against a small set of characters that can do none
of that (letters, digits, ``.``, ``-``, ``_``, ``:``); anything else is refused with Invalid,
whoever the caller is. The messages around the values are fixed text.

File modes: scripts are written 0644. A machine's script holds its CHAP secret, but TFTP has
no authentication: anyone on the boot LAN can fetch any script by MAC, so a stricter mode would
protect nothing from the network, and dnsmasq's TFTP serves only world-readable files when it
runs as root (and only files it can read as its own user otherwise). The secret's job is to keep
one machine off another machine's disk by accident or by a casual attempt, not to stand up to
someone sniffing the boot LAN; keep the boot LAN separate from untrusted networks.
"""

from __future__ import annotations

import enum
import fcntl
import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Invalid
from ..files import fsync_dir, open_private, public_dir
from ..validation import (
    mac_hyphens,
    normalize_iqn,
    normalize_mac,
    normalize_machine_name,
)

BOOT_SCRIPT = "boot.ipxe"
# second line of every script ggnet writes: how stale scripts are recognised (and only those removed)
MARKER = "# ggnet: generated boot script; do not edit (rewritten on every session start and stop)"
SCRIPT_MODE = 0o644
# markers the e2e harness (and an operator reading the screen) can match on
CHAIN_FAILED = "GGNET-CHAIN-FAILED"
SANBOOT_FAILED = "GGNET-SANBOOT-FAILED"
NOT_BOOTING = "GGNET-NO-SESSION"
# seconds a failure message stays on screen before the firmware tries its next boot device
PAUSE_SECONDS = 10

_MAC_SCRIPT = re.compile(r"^[0-9a-f]{2}(-[0-9a-f]{2}){5}\.ipxe\Z")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*\Z")
_SECRET = re.compile(r"^[A-Za-z0-9]{1,64}\Z")
_HOSTNAME = re.compile(r"^(?=.{1,253}\Z)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\Z")
_TMP_PREFIX = ".ggnet-"
_LOCK_NAME = ".ggnet.lock"


class Why(str, enum.Enum):
    """Why a machine's script does not boot its disk."""

    NO_IMAGE = "no-image"
    NO_SESSION = "no-session"
    FAILED = "failed"
    STOPPING = "stopping"
    NO_TARGET = "no-target"


_WHY_TEXT = {
    Why.NO_IMAGE: (
        "no image is assigned to {name}: assign one with ggnet machine set {name} --image IMAGE",
        "then start a session with ggnet session start {name}",
    ),
    Why.NO_SESSION: ("no boot session for {name}: start one with ggnet session start {name}",),
    Why.FAILED: (
        "the last boot session of {name} failed: see ggnet session list",
        "then start a new one with ggnet session start {name}",
    ),
    Why.STOPPING: ("the boot session of {name} is being stopped: start a new one with ggnet session start {name}",),
    Why.NO_TARGET: ("the boot session of {name} has no iSCSI target: run ggnet reconcile",),
}


@dataclass(frozen=True)
class SanBoot:
    """What a machine with a live session boots."""

    address: str  # the boot server as clients reach it (GGNET_BOOT_ADDRESS or the portal host)
    port: int
    lun: int
    target_iqn: str
    initiator_iqn: str
    chap_username: str
    chap_secret: str


@dataclass(frozen=True)
class MachineScript:
    name: str
    mac: str
    boot: SanBoot | None = None
    why: Why = Why.NO_SESSION  # used when boot is None

    @property
    def file_name(self) -> str:
        return script_name(self.mac)


def script_name(mac: str) -> str:
    """The file iPXE's ``${mac:hexhyp}.ipxe`` names: 52-54-00-aa-00-01.ipxe."""
    return f"{mac_hyphens(normalize_mac(mac))}.ipxe"


# --- checks ------------------------------------------------------------------


def _refuse(field_name: str, rule: str) -> Invalid:
    return Invalid(field_name, rule)


def _name(value: str) -> str:
    try:
        checked = normalize_machine_name(value)
    except ValueError as exc:
        raise _refuse("name", str(exc)) from None
    if checked != value:
        raise _refuse("name", "must be stored in normal form (lower case, no spaces)")
    return value


def _mac(value: str, name: str) -> str:
    try:
        return normalize_mac(value)
    except ValueError as exc:
        raise _refuse(f"{name}.mac", str(exc)) from None


def _iqn(value: str, what: str) -> str:
    try:
        checked = normalize_iqn(value)
    except ValueError as exc:
        raise _refuse(what, str(exc)) from None
    if checked != value or not _SAFE.match(value):
        raise _refuse(what, "must be a lower-case IQN of letters, digits, '.', '-', ':' and '_'")
    return value


def check_address(value: str) -> str:
    """An IPv4 address or a DNS name iPXE can resolve; nothing else reaches a script."""
    text = str(value)
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        if _HOSTNAME.match(text) and not text.replace(".", "").isdigit():
            return text
        raise _refuse("boot_address", f"must be an IPv4 address or a host name, got {text!r}") from None
    if address.is_unspecified or address.is_multicast or str(address) == "255.255.255.255":
        raise _refuse("boot_address", f"must be an address clients can reach, not {address}")
    return str(address)


def _check(script: MachineScript) -> None:
    name = _name(script.name)
    _mac(script.mac, name)
    boot = script.boot
    if boot is None:
        if not isinstance(script.why, Why):
            raise _refuse(f"{name}.why", "must be one of the known reasons")
        return
    check_address(boot.address)
    if not isinstance(boot.port, int) or not 1 <= boot.port <= 65535:
        raise _refuse(f"{name}.port", "must be a TCP port between 1 and 65535")
    if not isinstance(boot.lun, int) or not 0 <= boot.lun <= 0x3FFF:
        raise _refuse(f"{name}.lun", "must be a LUN between 0 and 16383")
    _iqn(boot.target_iqn, f"{name}.target_iqn")
    _iqn(boot.initiator_iqn, f"{name}.initiator_iqn")
    if not _SAFE.match(boot.chap_username) or len(boot.chap_username) > 64:
        raise _refuse(f"{name}.chap_username", "may contain only letters, digits, '.', '-', ':' and '_' (at most 64)")
    if not _SECRET.match(boot.chap_secret):
        # never quote the secret itself
        raise _refuse(f"{name}.chap_secret", "may contain only letters and digits (1 to 64 of them)")


# --- rendering -----------------------------------------------------------------


def render_boot_script() -> str:
    """``boot.ipxe``: chain the machine's own script; say so plainly when there is none."""
    return "\n".join(
        [
            "#!ipxe",
            MARKER,
            "# Loads the script of this machine, named after its MAC address (52-54-00-aa-00-01.ipxe).",
            "chain ${mac:hexhyp}.ipxe || goto unregistered",
            "# the machine's script ran and did not boot; it has said why",
            "exit 1",
            ":unregistered",
            (
                f"echo {CHAIN_FAILED}: could not load ${{mac:hexhyp}}.ipxe: the machine with MAC ${{mac}} "
                "is not registered in ggnet (or the boot server did not answer)"
            ),
            "echo Register it on the boot server with: ggnet machine add NAME --mac ${mac}",
            f"sleep {PAUSE_SECONDS}",
            "exit 1",
            "",
        ]
    )


def render_machine_script(script: MachineScript) -> str:
    """One machine's script: sanboot its disk, or print why not and exit."""
    _check(script)
    name, mac = script.name, normalize_mac(script.mac)
    lines = ["#!ipxe", MARKER]
    boot = script.boot
    if boot is not None:
        where = f"{boot.address}:{boot.port}"
        # iscsi:<server>:<protocol>:<port>:<LUN>:<target>; protocol empty, LUN in hex.
        # No --no-describe: Windows finds its disk through the iBFT that sanboot publishes.
        uri = f"iscsi:{boot.address}::{boot.port}:{boot.lun:x}:{boot.target_iqn}"
        lines += [
            f"# machine {name} ({mac}): boots its own disk over iSCSI",
            f"echo ggnet: {name} boots {boot.target_iqn} from {where}",
            f"set initiator-iqn {boot.initiator_iqn}",
            f"set username {boot.chap_username}",
            f"set password {boot.chap_secret}",
            f"sanboot {uri} || goto failed",
            "exit 0",
            ":failed",
            f"echo {SANBOOT_FAILED}: {name} could not boot {boot.target_iqn} from {where} (iPXE's reason is above)",
            "echo Check the target on the boot server: ggnet target list, then ggnet reconcile",
        ]
    else:
        text = _WHY_TEXT[script.why]
        lines += [f"# machine {name} ({mac}): does not boot now ({script.why.value})"]
        lines += [f"echo {NOT_BOOTING}: {text[0].format(name=name)}"]
        lines += [f"echo {more.format(name=name)}" for more in text[1:]]
    # exit 0 hands control back to boot.ipxe, which exits without its "not registered" message
    lines += [f"sleep {PAUSE_SECONDS}", "exit 0", ""]
    return "\n".join(lines)


def render_all(machines: list[MachineScript]) -> dict[str, str]:
    """Every file the TFTP root should hold, by file name."""
    files = {BOOT_SCRIPT: render_boot_script()}
    for machine in machines:
        name = machine.file_name
        if name in files:
            raise Invalid("mac", f"{machine.mac} is used by more than one machine")
        files[name] = render_machine_script(machine)
    return files


# --- writing -------------------------------------------------------------------


def is_ggnet_script(path: Path) -> bool:
    """A per-MAC script ggnet wrote (recognised by its marker line), not an operator's own file."""
    if not _MAC_SCRIPT.match(path.name) or path.is_symlink() or not path.is_file():
        return False
    try:
        with path.open("rb") as handle:
            head = handle.read(len(MARKER) + 16)
    except OSError:
        return False
    return head.startswith(f"#!ipxe\n{MARKER}\n".encode())


def write_atomic(path: Path, text: str, mode: int = SCRIPT_MODE) -> None:
    """Temporary file in the same directory, fsync, rename over ``path``: readers see old or new, never half."""
    directory = path.parent
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_TMP_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@dataclass
class SyncResult:
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0

    @property
    def changed(self) -> int:
        return len(self.written) + len(self.removed)


def sync_tftp_root(root: Path, files: dict[str, str]) -> SyncResult:
    """Make ``root`` hold ``files``: write what differs, remove stale per-MAC scripts ggnet wrote.

    Serialised across processes by a lock file, so two consoles rendering at once cannot
    interleave. Files that are not ggnet's are never touched.
    """
    result = SyncResult()
    public_dir(root)
    lock_fd, _note = open_private(root / _LOCK_NAME)  # 0600: dnsmasq serves only world-readable files
    with os.fdopen(lock_fd, "r+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        # under the lock no other ggnet is writing: a temporary file now is a crashed run's leftover
        for leftover in root.glob(f"{_TMP_PREFIX}*.tmp"):
            leftover.unlink(missing_ok=True)
        for name, text in sorted(files.items()):
            path = root / name
            try:
                current = path.read_text(encoding="utf-8") if path.is_file() and not path.is_symlink() else None
            except (OSError, UnicodeDecodeError):
                current = None
            if current == text and (path.stat().st_mode & 0o777) == SCRIPT_MODE:
                result.unchanged += 1
                continue
            write_atomic(path, text)
            result.written.append(name)
        for path in sorted(root.iterdir()):
            if path.name not in files and is_ggnet_script(path):
                path.unlink()
                result.removed.append(path.name)
        if result.changed:
            fsync_dir(root)
    return result
