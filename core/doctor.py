"""`ggnet doctor`: is this machine ready to serve diskless boots? Each check says what is wrong and how to fix it.

The doctor needs no login: it reads no secrets and prints no database contents (only the
schema revision, and the database URL with its password hidden). It changes nothing, apart
from the two scratch files of the reflink probe, removed at once; an SQLite database that does
not exist is reported, not created.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .boot.dnsmasq import BIOS_BINARY, DEBIAN_IPXE_DIR, SIGNED_IPXE_URL, UEFI_BINARIES
from .config import Settings
from .models import BootMode
from .storage.writeback import reflink_works

if TYPE_CHECKING:
    from .db import Database

Status = Literal["ok", "warn", "fail"]
COMMAND_TIMEOUT = 10.0
DB_TIMEOUT = 10.0
GIB = 1 << 30
FREE_FAIL_BYTES = 2 * GIB
FREE_WARN_BYTES = 20 * GIB
LIO_CONFIGFS = Path("/sys/kernel/config/target")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str  # what is wrong and how to fix it (or what is right)

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def failed(checks: list[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


async def _command(*args: str) -> tuple[int, str, str] | None:
    """(exit status, stdout, stderr) of a program, or None when it is not installed."""
    program = shutil.which(args[0]) or next(
        (p for p in (f"/usr/sbin/{args[0]}", f"/sbin/{args[0]}") if os.access(p, os.X_OK)), None
    )
    if program is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            program,
            *args[1:],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return 126, "", str(exc)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, "", f"no answer within {COMMAND_TIMEOUT:.0f} s"
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


# --- programs ----------------------------------------------------------------


async def check_qemu_img() -> Check:
    result = await _command("qemu-img", "--version")
    if result is None:
        return Check(
            "qemu-img",
            "fail",
            "qemu-img is not installed: images cannot be imported; install it with apt-get install qemu-utils",
        )
    code, out, err = result
    if code != 0:
        return Check("qemu-img", "fail", f"qemu-img --version failed: {_first_line(err or out)}; reinstall qemu-utils")
    return Check("qemu-img", "ok", _first_line(out))


async def check_dnsmasq() -> Check:
    result = await _command("dnsmasq", "--version")
    if result is None:
        return Check(
            "dnsmasq",
            "warn",
            "dnsmasq is not installed: `ggnet boot dnsmasq` cannot test its "
            "configuration and this server cannot answer PXE; install it with apt-get install dnsmasq "
            "(not needed when another DHCP/TFTP server loads iPXE)",
        )
    return Check("dnsmasq", "ok", _first_line(result[1]) or "installed")


# --- target stack ----------------------------------------------------------------


def check_lio(settings: Settings) -> Check:
    severity: Status = "fail" if settings.target_backend == "lio" else "warn"
    if settings.target_backend == "tgt":
        return Check("lio", "ok", "not used (GGNET_TARGET_BACKEND=tgt)")
    if LIO_CONFIGFS.is_dir():
        return Check("lio", "ok", f"kernel LIO is available ({LIO_CONFIGFS} exists)")
    if Path("/sys/module/target_core_mod").is_dir():
        return Check(
            "lio",
            severity,
            f"target_core_mod is loaded but {LIO_CONFIGFS} is missing: mount configfs "
            "with mount -t configfs none /sys/kernel/config",
        )
    return Check(
        "lio",
        severity,
        "kernel LIO is not loaded (no target_core_mod): run modprobe target_core_mod "
        "iscsi_target_mod, or use tgtd instead (GGNET_TARGET_BACKEND=tgt)",
    )


async def check_tgtd(settings: Settings) -> Check:
    severity: Status = "fail" if settings.target_backend == "tgt" else "warn"
    port = settings.tgt_control_port
    if settings.target_backend == "lio":
        return Check("tgtd", "ok", "not used (GGNET_TARGET_BACKEND=lio)")
    result = await _command("tgtadm", "-C", str(port), "--mode", "system", "--op", "show")
    if result is None:
        return Check(
            "tgtd", severity, "tgtadm is not installed: install tgt (apt-get install tgt), or use kernel LIO instead"
        )
    code, out, err = result
    if code != 0:
        return Check(
            "tgtd",
            severity,
            f"tgtd does not answer on control port {port} ({_first_line(err or out)}): "
            "start it with systemctl start tgt, or set GGNET_TGT_CONTROL_PORT to the port it uses",
        )
    return Check("tgtd", "ok", f"tgtd answers on control port {port}")


async def check_target_stack(settings: Settings) -> Check:
    from .iscsi.select import select_backend

    backend, health = await select_backend(settings)
    if backend is None or not health.ok:
        return Check("target stack", "fail", f"sessions cannot start: {health.detail}")
    return Check(
        "target stack", "ok", f"{backend.name} (GGNET_TARGET_BACKEND={settings.target_backend}): {health.detail}"
    )


# --- data directory ------------------------------------------------------------


def filesystem_type(path: Path) -> str | None:
    """The file system type of the mount holding ``path``, from /proc/self/mountinfo."""
    try:
        target = os.path.realpath(path)
        best, kind = "", None
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            for line in handle:
                left, _, right = line.partition(" - ")
                fields = left.split()
                mount_point = fields[4].encode().decode("unicode_escape")  # \040 for spaces
                if (target == mount_point or target.startswith(mount_point.rstrip("/") + "/")) and len(
                    mount_point
                ) >= len(best):
                    best, kind = mount_point, right.split()[0]
        return kind
    except (OSError, IndexError):
        return None


async def check_data_dir(settings: Settings) -> list[Check]:
    data = Path(settings.data_dir)
    if not data.is_dir():
        return [
            Check(
                "data directory",
                "fail",
                f"{data} does not exist: run ggnet init, which creates it, "
                "or set GGNET_DATA_DIR to where images and writebacks should live",
            )
        ]
    if not os.access(data, os.W_OK | os.X_OK):
        return [
            Check(
                "data directory",
                "fail",
                f"{data} is not writable by this user: fix its owner or run ggnet as the user that owns it",
            )
        ]
    fs = filesystem_type(data) or "unknown"
    checks = [Check("data directory", "ok", f"{data} on {fs}")]
    probe_dir = data / "images" if (data / "images").is_dir() else data
    works = await asyncio.to_thread(reflink_works, probe_dir, probe_dir)
    if works:
        checks.append(Check("reflink", "ok", f"{fs} makes reflink clones: writebacks are created in constant time"))
    else:
        severity: Status = "fail" if settings.writeback_driver == "reflink" else "warn"
        checks.append(
            Check(
                "reflink",
                severity,
                f"{fs} cannot make reflink clones: every writeback is a full copy "
                "(slow, and it uses the image's size per machine); put GGNET_DATA_DIR on XFS "
                "(mkfs.xfs -m reflink=1) or btrfs",
            )
        )
    usage = shutil.disk_usage(data)
    checks.append(free_space_check(data, usage.free, usage.total))
    return checks


def free_space_check(data: Path, free_bytes: int, total_bytes: int) -> Check:
    """What "low disk" means, for ``doctor`` and the console's dashboard alike."""
    free = f"{free_bytes / GIB:.1f} GiB free of {total_bytes / GIB:.1f} GiB"
    if free_bytes < FREE_FAIL_BYTES:
        return Check(
            "free space",
            "fail",
            f"{free} under {data}: imports and writebacks will fail; "
            "free space or move GGNET_DATA_DIR to a larger file system",
        )
    if free_bytes < FREE_WARN_BYTES or free_bytes < total_bytes // 10:
        return Check(
            "free space",
            "warn",
            f"{free} under {data}: little room for images and writebacks; "
            "free space or move GGNET_DATA_DIR to a larger file system",
        )
    return Check("free space", "ok", f"{free} under {data}")


