"""iPXE boot scripts: rendering (pure), and ``boot.ipxe`` in the TFTP root (written atomically).

``boot.ipxe`` is what iPXE loads first over TFTP; it chains
``http://<boot address>:<port>/boot/${mac:hexhyp}`` — the engine of ``ggnet serve`` answers that
request with the machine's script, prepared for this boot. A machine's script either sanboots its
own iSCSI disk or says why it does not and exits, so the firmware falls back to its next boot
device. No script ever drops to the iPXE shell: from there anyone at the keyboard could type a
sanboot of their own.

Injection: iPXE splits a script line on whitespace, treats a token starting with ``#`` as a
comment, ``||``/``&&``/``;`` tokens as command separators and expands ``${...}``. Every value
written into a script is therefore checked against a small set of characters that can do none
of that (letters, digits, ``.``, ``-``, ``_``, ``:``); anything else is refused with Invalid,
whoever the caller is. Sentences from the engine (a failure's reason) are reduced to characters
iPXE prints as they are.

Secrets: a machine's script carries this boot's CHAP secret and travels over plain HTTP, as
TFTP did before: anyone on the boot LAN can watch it. The secret is new at every boot, so one
sniffed from a boot is worthless at the next; keep the boot LAN apart from untrusted networks.
The TFTP root holds no secret (only ``boot.ipxe`` and the iPXE binaries) and stays world-readable,
which dnsmasq's TFTP server requires.
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
MARKER = "# ggnet: generated boot script; do not edit"
SCRIPT_MODE = 0o644
# markers the e2e harness (and an operator reading the screen) can match on
CHAIN_FAILED = "GGNET-CHAIN-FAILED"
SANBOOT_FAILED = "GGNET-SANBOOT-FAILED"
NOT_BOOTING = "GGNET-NOT-BOOTING"
# seconds a failure message stays on screen before the firmware tries its next boot device
PAUSE_SECONDS = 10
CHAIN_TRIES = 3  # boot.ipxe asks the boot server this often before giving up (a restart of ggnet serve)

_MAC_SCRIPT = re.compile(r"^[0-9a-f]{2}(-[0-9a-f]{2}){5}\.ipxe\Z")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*\Z")
_SECRET = re.compile(r"^[A-Za-z0-9]{1,64}\Z")
_EFI_PATH = re.compile(r"^[A-Za-z0-9\\/][A-Za-z0-9._\\/-]{0,254}\Z")
EFI_LOADER_RULE = (
    "must be a path on the disk such as \\EFI\\BOOT\\shimx64.efi: letters, digits, '.', '_', '-', '\\' "
    "and '/', at most 255 characters"
)
_HOSTNAME = re.compile(r"^(?=.{1,253}\Z)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\Z")
_SAY = re.compile(r"[^A-Za-z0-9 .,:;()'/_=+@-]")  # what a sentence may keep when echoed by iPXE
_TMP_PREFIX = ".ggnet-"
_LOCK_NAME = ".ggnet.lock"


class Why(str, enum.Enum):
    """Why a machine's script does not boot its disk."""

    UNREGISTERED = "unregistered"
    DISABLED = "disabled"
    NO_IMAGE = "no-image"
    NO_VERSION = "no-version"
    NO_SPACE = "no-space"
    FAILED = "failed"


_WHY_TEXT = {
    Why.UNREGISTERED: (
        "the PC with MAC {mac} is not registered on the boot server",
        "register it with ggnet machine add NAME --mac {mac}, or adopt it from the discovered PCs",
    ),
    Why.DISABLED: ("{name} may not boot: it is disabled on the boot server (ggnet machine set {name} --enable)",),
    Why.NO_IMAGE: ("no image is assigned to {name}: assign one with ggnet machine set {name} --image IMAGE",),
    Why.NO_VERSION: ("{name} cannot boot: {detail}",),
    Why.NO_SPACE: (
        "the boot server is low on disk space, so new boots are refused: {detail}",
        "free space on the boot server, or lower GGNET_RESERVED_SPACE",
    ),
    Why.FAILED: ("the boot server could not prepare the disk of {name}: {detail}",),
}


def sentence(text: str, limit: int = 300) -> str:
    """A sentence iPXE echoes as written: no ${...} expansion, no comment, no line break."""
    flat = " ".join(str(text).split())
    return _SAY.sub("?", flat)[:limit]


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
    efi_loader: str | None = None  # Secure Boot: the signed loader on the disk (sanboot --filename)


@dataclass(frozen=True)
class MachineScript:
    name: str
    mac: str
    boot: SanBoot | None = None
    why: Why = Why.FAILED  # used when boot is None
    detail: str = ""  # the engine's sentence for why (a failure's reason)

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


