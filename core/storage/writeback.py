"""Writeback disks: a machine's private raw file, cloned from an image version.

Drivers share one small protocol so that lvm-thin or ZFS clones can join later
(register them in ``DRIVERS``). ``reflink`` clones with the FICLONE ioctl on XFS or
btrfs: constant time whatever the image size, blocks shared until written. ``copy``
is the fallback: a sparse-aware copy (only the data regions are copied, holes stay holes).
Both write under a temporary name and rename, so a writeback is complete or absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..config import Settings
from ..errors import BackendUnavailable, DiskFull, GgnetError, Invalid
from ..files import create_private, private_dir
from ..log import get_logger
from . import IMAGES_DIR, WRITEBACK_DIR, temps
from .qemu_img import Cancelled, settle

FICLONE = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h
COPY_CHUNK = 8 << 20

ProgressCallback = Callable[[float], Any]


def writeback_dir(settings: Settings) -> Path:
    return settings.data_dir / WRITEBACK_DIR


def writeback_path(settings: Settings, machine_id: int) -> Path:
    """The writeback of a machine: named by its id, never by anything a user typed."""
    return writeback_dir(settings) / f"machine-{int(machine_id)}.raw"


@runtime_checkable
class WritebackDriver(Protocol):
    name: str

    async def create(self, source: Path, dest: Path, progress: ProgressCallback | None = None) -> None:
        """Make ``dest`` a private writable copy of ``source`` (replacing any ``dest``)."""

    async def discard(self, path: Path) -> None:
        """Remove a writeback; a missing one is not an error."""

    def supports(self, directory: Path) -> bool:
        """Whether this driver works for files in ``directory``."""


def _os_error(what: str, exc: OSError) -> GgnetError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"{what}: the disk holding the writebacks is full; free space there and try again")
    return BackendUnavailable(f"{what}: {exc.strerror or exc}")


class _FileDriver:
    """What the file-based drivers share: atomic create, plain discard."""

    name = "file"

    async def create(self, source: Path, dest: Path, progress: ProgressCallback | None = None) -> None:
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def report(value: float) -> None:
            if progress is not None:
                loop.call_soon_threadsafe(progress, value)

        work = asyncio.ensure_future(asyncio.to_thread(self._create_sync, Path(source), Path(dest), report, stop))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            stop.set()  # the thread notices between chunks and removes its partial file
            await settle(work)
            if not work.cancelled() and work.exception() is None:
                # it finished before noticing: a cancelled create still leaves nothing
                Path(dest).unlink(missing_ok=True)
            raise

    def _create_sync(self, source: Path, dest: Path, report: ProgressCallback, stop: threading.Event) -> None:
        try:
            # a locked temporary: if this process dies, the engine's next sweep (temps.remove_orphans) removes it
            with open(source, "rb") as src, temps.partial(dest) as part:
                self._fill(src.fileno(), part.fd, report, stop)
                os.fsync(part.fd)
                part.commit(dest)
        except OSError as exc:
            raise _os_error(f"cannot create writeback {dest.name} ({self.name})", exc) from None
        report(100.0)

    def _fill(self, src: int, dst: int, report: ProgressCallback, stop: threading.Event) -> None:
        raise NotImplementedError

    async def discard(self, path: Path) -> None:
        try:
            await asyncio.to_thread(Path(path).unlink, missing_ok=True)
        except OSError as exc:
            raise _os_error(f"cannot remove writeback {Path(path).name}", exc) from None

    def supports(self, directory: Path) -> bool:
        return Path(directory).is_dir() and os.access(directory, os.W_OK)


class ReflinkDriver(_FileDriver):
    """FICLONE: the clone shares every block with its source until either is written."""

    name = "reflink"

    def _fill(self, src: int, dst: int, report: ProgressCallback, stop: threading.Event) -> None:
        fcntl.ioctl(dst, FICLONE, src)

    def supports(self, directory: Path) -> bool:
        return reflink_works(Path(directory), Path(directory))


class CopyDriver(_FileDriver):
    """A sparse-aware copy: data regions found with SEEK_DATA/SEEK_HOLE, holes left as holes."""

    name = "copy"

    def _fill(self, src: int, dst: int, report: ProgressCallback, stop: threading.Event) -> None:
        size = os.fstat(src).st_size
        os.ftruncate(dst, size)  # the whole file is a hole; then only data is written
        last_percent = -1.0
        for start, end in data_regions(src, size):
            offset = start
            while offset < end:
                if stop.is_set():
                    raise Cancelled("cancelled; the partial writeback was removed")
                n = _copy_range(src, dst, offset, min(COPY_CHUNK, end - offset))
                offset += n
                percent = round(100.0 * offset / size, 1) if size else 100.0
                if percent != last_percent:
                    report(percent)
                    last_percent = percent


def data_regions(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of each data region of an open file; the whole file if the file system cannot tell."""
    regions: list[tuple[int, int]] = []
    offset = 0
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole remains
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            regions.append((start, min(end, size)))
            offset = end
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return [(0, size)] if size else []
        raise
    return regions