# --- boot files ------------------------------------------------------------------


def check_tftp_root(settings: Settings) -> list[Check]:
    from .boot.ipxe import BOOT_SCRIPT

    root = Path(settings.tftp_root or Path(settings.data_dir) / "tftp")
    if not root.is_dir():
        return [
            Check(
                "tftp root",
                "fail",
                f"{root} does not exist: run ggnet boot render (it creates it and writes "
                "the boot scripts), or set GGNET_TFTP_ROOT to the directory your TFTP server serves",
            )
        ]
    if not os.access(root, os.W_OK | os.X_OK):
        return [
            Check(
                "tftp root",
                "fail",
                f"{root} is not writable by this user: boot scripts cannot be updated; fix its owner or permissions",
            )
        ]
    if (root / BOOT_SCRIPT).is_file():
        return [Check("tftp root", "ok", f"{root} is writable and holds {BOOT_SCRIPT}")]
    return [Check("tftp root", "warn", f"{root} has no {BOOT_SCRIPT}: run ggnet boot render")]


def authenticode_signed(path: Path) -> bool:
    """Whether ``path`` is a PE (EFI) image carrying a signature (its certificate table is not empty)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
        (pe,) = struct.unpack_from("<I", head, 0x3C)
        if head[:2] != b"MZ" or head[pe : pe + 4] != b"PE\0\0":
            return False
        optional = pe + 24
        (magic,) = struct.unpack_from("<H", head, optional)
        count_at = {0x10B: optional + 92, 0x20B: optional + 108}[magic]  # PE32, PE32+
        (count,) = struct.unpack_from("<I", head, count_at)
        _, size = struct.unpack_from("<II", head, count_at + 4 + 4 * 8)  # data directory 4: certificates
        return bool(count > 4 and size > 0)
    except (OSError, struct.error, KeyError):
        return False


def check_boot_files(settings: Settings, modes: set[str] | None) -> list[Check]:
    """Does the TFTP root hold what the firmware of each boot mode in use loads (iPXE itself)?

    ``modes``: the boot modes of the registered machines; None when the database could not tell,
    and then every mode is checked."""
    root = Path(settings.tftp_root or Path(settings.data_dir) / "tftp")
    if not root.is_dir():
        return []  # check_tftp_root already says so
    if modes is not None and not modes:
        return [Check("boot files", "ok", "no machines are registered yet, so no iPXE binaries are needed yet")]
    unknown = " (the database could not say which boot modes are in use, so all are checked)" if modes is None else ""
    debian = f"copy it from {DEBIAN_IPXE_DIR}/ (apt-get install ipxe)"
    checks = []
    for mode in BootMode:
        if modes is not None and mode.value not in modes:
            continue
        name = f"boot files ({mode.value})"
        if mode is BootMode.BIOS:
            if (root / BIOS_BINARY).is_file():
                checks.append(Check(name, "ok", f"{BIOS_BINARY} present"))
            else:
                checks.append(
                    Check(
                        name, "fail", f"{root} lacks {BIOS_BINARY}: BIOS machines cannot load iPXE{unknown}; {debian}"
                    )
                )
        elif mode is BootMode.UEFI:
            present = [b for b in UEFI_BINARIES if (root / b).is_file()]
            if present:
                checks.append(Check(name, "ok", f"{' and '.join(present)} present"))
            else:
                either = " nor ".join(UEFI_BINARIES)
                checks.append(
                    Check(
                        name, "fail", f"{root} has neither {either}: UEFI machines cannot load iPXE{unknown}; {debian}"
                    )
                )
        else:
            checks.append(_secure_boot_files(root, name, unknown))
    return checks


def _secure_boot_files(root: Path, name: str, unknown: str) -> Check:
    """Secure Boot firmware starts only signed code: iPXE's signed shim, which starts iPXE's signed build."""
    problems = []
    for loader, shim in UEFI_BINARIES.items():
        missing = [f for f in (shim, loader) if not (root / f).is_file()]
        unsigned = [f for f in (shim, loader) if f not in missing and not authenticode_signed(root / f)]
        if not missing and not unsigned:
            return Check(name, "ok", f"{shim} and {loader} present and signed")
        problems += [f"{f} is missing" for f in missing if len(missing) < 2]
        problems += [f"{f} is not signed (Debian's build?)" for f in unsigned]
    pairs = " or ".join(f"{shim} with {loader}" for loader, shim in UEFI_BINARIES.items())
    found = f" ({'; '.join(problems)})" if problems else ""
    return Check(
        name,
        "fail",
        f"{root} lacks iPXE's signed shim and signed iPXE ({pairs}){found}: Secure Boot machines cannot load "
        f"iPXE{unknown}; download them from {SIGNED_IPXE_URL} (Debian's ipxe builds are not signed)",
    )


def check_boot_address(settings: Settings) -> Check:
    try:
        host, port = settings.portal_address
    except ValueError as exc:
        return Check("boot address", "fail", f"{exc}: fix GGNET_PORTAL")
    boot_host = settings.boot_host
    if boot_host is None:
        return Check(
            "boot address",
            "fail",
            f"GGNET_PORTAL listens on {host} and GGNET_BOOT_ADDRESS is not set: "
            "boot scripts cannot name this server; set GGNET_BOOT_ADDRESS to the address clients reach it at",
        )
    return Check("boot address", "ok", f"clients boot from iscsi:{boot_host}::{port} (targets listen on {host}:{port})")


# --- database --------------------------------------------------------------------


async def check_database(settings: Settings) -> tuple[list[Check], set[str] | None]:
    """The database's checks, and the boot modes of the registered machines (None when it cannot tell)."""
    from sqlalchemy.engine import make_url

    from .db import Database, _reason
    from .errors import GgnetError

    try:
        url = make_url(settings.database_url)
    except Exception:
        return [
            Check(
                "database",
                "fail",
                "GGNET_DATABASE_URL is not a database URL; fix it (e.g. postgresql+asyncpg://user@host/ggnet)",
            )
        ], None
    safe = url.render_as_string(hide_password=True)
    sqlite_file = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    if sqlite_file and not Path(str(url.database)).is_file():  # connecting would create an empty file
        return [Check("database", "fail", f"no database at {url.database}: run ggnet init")], None
    try:
        db = Database(settings.database_url, settings.db_busy_seconds)
    except Exception as exc:  # e.g. a driver that is not installed
        return [Check("database", "fail", f"cannot use {safe}: {_reason(exc)}; fix GGNET_DATABASE_URL")], None
    try:
        try:
            revision = await asyncio.wait_for(db.current_revision(), DB_TIMEOUT)
        except TimeoutError:
            return [
                Check(
                    "database",
                    "fail",
                    f"{safe} did not answer within {DB_TIMEOUT:.0f} s: "
                    "check that the database server runs and is reachable",
                )
            ], None
        except Exception as exc:  # any driver error is the answer here, not a crash
            return [
                Check(
                    "database",
                    "fail",
                    f"cannot open {safe}: {_reason(exc)}; check GGNET_DATABASE_URL and that the database server runs",
                )
            ], None
        if sqlite_file:
            database_file = Path(str(url.database))
            try:
                lock = await asyncio.to_thread(sqlite_write_lock, database_file)
            except Exception as exc:  # any driver error is the answer here, not a crash
                return [Check("database", "fail", f"cannot open {safe}: {_reason(exc)}")], None
            if lock == "busy":
                return [
                    Check(
                        "database",
                        "fail",
                        f"SQLite at {safe} is busy: another process holds its write lock, so changes wait "
                        f"up to {settings.db_busy_seconds:g} s and then fail; fuser {database_file} names "
                        "the processes that have it open",
                    )
                ], None
            if lock == "read-only":
                checks = [Check("database", "warn", f"SQLite at {safe} is read-only: ggnet can show, not change")]
            else:
                checks = [Check("database", "ok", f"{db.kind} at {safe} answers and can be written")]
        else:
            checks = [Check("database", "ok", f"{db.kind} at {safe} answers")]
        if revision is None:
            checks.append(Check("schema", "fail", "the database is empty: run ggnet init"))
            return checks, None
        try:
            await asyncio.wait_for(db.ensure_current(), DB_TIMEOUT)
        except GgnetError as exc:
            checks.append(Check("schema", "fail", exc.message))
        except Exception as exc:
            checks.append(Check("schema", "fail", f"cannot read the schema revision: {_reason(exc)}"))
        else:
            checks.append(Check("schema", "ok", f"migration {revision} is the head"))
            try:
                return checks, await asyncio.wait_for(_boot_modes_in_use(db), DB_TIMEOUT)
            except Exception:  # the boot-file check then covers every mode
                return checks, None
        return checks, None
    finally:
        await db.dispose()


