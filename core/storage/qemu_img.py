"""qemu-img: inspect untrusted disk images and convert them to the raw files the iSCSI targets serve.

Everything runs from argument lists with timeouts; qemu-img's own message becomes the error,
with control characters escaped.

The input is untrusted. `probe` pins the image and every file it reads (core.storage.untrusted:
no symbolic link another user could swap, no file the image names but its own VMDK extents,
the format always given), then runs ``qemu-img info``, ``check`` and ``map`` on those open
descriptors only. `convert_to_raw` converts the pinned set; a file swapped or written meanwhile
changes nothing, or is noticed (`ProbedImage.changed`).

The conversion runs in windows of the virtual disk (``raw`` driver ``offset``/``size`` on
both sides, ``-n --target-is-zero``), each holding about the same amount of data. While
qemu-img converts one window, ggnet hashes the previous one (still in the page cache) on
every core while a third thread writes the converted data to disk: the digest (core.storage.digest, ``ggnet-disk-v1``) costs
no second pass over the disk. Windows without data are not run at all: they stay holes.

qemu-img runs under ``setpriv --pdeathsig KILL``: when the ggnet process (strictly, the
thread running its event loop) dies, so does qemu-img. Its output is a locked temporary
(core.storage.temps) that the next sweep removes once ggnet and qemu-img are gone.

A full destination is said as such (where, and how much the image needs), never blamed on
the input file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailable, Conflict, GgnetError, Invalid
from ..log import get_logger
from . import temps
from .digest import LEAF, DiskDigest, disk_digest
from .untrusted import FORMATS, Source, open_source, quoted

QEMU_IMG = "qemu-img"
INFO_TIMEOUT = 60.0
CHECK_TIMEOUT = 600.0
MAP_TIMEOUT = 600.0
# conversion has no total limit (a 500 GiB image takes long); it fails when qemu-img stays silent this long
CONVERT_STALL_TIMEOUT = 900.0
MIN_VIRTUAL_SIZE = 1 << 20
# Data per conversion window. Each window is one qemu-img process (~30 ms of CPU to start and
# stop, measured), hashed while the next converts; the last is hashed alone. 4 windows for a
# 1 GiB image; at most 1 GiB each, so that a window is still in the page cache when it is hashed.
WINDOW_MIN = 256 << 20
WINDOW_MAX = 1 << 30
WINDOWS = 4

# formats whose consistency `qemu-img check` can verify
CHECKABLE = frozenset({"qcow2", "vdi", "vhdx", "vmdk"})

ProgressCallback = Callable[[float], Any]

_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
_OUT_OF_SPACE = ("No space left on device", "Disk quota exceeded")


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


def _command() -> list[str]:
    """qemu-img, under setpriv so that the kernel kills it (SIGKILL) when its parent dies."""
    qemu = shutil.which(QEMU_IMG)
    if qemu is None:
        raise BackendUnavailable("qemu-img is not installed; install the qemu-utils package")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise BackendUnavailable("setpriv is not installed; install the util-linux package")
    return [setpriv, "--pdeathsig", "KILL", "--", qemu]


async def _spawn(args: list[str], pass_fds: tuple[int, ...] | list[int] = (), **kw: Any) -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            *_command(),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            env=_env(),
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            **kw,
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


async def _run(args: list[str], timeout: float, pass_fds: tuple[int, ...] | list[int] = ()) -> tuple[int, str, str]:
    proc = await _spawn(args, pass_fds, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
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
    """qemu-img's own words, without its 'qemu-img: ' prefix, control characters escaped."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    text = " ".join(line.removeprefix("qemu-img: ") for line in lines[:3])
    return quoted(text or fallback)


def _plain_path(path: str | Path) -> str:
    """An absolute real path: qemu never reads it as `json:` or `proto://`."""
    return os.path.realpath(os.fspath(path))


def _pinned(spec: dict[str, Any]) -> str:
    return "json:" + json.dumps(spec)


async def info(path: str | Path, *, fmt: str | None = None, backing_chain: bool = False) -> ImageInfo:
    """`qemu-img info` of a file ggnet trusts (its own). ``backing_chain`` opens the backing files too."""
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


async def check(source: Source) -> CheckResult:
    """`qemu-img check` of a pinned image. Leaked clusters only waste space and are not an error; corruptions are."""
    code, out, err = await _run(["check", "--output=json", _pinned(source.spec())], CHECK_TIMEOUT, source.files)
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
    message = "; ".join(filter(None, [summary, *(quoted(d.removeprefix("qemu-img: ")) for d in detail[:2])]))
    return CheckResult(
        False, True, corruptions, leaks, message or _message(err, f"qemu-img check failed (exit {code})")
    )


