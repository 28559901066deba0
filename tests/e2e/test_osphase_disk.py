"""The OS-phase test disks are reproducible: built again from the same packages, byte for byte the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.osphase.disk import OsPhaseDisk, build_game_disk, build_osphase_disk

pytestmark = pytest.mark.e2e


def test_the_system_disk_builds_byte_for_byte_the_same(osphase_disk: OsPhaseDisk, tmp_path: Path) -> None:
    again = build_osphase_disk(tmp_path / "again.img")  # later than the session's build: other clock times
    assert (again.sha256, again.kernel_package) == (osphase_disk.sha256, osphase_disk.kernel_package)
    assert again.path.read_bytes() == osphase_disk.path.read_bytes()


def test_a_game_disk_builds_byte_for_byte_the_same(tmp_path: Path) -> None:
    first = build_game_disk(tmp_path / "first.img", "games01").read_bytes()
    assert build_game_disk(tmp_path / "second.img", "games01").read_bytes() == first
    assert build_game_disk(tmp_path / "other.img", "games02").read_bytes() != first