async def _boot_modes_in_use(db: Database) -> set[str]:
    from sqlalchemy import select

    from .models import Machine

    async with db.session() as session:
        return set((await session.scalars(select(Machine.boot_mode).distinct())).all())


def sqlite_write_lock(path: Path, wait: float = 1.0) -> str:
    """Whether a change could start now: "free", "busy" (another process holds the write lock for
    longer than ``wait`` seconds) or "read-only". Takes the write lock and gives it back; writes nothing."""
    import sqlite3
    import urllib.parse

    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        return "read-only"
    uri = f"file:{urllib.parse.quote(str(path))}?mode=rw"
    connection = sqlite3.connect(uri, uri=True, timeout=wait, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
        return "free"
    except sqlite3.OperationalError as exc:
        name = str(getattr(exc, "sqlite_errorname", ""))
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return "busy"
        if name.startswith("SQLITE_READONLY"):
            return "read-only"
        raise
    finally:
        connection.close()


# --- the engine ----------------------------------------------------------------------


def engine_check(running: bool) -> Check:
    """Whether an engine serves this boot server: without one, no PC boots."""
    if running:
        return Check("engine", "ok", "the boot engine runs for this server (ggnet serve, or a console's own)")
    return Check(  # a warning: the doctor is run while setting up, before the service is started
        "engine",
        "warn",
        "no boot engine runs for this server, so PCs cannot boot: start it with systemctl start ggnet "
        "(or run ggnet serve); a console run as root runs one itself while none does",
    )


def engine_target_check(backend: str | None, detail: str | None) -> Check:
    """The target stack as the running engine last found it (the console reads this, never the stack)."""
    if backend:
        return Check("target stack", "ok", f"{backend}: {detail or 'answers'}")
    return Check("target stack", "fail", f"sessions cannot start: {detail or 'no iSCSI target stack'}")


def check_engine(settings: Settings) -> Check:
    from .engine.lock import is_held

    return engine_check(is_held(settings))


async def console_checks(
    settings: Settings, boot_modes: set[str] | None, engine_running: bool, backend: str | None, detail: str | None
) -> list[Check]:
    """The doctor's checks that the console shows on its dashboard: the target stack as the engine
    last saw it (the console does not probe it), everything else as ``doctor`` finds it, except
    free space, which the dashboard checks at every refresh with ``free_space_check``."""
    checks = [await check_qemu_img(), engine_check(engine_running)]
    if engine_running:
        checks.append(engine_target_check(backend, detail))
    checks += [c for c in await check_data_dir(settings) if c.name != "free space"]
    checks += check_tftp_root(settings)
    checks += check_boot_files(settings, boot_modes)
    checks.append(check_boot_address(settings))
    return checks


async def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order an operator would fix things."""
    checks = [
        await check_qemu_img(),
        check_lio(settings),
        await check_tgtd(settings),
        await check_target_stack(settings),
        check_engine(settings),
    ]
    checks += await check_data_dir(settings)
    database, boot_modes = await check_database(settings)  # which boot modes are in use, for the boot files
    checks += check_tftp_root(settings)
    checks += check_boot_files(settings, boot_modes)
    checks.append(check_boot_address(settings))
    checks.append(await check_dnsmasq())
    checks += database
    return checks
