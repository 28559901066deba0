"""The ggnet-disk-v1 digest (core.storage.digest): content only, holes and zeros alike, any layout."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from core.storage.digest import LEAF, TAG, DiskDigest, disk_digest, reference_digest


def write(path: Path, size: int, pieces: dict[int, bytes], sparse: bool = True) -> Path:
    with open(path, "wb") as handle:
        if sparse:
            handle.truncate(size)
        else:
            handle.write(bytes(size))
        for offset, data in pieces.items():
            handle.seek(offset)
            handle.write(data)
    return path


def test_the_definition_written_out(tmp_path: Path) -> None:
    leaf = os.urandom(LEAF)
    path = write(tmp_path / "d.raw", 3 * LEAF + 10, {LEAF: leaf, 3 * LEAF: b"tail"})
    expected = hashlib.sha256(TAG + (3 * LEAF + 10).to_bytes(8, "big"))
    expected.update((1).to_bytes(8, "big") + hashlib.sha256(leaf).digest())
    expected.update((3).to_bytes(8, "big") + hashlib.sha256(b"tail" + bytes(6)).digest())
    assert disk_digest(path) == expected.hexdigest() == reference_digest(path.read_bytes())


def test_holes_and_written_zeros_are_the_same_disk(tmp_path: Path) -> None:
    pieces = {5: b"boot", 7 * LEAF + 3: os.urandom(3 * LEAF), 20 * LEAF - 1: b"!"}
    sparse = write(tmp_path / "sparse.raw", 20 * LEAF, pieces)
    full = write(tmp_path / "full.raw", 20 * LEAF, pieces, sparse=False)
    assert sparse.stat().st_blocks < full.stat().st_blocks
    assert disk_digest(sparse) == disk_digest(full) == reference_digest(full.read_bytes())


def test_any_change_of_a_byte_or_of_the_size_changes_it(tmp_path: Path) -> None:
    base = write(tmp_path / "a.raw", 4 * LEAF, {0: b"x" * 100})
    moved = write(tmp_path / "b.raw", 4 * LEAF, {1: b"x" * 100})
    longer = write(tmp_path / "c.raw", 4 * LEAF + 512, {0: b"x" * 100})
    empty, empty_longer = write(tmp_path / "d.raw", 4 * LEAF, {}), write(tmp_path / "e.raw", 5 * LEAF, {})
    digests = [disk_digest(p) for p in (base, moved, longer, empty, empty_longer)]
    assert len(set(digests)) == len(digests)


def test_ranges_in_order_on_leaf_boundaries_give_the_whole_file_digest(tmp_path: Path) -> None:
    path = write(tmp_path / "d.raw", 40 * LEAF + 77, {0: os.urandom(50 * 1000 * 10), 33 * LEAF: os.urandom(LEAF)})
    fd = os.open(path, os.O_RDONLY)
    try:
        digest = DiskDigest(path.stat().st_size)
        for start, end in ((0, 3 * LEAF), (3 * LEAF, 3 * LEAF), (3 * LEAF, 33 * LEAF), (33 * LEAF, digest.size)):
            digest.add(fd, start, end)
        assert digest.hexdigest() == disk_digest(path)
        wrong = DiskDigest(digest.size)
        with pytest.raises(ValueError, match="out of order"):
            wrong.add(fd, LEAF, 2 * LEAF)
        with pytest.raises(ValueError, match="leaf boundary"):
            wrong.add(fd, 0, LEAF + 1)
        with pytest.raises(ValueError, match="only 0 of"):
            wrong.hexdigest()
    finally:
        os.close(fd)
