"""The digest of a served disk: what an image version's ``sha256`` is.

It identifies a raw disk by its content, costs time in proportion to the data it holds
(not its virtual size) and can be computed in parallel, piece by piece, while the disk is
still being written (the import hashes each converted piece while qemu-img converts the next).

Definition (``ggnet-disk-v1``): cut the disk into leaves of 1 MiB (the last may be shorter).
A leaf whose bytes are all zero is left out, so a hole and written zeros are the same thing.
The digest is

    SHA-256( b"ggnet-disk-v1" || u64be(disk size) || for each non-zero leaf, in order: u64be(leaf index) || SHA-256(leaf bytes) )

in lower-case hex. It covers every byte of the disk (a left-out leaf is known to be zero),
so two disks have the same digest exactly when they have the same size and the same bytes,
however they are stored (sparse or not, on any file system). It is not `sha256sum` of the
file: hashing every zero of a mostly empty 500 GiB disk is what it avoids. `disk_digest`
computes it for any file, e.g. to check a served file or a copy on another server.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

LEAF = 1 << 20
BATCH = 16 * LEAF  # one read and one task of the pool
TAG = b"ggnet-disk-v1"
_ZERO = bytes(LEAF)

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
# Each pool thread reads into its own buffer, kept: a fresh 16 MiB per read costs page faults
# (and, in a virtual machine, memory handed back to the host and taken again).
_buffers = threading.local()


def _executor() -> ThreadPoolExecutor:
    # hashlib releases the GIL on big buffers: leaves are hashed on all cores
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1)), thread_name_prefix="digest")
        return _pool


def data_regions(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) of the data regions of an open file within [start, end); the whole range
    if the file system cannot tell data from holes."""
    regions: list[tuple[int, int]] = []
    offset = start
    try:
        while offset < end:
            try:
                found = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole remains
                    break
                raise
            if found >= end:
                break
            stop = os.lseek(fd, found, os.SEEK_HOLE)
            regions.append((found, min(stop, end)))
            offset = stop
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return [(start, end)] if end > start else []
        raise
    return regions


def _batches(regions: list[tuple[int, int]], size: int) -> Iterator[tuple[int, int]]:
    """Leaf-aligned (start, end) runs covering the regions, each at most BATCH long, each leaf once."""
    covered = 0
    for start, end in regions:
        first = max(start - start % LEAF, covered)
        last = min(-(-end // LEAF) * LEAF, size)
        for offset in range(first, last, BATCH):
            yield offset, min(offset + BATCH, last)
        covered = max(covered, last)


class DiskDigest:
    """The ggnet-disk-v1 digest of a disk of ``size`` bytes, fed in order, leaf-aligned ranges at a time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._hash = hashlib.sha256(TAG + size.to_bytes(8, "big"))
        self._next = 0  # where the next range must start

    def add(self, fd: int, start: int, end: int, stop: threading.Event | None = None) -> None:
        """Hash [start, end) of the open file ``fd``; ranges come in order, each starting where
        the previous one ended, on a leaf boundary. ``stop`` abandons the work between batches."""
        if start != self._next or start % LEAF or not start <= end <= self.size:
            raise ValueError(f"range {start}-{end} out of order (expected a start at {self._next})")
        if end < self.size and end % LEAF:
            raise ValueError(f"range end {end} is not on a leaf boundary")
        abandon = threading.Event()  # set on any failure: the batches not yet started stop at once
        pool = _executor()
        futures = [
            pool.submit(_hash_batch, fd, a, b, stop, abandon)
            for a, b in _batches(data_regions(fd, start, end), self.size)
        ]
        try:
            for future in futures:
                for index, leaf_digest in future.result():
                    self._hash.update(index.to_bytes(8, "big") + leaf_digest)
        except BaseException:
            abandon.set()
            wait(futures)  # none may still read ``fd`` once we return: the caller may close it
            raise
        self._next = end

    def hexdigest(self) -> str:
        if self._next != self.size:
            raise ValueError(f"only {self._next} of {self.size} bytes were hashed")
        return self._hash.hexdigest()


def _hash_batch(
    fd: int, start: int, end: int, stop: threading.Event | None, abandon: threading.Event
) -> list[tuple[int, bytes]]:
    if abandon.is_set() or (stop is not None and stop.is_set()):
        raise InterruptedError("digest abandoned")
    buffer: bytearray | None = getattr(_buffers, "batch", None)
    if buffer is None:
        buffer = _buffers.batch = bytearray(BATCH)
    view = memoryview(buffer)[: end - start]
    read = os.preadv(fd, [view], start)
    if read != end - start:
        raise OSError(errno.EIO, f"short read at byte {start + read}")
    leaves = []
    for offset in range(0, read, LEAF):
        length = min(LEAF, read - offset)
        # startswith compares in place (memcmp), no copy
        if buffer.startswith(_ZERO if length == LEAF else bytes(length), offset):
            continue
        leaves.append(((start + offset) // LEAF, hashlib.sha256(view[offset : offset + length]).digest()))
    return leaves


def disk_digest(path: str | Path) -> str:
    """The ggnet-disk-v1 digest of a whole file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        digest = DiskDigest(os.fstat(fd).st_size)
        digest.add(fd, 0, digest.size)
        return digest.hexdigest()
    finally:
        os.close(fd)


def reference_digest(data: bytes) -> str:
    """The same digest computed the plain way from bytes in memory (for tests and for readers)."""
    outer = hashlib.sha256(TAG + len(data).to_bytes(8, "big"))
    for index, offset in enumerate(range(0, len(data), LEAF)):
        leaf = data[offset : offset + LEAF]
        if leaf.count(0) != len(leaf):
            outer.update(index.to_bytes(8, "big") + hashlib.sha256(leaf).digest())
    return outer.hexdigest()