async def data_extents(source: Source) -> list[tuple[int, int]]:
    """(start, end) of the virtual disk's regions that hold data (`qemu-img map`), merged."""
    code, out, err = await _run(["map", "--output=json", _pinned(source.spec())], MAP_TIMEOUT, source.files)
    if code != 0:
        raise Invalid("file", _message(err, f"qemu-img map failed (exit status {code})"))
    try:
        entries = json.loads(out)
    except json.JSONDecodeError as exc:
        raise BackendUnavailable(f"qemu-img map printed something that is not JSON: {exc}") from None
    extents: list[tuple[int, int]] = []
    for entry in entries:
        if not entry.get("data") or entry.get("zero"):
            continue
        start, end = int(entry["start"]), int(entry["start"]) + int(entry["length"])
        if extents and extents[-1][1] == start:
            extents[-1] = (extents[-1][0], end)
        else:
            extents.append((start, end))
    return extents


# --- probing untrusted input ------------------------------------------------


@dataclass
class ProbedImage:
    """An untrusted image, pinned and checked; holds its files open until closed."""

    source: Source
    info: ImageInfo
    extents: list[tuple[int, int]]  # where the virtual disk holds data

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def format(self) -> str:
        return self.source.format

    @property
    def data_size(self) -> int:
        return sum(end - start for start, end in self.extents)

    def changed(self) -> bool:
        """Whether the operator's files were written since they were probed."""
        return self.source.changed()

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> ProbedImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def probe(path: str | Path) -> ProbedImage:
    """Pin an untrusted image, identify it by its content and refuse anything unsafe or damaged.
    The result holds the image's files open: close it (``with await probe(p) as probed:``)."""
    source = open_source(path)
    try:
        code, out, err = await _run(["info", "--output=json", _pinned(source.spec())], INFO_TIMEOUT, source.files)
        if code != 0:
            raise Invalid("file", _message(err, f"qemu-img info failed (exit status {code})"))
        found = parse_info(out)
        # named files were refused before qemu-img ran (and are never opened); this is a second look
        if found.backing_filename:
            raise Invalid(
                "file",
                f"has a backing file ({quoted(found.backing_filename)}); convert it to a stand-alone image "
                "first (qemu-img convert); images that name other files are refused",
            )
        if found.data_file:
            raise Invalid("file", f"keeps its data in another file ({quoted(found.data_file)}); refused")
        if found.corrupt:
            raise Invalid("file", "is marked corrupt by qemu-img; repair it before importing")
        if found.virtual_size < MIN_VIRTUAL_SIZE:
            # no system fits; and it keeps small files that are not disks (a key, a password file) out
            raise Invalid("file", f"is too small to be a disk ({found.virtual_size} bytes; at least 1 MiB)")
        if source.format in CHECKABLE:
            result = await check(source)
            if not result.ok:
                raise Invalid("file", f"is damaged: {result.message}")
        extents = await data_extents(source)
        if source.changed():
            raise Conflict(f"{source.shown_as} changed while it was being checked; try again when nothing writes to it")
        return ProbedImage(source, found, extents)
    except BaseException:
        source.close()
        raise


# --- free space -----------------------------------------------------------------


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


def _full(directory: Path, needed: int, reason: str) -> Conflict:
    return Conflict(
        f"the destination {directory} is full ({reason}): this image needs up to {_size(needed)} there; "
        "free some space and import again. Nothing was kept."
    )


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


async def digest(path: str | Path) -> str:
    """The ggnet-disk-v1 digest of a raw file (core.storage.digest), hashed in worker threads."""
    return await asyncio.to_thread(disk_digest, path)


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


@dataclass(frozen=True)
class Window:
    start: int
    end: int
    data: int  # bytes of data qemu-img will read in it