def _copy_range(src: int, dst: int, offset: int, count: int) -> int:
    try:
        n = os.copy_file_range(src, dst, count, offset, offset)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        data = os.pread(src, count, offset)
        n = os.pwrite(dst, data, offset) if data else 0
    if n == 0:
        raise OSError(errno.EIO, "the source ended early")
    return n


def reflink_works(source_dir: Path, dest_dir: Path) -> bool:
    """Try a real FICLONE from a file in ``source_dir`` to one in ``dest_dir``."""
    tag = uuid.uuid4().hex[:12]
    src_path = source_dir / f".reflink-probe-{tag}.src"
    dst_path = dest_dir / f".reflink-probe-{tag}.dst"
    try:
        with os.fdopen(create_private(src_path), "wb") as src:
            src.write(b"ggnet" * 1024)
            src.flush()
            os.fsync(src.fileno())
        with open(src_path, "rb") as src, os.fdopen(create_private(dst_path), "wb") as dst:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
        return True
    except (OSError, GgnetError):
        return False
    finally:
        for path in (src_path, dst_path):
            with contextlib.suppress(OSError):
                path.unlink()


DRIVERS: dict[str, type[_FileDriver]] = {"reflink": ReflinkDriver, "copy": CopyDriver}
_probed: dict[tuple[str, int], bool] = {}


async def choose_driver(data_dir: Path, setting: str = "auto") -> WritebackDriver:
    """The driver for GGNET_WRITEBACK_DRIVER: ``auto`` prefers reflink when a real clone from
    the images directory into the writebacks directory works."""
    if setting not in ("auto", *DRIVERS):
        raise Invalid("writeback_driver", f"must be auto, {', '.join(DRIVERS)}; got {setting!r}")
    if setting == "copy":
        return CopyDriver()
    images, writebacks = Path(data_dir) / IMAGES_DIR, Path(data_dir) / WRITEBACK_DIR
    try:
        for directory in (images, writebacks):
            private_dir(directory)
        key = (str(writebacks.resolve()), os.stat(writebacks).st_dev)
    except OSError as exc:
        raise _os_error(f"cannot use the data directory {data_dir}", exc) from None
    if key not in _probed:
        _probed[key] = await asyncio.to_thread(reflink_works, images, writebacks)
        get_logger().info("reflink probe", directory=str(writebacks), works=_probed[key])
    if _probed[key]:
        return ReflinkDriver()
    if setting == "reflink":
        raise BackendUnavailable(
            f"GGNET_WRITEBACK_DRIVER is reflink but {data_dir} cannot make reflink clones; put the data "
            "directory on XFS (mkfs.xfs -m reflink=1) or btrfs, or set GGNET_WRITEBACK_DRIVER=copy"
        )
    return CopyDriver()
