"""Writeback drivers on real file systems: copy everywhere, reflink on a loop-mounted XFS (as root)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import Settings
from core.errors import BackendUnavailable, Invalid
from core.storage import writeback
from core.storage.writeback import CopyDriver, ReflinkDriver, WritebackDriver, choose_driver, data_regions

from .conftest import IN_CI

MiB = 1 << 20


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sparse_source(path: Path, size: int = 64 * MiB) -> Path:
    """64 MiB virtual, 2 MiB of data (at the start and in the middle), holes elsewhere."""
    with open(path, "wb") as handle:
        handle.write(os.urandom(MiB))
        handle.seek(size // 2)
        handle.write(os.urandom(MiB))
        handle.truncate(size)
    return path


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


# --- copy ----------------------------------------------------------------------


async def test_copy_driver_preserves_content_and_holes(tmp_path: Path) -> None:
    source = sparse_source(tmp_path / "image.raw")
    assert allocated(source) < 4 * MiB  # the file system keeps holes (else the test proves nothing)
    dest = tmp_path / "wb" / "machine-1.raw"
    dest.parent.mkdir()
    seen: list[float] = []
    driver = CopyDriver()
    assert isinstance(driver, WritebackDriver) and driver.supports(dest.parent)
    await driver.create(source, dest, progress=seen.append)
    await asyncio.sleep(0)  # progress arrives through the event loop
    assert sha(dest) == sha(source)
    assert dest.stat().st_size == source.stat().st_size
    assert allocated(dest) < 4 * MiB  # holes stayed holes
    assert seen and seen == sorted(seen) and seen[-1] == 100.0
    assert oct(dest.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["machine-1.raw"]
    # a private copy: writing to it leaves the image alone
    before = sha(source)
    with open(dest, "r+b") as handle:
        handle.write(b"written by the client")
    assert sha(source) == before


async def test_copy_of_a_file_without_holes_and_of_an_empty_file(tmp_path: Path) -> None:
    full = tmp_path / "full.raw"
    full.write_bytes(os.urandom(3 * MiB + 123))
    await CopyDriver().create(full, tmp_path / "full.copy")
    assert sha(tmp_path / "full.copy") == sha(full)
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    await CopyDriver().create(empty, tmp_path / "empty.copy")
    assert (tmp_path / "empty.copy").read_bytes() == b""


def test_data_regions_finds_data_between_holes(tmp_path: Path) -> None:
    source = sparse_source(tmp_path / "image.raw")
    with open(source, "rb") as handle:
        regions = data_regions(handle.fileno(), source.stat().st_size)
    covered = sum(end - start for start, end in regions)
    assert MiB * 2 <= covered < 8 * MiB
    assert regions[0][0] == 0 and any(start <= 32 * MiB < end for start, end in regions)


async def test_cancelled_copy_leaves_no_file(tmp_path: Path) -> None:
    """Cancelled on every progress report (so also while cleaning up), several times over:
    neither the writeback nor its temporary may survive."""
    source = tmp_path / "image.raw"
    source.write_bytes(os.urandom(24 * MiB))
    dest = tmp_path / "wb.raw"
    for _ in range(10):
        tasks: list[asyncio.Future[None]] = []
        task = asyncio.ensure_future(
            CopyDriver().create(source, dest, progress=lambda _v, tasks=tasks: tasks[0].cancel())
        )
        tasks.append(task)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sorted(p.name for p in tmp_path.iterdir()) == ["image.raw"]


async def test_discard_removes_and_tolerates_missing(tmp_path: Path) -> None:
    path = tmp_path / "machine-3.raw"
    path.write_bytes(b"x")
    await CopyDriver().discard(path)
    assert not path.exists()
    await CopyDriver().discard(path)  # again: nothing to do, no error


async def test_choose_driver_on_a_file_system_without_reflink(tmp_path: Path) -> None:
    if writeback.reflink_works(tmp_path, tmp_path):
        pytest.skip("optional: this tmp directory supports reflink; the fallback cannot be shown here")
    data = tmp_path / "data"
    assert (await choose_driver(data, "auto")).name == "copy"
    assert (await choose_driver(data, "copy")).name == "copy"
    with pytest.raises(BackendUnavailable, match="cannot make reflink clones"):
        await choose_driver(data, "reflink")
    with pytest.raises(Invalid, match="writeback_driver"):
        await choose_driver(data, "zfs")
    assert not ReflinkDriver().supports(tmp_path)
    # the probe leaves nothing behind
    assert [p for p in data.rglob("*") if p.is_file()] == []
    source = sparse_source(tmp_path / "img.raw", 4 * MiB)
    with pytest.raises(BackendUnavailable, match="cannot create writeback"):
        await ReflinkDriver().create(source, tmp_path / "clone.raw")
    assert not (tmp_path / "clone.raw").exists()


def test_writeback_path_is_named_by_machine_id(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="sqlite+aiosqlite:///:memory:")
    assert writeback.writeback_path(settings, 7) == tmp_path / "writebacks" / "machine-7.raw"


# --- reflink on XFS --------------------------------------------------------------


@pytest.fixture(scope="module")
def xfs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An XFS file system with reflink, made in a sparse file and loop-mounted (root only)."""
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
        if IN_CI:
            pytest.fail("CI runs as root with xfsprogs: the reflink test must run")
        pytest.skip("needs root and mkfs.xfs (xfsprogs) to make a loop-mounted XFS")
    root = tmp_path_factory.mktemp("xfs")
    image, mountpoint = root / "xfs.img", root / "mnt"
    mountpoint.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(512 * MiB)  # XFS needs at least 300 MiB
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True, capture_output=True, timeout=60)
    mounted = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True, timeout=60
    )
    if mounted.returncode != 0:
        if IN_CI:
            pytest.fail(f"cannot loop-mount XFS: {mounted.stderr}")
        pytest.skip(f"cannot loop-mount XFS here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=60)


def shared_extents(path: Path) -> bool:
    """Whether FIEMAP (through filefrag) reports the file's extents as shared with another file."""
    out = subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True, check=True, timeout=30).stdout
    return "shared" in out