def plan_windows(extents: list[tuple[int, int]], size: int, target: int | None = None) -> list[Window]:
    """Cut [0, size) into windows holding about ``target`` bytes of data each, on leaf boundaries."""
    total = sum(end - start for start, end in extents)
    if target is None:
        target = min(max(total // WINDOWS, WINDOW_MIN), WINDOW_MAX)
    cuts, held = [0], 0
    for start, end in extents:
        position = max(start, cuts[-1])
        while position < end:
            step = min(target - held, end - position)
            position += step
            held += step
            if held >= target:
                cut = min(-(-position // LEAF) * LEAF, size)
                cuts.append(cut)
                held, position = 0, max(position, cut)
    if cuts[-1] < size:
        cuts.append(size)
    windows, first = [], 0
    for start, end in itertools.pairwise(cuts):
        while first < len(extents) and extents[first][1] <= start:
            first += 1
        data, index = 0, first
        while index < len(extents) and extents[index][0] < end:
            data += min(extents[index][1], end) - max(extents[index][0], start)
            index += 1
        windows.append(Window(start, end, data))
    return windows


async def convert_to_raw(
    probed: ProbedImage,
    dest: str | Path,
    progress: ProgressCallback | None = None,
    cancel: asyncio.Event | None = None,
    *,
    stall_timeout: float = CONVERT_STALL_TIMEOUT,
) -> str:
    """Convert a probed image to a raw file at ``dest``, atomically; returns its digest.

    ``dest`` appears complete or not at all. Cancelling (asyncio cancellation, or setting
    ``cancel``) kills qemu-img and removes the partial file; ``cancel`` raises Cancelled.
    """
    dest = Path(dest)
    ensure_free_space(dest.parent, probed.data_size)
    if cancel is None:
        return await _convert(probed, dest, progress, stall_timeout, None)
    work = asyncio.ensure_future(_convert(probed, dest, progress, stall_timeout, cancel))
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
    return work.result()


def _hash_window(digest: DiskDigest, fd: int, window: Window, stop: threading.Event) -> None:
    digest.add(fd, window.start, window.end, stop)


async def _convert(
    probed: ProbedImage, dest: Path, progress: ProgressCallback | None, stall: float, cancel: asyncio.Event | None
) -> str:
    size = probed.info.virtual_size
    windows = plan_windows(probed.extents, size)
    total = sum(w.data for w in windows)
    digest = DiskDigest(size)
    stop = threading.Event()
    # Three stages overlap: qemu-img converts a window, a thread hashes the previous one (still in
    # the page cache), another writes what is converted so far to disk. Each waits only for its own
    # previous step, so the slowest stage, not their sum, sets the pace.
    hashing: asyncio.Future[None] | None = None
    flushing: asyncio.Future[None] | None = None
    done = 0

    def report(window: Window, percent: float) -> None:
        if progress is not None and total:
            progress(min(100.0, round((done * 100 + percent * window.data) / total, 2)))

    try:
        with temps.partial(dest) as part:
            try:
                os.ftruncate(part.fd, size)  # a hole of the disk's size; qemu-img writes only the data
                for window in windows:
                    if window.data:
                        await _convert_window(probed, part.fd, window, size, dest.parent, report, stall)
                    if hashing is not None:
                        await hashing  # the digest takes the windows in order
                    hashing = asyncio.ensure_future(asyncio.to_thread(_hash_window, digest, part.fd, window, stop))
                    if flushing is None or flushing.done():
                        if flushing is not None:
                            await flushing  # done: raises its error, if any
                        flushing = asyncio.ensure_future(asyncio.to_thread(os.fdatasync, part.fd))
                    done += window.data
                if hashing is not None:
                    await hashing
                if flushing is not None:
                    await flushing
                # through ``flushing`` too: a cancel must not close the file under a running fsync
                flushing = asyncio.ensure_future(asyncio.to_thread(os.fsync, part.fd))
                await flushing
                if progress is not None and not total:
                    progress(100.0)
                if cancel is not None and cancel.is_set():  # cancelled while the last step was finishing
                    raise Cancelled("cancelled; nothing was written")
                part.commit(dest)
            except BaseException:
                stop.set()
                for thread in (hashing, flushing):  # they use the partial file: they must end before it goes
                    if thread is not None:
                        await settle(thread)
                if part.committed:
                    dest.unlink(missing_ok=True)
                raise
    except OSError as exc:  # ours (create, flush, rename); qemu-img's own failures are turned into sentences below
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _full(dest.parent, probed.data_size, (exc.strerror or "no space left").lower()) from None
        raise BackendUnavailable(f"cannot write the image in {dest.parent}: {exc.strerror or exc}") from None
    get_logger().info(
        "qemu-img convert done",
        source=quoted(str(probed.path)),
        format=probed.format,
        dest=str(dest),
        windows=len(windows),
    )
    return digest.hexdigest()


async def _convert_window(
    probed: ProbedImage,
    out: int,
    window: Window,
    size: int,
    directory: Path,
    report: Callable[[Window, float], None],
    stall: float,
) -> None:
    source: dict[str, Any] = {"driver": "raw", "offset": window.start, "file": probed.source.spec()}
    target: dict[str, Any] = {
        "driver": "raw",
        "offset": window.start,
        "file": {"driver": "file", "filename": f"/dev/fd/{out}"},
    }
    if window.end < size:  # the last window runs to the end, whatever the alignment of the size
        source["size"] = target["size"] = window.end - window.start
    args = ["convert", "-p", "-n", "--target-is-zero", "-t", "unsafe", "-O", "raw", _pinned(source), _pinned(target)]
    proc = await _spawn(
        args, (*probed.source.files, out), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    errors = asyncio.ensure_future(proc.stderr.read())
    parser = ProgressParser()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(proc.stdout.read(4096), stall)
            except TimeoutError:
                raise BackendUnavailable(f"qemu-img convert made no progress for {stall:.0f} s; stopped") from None
            if not chunk:
                break
            for value in parser.feed(chunk):
                report(window, value)
        code = await proc.wait()
        stderr = (await errors).decode(errors="replace")
    except BaseException:
        await _kill(proc)
        errors.cancel()
        raise
    if code != 0:
        message = _message(stderr, f"qemu-img convert failed (exit status {code})")
        if any(reason in stderr for reason in _OUT_OF_SPACE):
            raise _full(directory, probed.data_size, next(r for r in _OUT_OF_SPACE if r in stderr).lower())
        if "error while writing" in stderr:
            raise BackendUnavailable(f"cannot write the image in {directory}: {message}")
        raise Invalid("file", message)
