"""An import into a destination that is (or becomes) full: a sentence about the destination (where,
how much), no partial file left, the input file never blamed. On a small tmpfs mounted for the test."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.auth import Actor
from core.context import Core
from core.errors import Conflict, GgnetError, Invalid
from core.services import images
from core.storage import qemu_img

from .test_images import count, image_files
from .test_qemu_img import MiB

pytestmark = [
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root"),
]

SMALL = 64 * MiB


def mount_small(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL},mode=0700", "tmpfs", str(path)], check=True)


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "small"
    mount_small(path)
    try:
        yield path
    finally:
        unmount(path)


def random_disk(path: Path, data: int) -> Path:
    with open(path, "wb") as handle:
        for _ in range(data // MiB):
            handle.write(os.urandom(MiB))
    return path


def assert_about_the_destination(error: GgnetError, directory: Path) -> None:
    message = str(error)
    assert isinstance(error, Conflict) and not isinstance(error, Invalid), message
    assert "file:" not in message  # never blames the input
    assert str(directory) in message
    assert "full" in message or "not enough free space" in message


async def test_a_destination_that_fills_up_during_the_conversion(small: Path, tmp_path: Path) -> None:
    """Two conversions that each fit, together do not: both pass the free-space check, then the
    file system fills up under them."""
    first, second = random_disk(tmp_path / "a.raw", 40 * MiB), random_disk(tmp_path / "b.raw", 40 * MiB)
    with await qemu_img.probe(first) as a, await qemu_img.probe(second) as b:
        results = await asyncio.gather(
            qemu_img.convert_to_raw(a, small / "a.out"),
            qemu_img.convert_to_raw(b, small / "b.out"),
            return_exceptions=True,
        )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures, results
    for failure in failures:
        assert isinstance(failure, GgnetError), repr(failure)
        assert_about_the_destination(failure, small)
        # filled up under it, or (on a loaded machine the other had written enough by then) refused by
        # the free-space check: either way a sentence about the destination, and no partial file
        assert "is full" in str(failure) or "not enough free space" in str(failure), str(failure)
        assert "needs up to 40.0 MiB" in str(failure)
    for name, source in (("a.out", first), ("b.out", second)):
        if (small / name).exists():  # the one that finished is whole
            assert (small / name).read_bytes() == source.read_bytes()
    assert len(list(small.iterdir())) == len(results) - len(failures)  # no partial file


async def test_a_destination_without_room_is_refused_before_converting(small: Path, tmp_path: Path) -> None:
    big = random_disk(tmp_path / "big.raw", 80 * MiB)
    with await qemu_img.probe(big) as probed, pytest.raises(Conflict) as refused:
        await qemu_img.convert_to_raw(probed, small / "big.out")
    assert_about_the_destination(refused.value, small)
    assert "the image needs up to 80.0 MiB" in str(refused.value)
    assert list(small.iterdir()) == []


async def test_the_import_service_on_a_full_disk(core: Core, admin: Actor, tmp_path: Path) -> None:
    directory = images.images_dir(core.settings)
    mount_small(directory)
    try:
        sources = [random_disk(tmp_path / f"{n}.raw", 40 * MiB) for n in range(2)]
        results = await asyncio.gather(
            *(images.import_image(core, admin, source, name=f"win{n}") for n, source in enumerate(sources)),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures, results
        for failure in failures:
            assert isinstance(failure, GgnetError), repr(failure)
            assert_about_the_destination(failure, directory)
        assert await count(core, images.ImageVersion) == len(results) - len(failures)
        assert len(image_files(core)) == len(results) - len(failures)  # no partial file, no orphan
    finally:
        unmount(directory)