async def test_reflink_clone_on_xfs_shares_blocks_and_stays_private(xfs_dir: Path) -> None:
    data = xfs_dir / "data"
    driver = await choose_driver(data, "auto")
    assert driver.name == "reflink"
    assert (await choose_driver(data, "reflink")).name == "reflink"
    image = data / "images" / "v1.raw"
    image.write_bytes(os.urandom(64 * MiB))
    os.sync()
    free_before = shutil.disk_usage(xfs_dir).free
    clone = data / "writebacks" / "machine-1.raw"
    seen: list[float] = []
    await driver.create(image, clone, progress=seen.append)
    await asyncio.sleep(0)
    os.sync()
    assert sha(clone) == sha(image)
    assert seen[-1] == 100.0
    # 64 MiB cloned for (almost) no space: the blocks are shared, not copied
    assert free_before - shutil.disk_usage(xfs_dir).free < 4 * MiB
    if shutil.which("filefrag"):
        assert shared_extents(clone)
    # writes to the clone are its own
    before = sha(image)
    with open(clone, "r+b") as handle:
        handle.seek(10 * MiB)
        handle.write(b"client wrote here" * 100)
    assert sha(image) == before
    assert sha(clone) != before
    await driver.discard(clone)
    assert not clone.exists()
    assert sorted(p.name for p in (data / "writebacks").iterdir()) == []


async def test_copy_driver_on_xfs_too(xfs_dir: Path) -> None:
    source = sparse_source(xfs_dir / "copy-src.raw")
    await CopyDriver().create(source, xfs_dir / "copy-dst.raw")
    assert sha(xfs_dir / "copy-dst.raw") == sha(source)
    assert allocated(xfs_dir / "copy-dst.raw") < 4 * MiB