def check_efi_loader(value: str, field_name: str = "efi_loader") -> str:
    """The EFI file ``sanboot --filename`` starts: a path on the machine's disk, nothing iPXE would
    read as a separator, comment or expansion. The one rule for an image's loader and a script."""
    if not isinstance(value, str) or not _EFI_PATH.match(value):
        raise _refuse(field_name, EFI_LOADER_RULE)
    return value


def _check(script: MachineScript) -> None:
    name = _name(script.name)
    _mac(script.mac, name)
    boot = script.boot
    if boot is None:
        if not isinstance(script.why, Why):
            raise _refuse(f"{name}.why", "must be one of the known reasons")
        return
    if boot.efi_loader is not None:
        check_efi_loader(boot.efi_loader, f"{name}.efi_loader")
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


def boot_url(address: str, port: int) -> str:
    """Where iPXE asks for a machine's script (``${mac:hexhyp}`` is filled in by iPXE)."""
    host = check_address(address)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise _refuse("http_port", "must be a TCP port between 1 and 65535")
    return f"http://{host}:{port}/boot/${{mac:hexhyp}}"


def render_boot_script(url: str) -> str:
    """``boot.ipxe``: ask the boot server for this machine's script; say so plainly when it does not answer."""
    return "\n".join(
        [
            "#!ipxe",
            MARKER,
            "# Asks ggnet serve for this machine's script (prepared for this boot), a few times.",
            "set ggnet-tries 0",
            ":ask",
            f"chain --replace --autofree {url} || goto retry",
            ":retry",
            "inc ggnet-tries",
            f"iseq ${{ggnet-tries}} {CHAIN_TRIES} && goto unanswered ||",
            "sleep 2",
            "goto ask",
            ":unanswered",
            (
                f"echo {CHAIN_FAILED}: the boot server did not answer at {url} "
                "(is ggnet serve running, and GGNET_BOOT_ADDRESS right?)"
            ),
            f"sleep {PAUSE_SECONDS}",
            "exit 1",
            "",
        ]
    )


def render_machine_script(script: MachineScript) -> str:
    """One machine's script for this boot: sanboot its disk, or print why not and exit."""
    _check(script)
    name, mac = script.name, normalize_mac(script.mac)
    lines = ["#!ipxe", MARKER]
    boot = script.boot
    if boot is not None:
        where = f"{boot.address}:{boot.port}"
        # iscsi:<server>:<protocol>:<port>:<LUN>:<target>; protocol empty, LUN in hex.
        # No --no-describe: the OS finds its disk through the iBFT that sanboot publishes.
        uri = f"iscsi:{boot.address}::{boot.port}:{boot.lun:x}:{boot.target_iqn}"
        sanboot = f"sanboot --filename {boot.efi_loader} {uri}" if boot.efi_loader else f"sanboot {uri}"
        lines += [
            f"# machine {name} ({mac}): boots its own disk over iSCSI",
            f"echo ggnet: {name} boots {boot.target_iqn} from {where}",
            f"set initiator-iqn {boot.initiator_iqn}",
            f"set username {boot.chap_username}",
            f"set password {boot.chap_secret}",
            f"{sanboot} || goto failed",
            "exit 0",
            ":failed",
            f"echo {SANBOOT_FAILED}: {name} could not boot {boot.target_iqn} from {where} (iPXE's reason is above)",
            "echo See this machine's boot history on the boot server: ggnet machine show " + name,
        ]
    else:
        detail = sentence(script.detail)
        text = _WHY_TEXT[script.why]
        lines += [f"# machine {name} ({mac}): does not boot now ({script.why.value})"]
        lines += [f"echo {NOT_BOOTING}: {sentence(text[0].format(name=name, mac=mac, detail=detail))}"]
        lines += [f"echo {sentence(more.format(name=name, mac=mac, detail=detail))}" for more in text[1:]]
    lines += [f"sleep {PAUSE_SECONDS}", "exit 1", ""]
    return "\n".join(lines)


def render_unregistered(mac: str) -> str:
    """The answer to a MAC no machine has."""
    return render_machine_script(MachineScript("unregistered", mac, why=Why.UNREGISTERED))


def tftp_files(url: str) -> dict[str, str]:
    """Every ggnet file the TFTP root should hold, by file name (per-machine scripts come over HTTP)."""
    return {BOOT_SCRIPT: render_boot_script(url)}


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
    return head.startswith(f"#!ipxe\n{MARKER}".encode())  # also older scripts, whose marker said more


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
