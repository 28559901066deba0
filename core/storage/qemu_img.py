"""qemu-img: inspect disk images and convert them to the raw files the iSCSI targets serve.

Everything runs from argument lists with timeouts; qemu-img's own message becomes the error.

The input is untrusted (an image downloaded from somewhere). A disk image can name other
files that qemu-img would then read and copy into our image: a qcow2 backing file or
external data file (``/etc/shadow``), VMDK extents anywhere on the disk, or protocol
names (``json:``, ``nbd://``, ``http://``). So: the path handed to qemu-img is always an
absolute real path (never parsed as a protocol); the format is probed once, and anything
naming another file outside the image's own directory is refused; the conversion then opens
the file with the probed format, the plain file protocol and no backing file, pinned in a
JSON pseudo-filename; and the file must be the same one (inode, size, mtime, ctime) after
the conversion as when it was checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailable, Conflict, GgnetError, Invalid
from ..files import fsync_dir, fsync_file
from ..log import get_logger

QEMU_IMG = "qemu-img"
INFO_TIMEOUT = 60.0
CHECK_TIMEOUT = 600.0
# conversion has no total limit (a 500 GiB image takes long); it fails when qemu-img stays silent this long
CONVERT_STALL_TIMEOUT = 900.0
MIN_VIRTUAL_SIZE = 1 << 20

# qemu's driver name -> the name operators know
FORMATS = {"vpc": "vhd", "vhdx": "vhdx", "vmdk": "vmdk", "qcow2": "qcow2", "vdi": "vdi", "raw": "raw"}
# formats whose consistency `qemu-img check` can verify
CHECKABLE = frozenset({"qcow2", "vdi", "vhdx", "vmdk"})

ProgressCallback = Callable[[float], Any]

_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class Cancelled(GgnetError):
    """The operator cancelled a long operation; nothing was left behind."""


# --- info ------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """What `qemu-img info --output=json` says about one image (and, optionally, its backing chain)."""

    filename: str
    format: str  # qemu's driver name, e.g. "vpc"
    virtual_size: int
    actual_size: int | None = None
    dirty: bool = False
    backing_filename: str | None = None
    data_file: str | None = None  # qcow2 external data file
    corrupt: bool = False  # qcow2's own corrupt flag
    extents: tuple[str, ...] = ()  # VMDK extent files
    chain: tuple[ImageInfo, ...] = field(default=())  # backing images, nearest first

    @property
    def kind(self) -> str:
        """The format under the name operators use (vpc -> vhd)."""
        return FORMATS.get(self.format, self.format)


def parse_info(text: str) -> ImageInfo:
    """Parse `qemu-img info --output=json` (a list with --backing-chain, else one object)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BackendUnavailable(f"qemu-img info printed something that is not JSON: {exc}") from None
    items = data if isinstance(data, list) else [data]
    if not items:
        raise BackendUnavailable("qemu-img info printed an empty list")
    infos = [_one_info(item) for item in items]
    first = infos[0]
    return ImageInfo(**{**first.__dict__, "chain": tuple(infos[1:])})


def _one_info(item: dict[str, Any]) -> ImageInfo:
    specific = (item.get("format-specific") or {}).get("data") or {}
    extents = tuple(str(e.get("filename", "")) for e in specific.get("extents") or [])
    return ImageInfo(
        filename=str(item.get("filename", "")),
        format=str(item.get("format", "")),
        virtual_size=int(item.get("virtual-size", 0)),
        actual_size=item.get("actual-size"),
        dirty=bool(item.get("dirty-flag", False)),
        backing_filename=item.get("full-backing-filename") or item.get("backing-filename"),
        data_file=specific.get("data-file"),
        corrupt=bool(specific.get("corrupt", False)),
        extents=extents,
    )


# --- running qemu-img ------------------------------------------------------


def _env() -> dict[str, str]:
    # untranslated messages, and no inherited QEMU_* variables changing behaviour
    env = {k: v for k, v in os.environ.items() if not k.startswith("QEMU")}
    env["LC_ALL"] = "C"
    return env


async def _spawn(args: list[str], **kw: Any) -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            QEMU_IMG, *args, stdin=asyncio.subprocess.DEVNULL, env=_env(), start_new_session=True, **kw
        )
    except FileNotFoundError:
        raise BackendUnavailable("qemu-img is not installed; install the qemu-utils package") from None


async def settle(awaitable: Any) -> None:
    """Wait for a clean-up step to end, even if the caller is cancelled again meanwhile
    (a second Ctrl-C, or a progress callback cancelling on every report): the clean-up must
    finish, or a partial file is left behind. Its own outcome is ignored."""
    future = asyncio.ensure_future(awaitable)
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            continue  # we were cancelled again (or the clean-up was): look again
        except BaseException:
            break
    if future.done() and not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as never retrieved


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill qemu-img (and anything it started) and reap it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    await settle(proc.wait())


async def _run(args: list[str], timeout: float) -> tuple[int, str, str]:
    proc = await _spawn(args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        await _kill(proc)
        raise BackendUnavailable(f"qemu-img {args[0]} did not finish within {timeout:.0f} s") from None
    except BaseException:
        await _kill(proc)
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def _message(stderr: str, fallback: str) -> str:
    """qemu-img's own words, without its 'qemu-img: ' prefix."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    text = " ".join(line.removeprefix("qemu-img: ") for line in lines[:3])
    return text or fallback


def _plain_path(path: str | Path) -> str:
    """An absolute real path: qemu never reads it as `json:` or `proto://`."""
    return os.path.realpath(os.fspath(path))


async def info(path: str | Path, *, fmt: str | None = None, backing_chain: bool = False) -> ImageInfo:
    """`qemu-img info`. ``backing_chain`` opens the backing files too: never use it on untrusted input."""
    args = ["info", "--output=json"]
    if backing_chain:
        args.append("--backing-chain")
    if fmt:
        args += ["-f", fmt]
    code, out, err = await _run([*args, _plain_path(path)], INFO_TIMEOUT)
    if code != 0:
        raise Invalid("file", _message(err, f"qemu-img info failed (exit status {code})"))
    return parse_info(out)


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    supported: bool
    corruptions: int
    leaks: int
    message: str


async def check(path: str | Path, fmt: str) -> CheckResult:
    """`qemu-img check`. Leaked clusters only waste space and are not an error; corruptions are."""
    code, out, err = await _run(["check", "--output=json", "-f", fmt, _plain_path(path)], CHECK_TIMEOUT)
    if code == 63:  # the format has no consistency checks
        return CheckResult(True, False, 0, 0, "")
    data: dict[str, Any] = {}
    with contextlib.suppress(json.JSONDecodeError):
        data = json.loads(out) if out.strip() else {}
    corruptions = int(data.get("corruptions", 0) or 0)
    leaks = int(data.get("leaks", 0) or 0)
    errors = int(data.get("check-errors", 0) or 0)
    if code in (0, 3) and not corruptions and not errors:
        return CheckResult(True, True, 0, leaks, "")
    detail = [line.strip() for line in err.splitlines() if line.strip().startswith(("ERROR", "qemu-img:"))]
    summary = f"{corruptions} errors were found on the image" if corruptions else ""
    message = "; ".join(filter(None, [summary, *(d.removeprefix("qemu-img: ") for d in detail[:2])]))
    return CheckResult(
        False, True, corruptions, leaks, message or _message(err, f"qemu-img check failed (exit {code})")
    )


# --- probing untrusted input ------------------------------------------------


@dataclass(frozen=True)
class FileIdentity:
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int  # unlike mtime, nobody can set it back


def identity(path: str | Path) -> FileIdentity:
    st = os.stat(path)
    return FileIdentity(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class ProbedImage:
    path: Path  # absolute, symlinks resolved
    info: ImageInfo
    identity: FileIdentity

    @property
    def format(self) -> str:
        return self.info.format


# kernel views that look like regular files (/proc/kcore is one, and huge)
_PSEUDO_FS = ("/proc/", "/sys/", "/dev/")


def _regular_file(path: str | Path) -> Path:
    text = os.fspath(path)
    if not text:
        raise Invalid("file", "is required")
    real = Path(_plain_path(text))
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise Invalid("file", f"{text} does not exist") from None
    except OSError as exc:
        raise Invalid("file", f"cannot read {text}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode) or str(real).startswith(_PSEUDO_FS):
        raise Invalid("file", f"{text} is not a regular file")
    if not os.access(real, os.R_OK):
        raise Invalid("file", f"cannot read {text}: permission denied")
    return real


def _check_extents(image: Path, extents: tuple[str, ...]) -> None:
    """VMDK extents must be plain files beside the descriptor (an ESXi pair *.vmdk + *-flat.vmdk)."""
    home = image.parent
    for name in extents:
        if not name or name.startswith("json:") or "://" in name or not os.path.isabs(name):
            raise Invalid("file", f"the VMDK names an extent {name!r} that is not a plain file; refused")
        candidate = Path(name)
        if os.path.islink(candidate):
            raise Invalid("file", f"the VMDK extent {name} is a symbolic link; refused")
        real = Path(_plain_path(candidate))
        if real.parent != home or not real.is_file():
            raise Invalid("file", f"the VMDK names an extent outside its own directory ({name}); refused")


async def probe(path: str | Path) -> ProbedImage:
    """Identify an untrusted image by its content and refuse anything unsafe or damaged."""
    real = _regular_file(path)
    before = identity(real)
    # without --backing-chain: qemu-img does not open the backing file, which is refused below anyway
    found = await info(real)
    kind = found.format
    if kind not in FORMATS:
        names = ", ".join(sorted(FORMATS.values()))
        raise Invalid("file", f"is in {kind or 'an unknown'} format; ggnet imports {names}")
    if found.backing_filename:
        raise Invalid(
            "file",
            f"has a backing file ({found.backing_filename}); convert it to a stand-alone image "
            "first (qemu-img convert); images that name other files are refused",
        )
    if found.data_file:
        raise Invalid("file", f"keeps its data in another file ({found.data_file}); refused")
    if kind == "vmdk":
        _check_extents(real, found.extents)
    if found.corrupt:
        raise Invalid("file", "is marked corrupt by qemu-img; repair it before importing")
    if found.virtual_size < MIN_VIRTUAL_SIZE:
        # no system fits; and it keeps small files that are not disks (a key, a password file) out
        raise Invalid("file", f"is too small to be a disk ({found.virtual_size} bytes; at least 1 MiB)")
    if kind in CHECKABLE:
        result = await check(real, kind)
        if not result.ok:
            raise Invalid("file", f"is damaged: {result.message}")
    if identity(real) != before:
        raise Conflict(f"{path} changed while it was being checked; try again when nothing writes to it")
    return ProbedImage(real, found, before)


# --- free space, hashing ------------------------------------------------------


def free_bytes(directory: str | Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def ensure_free_space(directory: str | Path, needed: int) -> None:
    try:
        free = free_bytes(directory)
    except OSError as exc:
        raise BackendUnavailable(f"cannot use {directory}: {exc.strerror}") from None
    if free < needed:
        raise Conflict(
            f"not enough free space in {directory}: the image needs up to {_size(needed)}, {_size(free)} is free"
        )


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _sha256_sync(path: str | Path, chunk: int = 4 << 20) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            n = handle.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])  # holes read as zeros, so sparse files hash like their full bytes
    return digest.hexdigest()


async def sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, hashed in a worker thread."""
    return await asyncio.to_thread(_sha256_sync, path)


# --- conversion ---------------------------------------------------------------


class ProgressParser:
    """Turns `qemu-img convert -p` output (`    (12.34/100%)` separated by CR) into percentages."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[float]:
        text = self._pending + data
        parts = re.split(rb"[\r\n]", text)
        self._pending = parts.pop()  # possibly an incomplete record
        values = [float(m.group(1)) for part in parts if (m := _PROGRESS.search(part))]
        # a complete record can also end the stream without CR
        if (m := _PROGRESS.search(self._pending)) and self._pending.rstrip().endswith(b")"):
            values.append(float(m.group(1)))
            self._pending = b""
        return values


def remove_stale_partials(directory: Path, older_than: float = 2 * CONVERT_STALL_TIMEOUT) -> list[Path]:
    """Remove temporaries a crashed ggnet left behind. A running conversion keeps writing to its
    temporary, so one untouched for longer than the stall timeout belongs to nobody."""
    removed = []
    cutoff = time.time() - older_than
    for path in directory.glob(".*.part"):
        with contextlib.suppress(OSError):
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
    return removed


def _pinned_source(path: Path, fmt: str) -> str:
    """The source as qemu's JSON pseudo-filename: the probed format, the plain file protocol and
    no backing file, whatever the file says by the time qemu-img opens it."""
    spec = {"driver": fmt, "file": {"driver": "file", "filename": str(path)}, "backing": None}
    return "json:" + json.dumps(spec)


def temp_name(dest: Path) -> Path:
    """A hidden temporary beside ``dest`` (same file system, so the final rename is atomic)."""
    return dest.parent / f".{dest.name}.{uuid.uuid4().hex[:12]}.part"


async def convert_to_raw(
    src: str | Path,
    dest: str | Path,
    fmt: str,
    progress: ProgressCallback | None = None,
    cancel: asyncio.Event | None = None,
    *,
    virtual_size: int | None = None,
    stall_timeout: float = CONVERT_STALL_TIMEOUT,
) -> None:
    """Convert ``src`` (format ``fmt``, already probed) to a raw file at ``dest``, atomically.

    ``dest`` appears complete or not at all. Cancelling (asyncio cancellation, or setting
    ``cancel``) kills qemu-img and removes the partial file; ``cancel`` raises Cancelled.
    """
    if fmt not in FORMATS:
        raise Invalid("format", f"must be one of {', '.join(FORMATS)}")
    dest = Path(dest)
    if virtual_size is None:
        virtual_size = (await info(src, fmt=fmt)).virtual_size
    ensure_free_space(dest.parent, virtual_size)
    if cancel is None:
        await _convert(Path(_plain_path(src)), dest, fmt, progress, stall_timeout, None)
        return
    work = asyncio.ensure_future(_convert(Path(_plain_path(src)), dest, fmt, progress, stall_timeout, cancel))
    stop = asyncio.ensure_future(cancel.wait())
    try:
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not work.done():  # cancelled from outside, or through ``cancel``: wait for the clean-up
            work.cancel()
            await settle(work)
    if work.cancelled():
        raise Cancelled("cancelled; nothing was written")
    work.result()


async def _convert(
    src: Path, dest: Path, fmt: str, progress: ProgressCallback | None, stall: float, cancel: asyncio.Event | None
) -> None:
    log = get_logger()
    partial = temp_name(dest)
    args = ["convert", "-p", "-O", "raw", _pinned_source(src, fmt), str(partial)]
    try:
        proc = await _spawn(args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except BaseException:
        # cancelled while starting: asyncio has killed and reaped qemu-img, which may already
        # have created the partial file
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    assert proc.stdout is not None and proc.stderr is not None
    errors = asyncio.ensure_future(proc.stderr.read())
    parser = ProgressParser()
    placed = False
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(proc.stdout.read(4096), stall)
            except TimeoutError:
                raise BackendUnavailable(f"qemu-img convert made no progress for {stall:.0f} s; stopped") from None
            if not chunk:
                break
            if progress is not None:
                for value in parser.feed(chunk):
                    progress(value)
        code = await proc.wait()
        stderr = (await errors).decode(errors="replace")
        if code != 0:
            raise Invalid("file", _message(stderr, f"qemu-img convert failed (exit status {code})"))
        os.chmod(partial, 0o600)
        await asyncio.to_thread(fsync_file, partial)
        if cancel is not None and cancel.is_set():  # cancelled while qemu-img was finishing
            raise Cancelled("cancelled; nothing was written")
        os.replace(partial, dest)
        placed = True
        await asyncio.to_thread(fsync_dir, dest.parent)
        log.info("qemu-img convert done", source=str(src), format=fmt, dest=str(dest))
    except BaseException:
        await _kill(proc)
        errors.cancel()
        for path in (partial, dest) if placed else (partial,):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        raise
