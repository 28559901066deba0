"""Untrusted images: no file the operator did not choose ends up in an image, even while another
local user swaps files and directories of the path for symbolic links (real qemu-img, real races)."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import Conflict, Invalid
from core.storage import qemu_img, untrusted

from .test_qemu_img import MiB, qemu, vmdk_descriptor

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) is not installed")

SECRET = b"ROOT-ONLY-SECRET"
OPERATOR = b"operator's disk!"
TRIES = 50


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    """A root-only directory (0700) holding a root-only file (0600), as /root or /etc/ssl/private are."""
    directory = tmp_path / "root-only"
    directory.mkdir(mode=0o700)
    for name in ("secret.raw", "disk.img", "disk-flat.vmdk"):
        path = directory / name
        path.write_bytes(SECRET * (MiB // len(SECRET)))
        path.chmod(0o600)
    directory.chmod(0o700)
    return directory


@pytest.fixture
def upload(tmp_path: Path) -> Path:
    """A directory other local users can write, where the operator's image waits to be imported."""
    directory = tmp_path / "upload"
    directory.mkdir()
    directory.chmod(0o777)
    return directory


def operator_data(path: Path) -> Path:
    path.write_bytes(OPERATOR * (MiB // len(OPERATOR)))
    return path


# A local attacker in its own process (no GIL shared with the import): flips a path between the
# operator's file or directory and a symbolic link to the secret, as fast as it can, until stopped.
ATTACKER = r"""
import os, random, signal, sys, time
mode, path, good, evil = sys.argv[1:5]
flips = 0
stop = False
def done(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, done)
print("ready", flush=True)
while not stop:
    if mode == "file":  # atomic: the name always exists, a link to the operator's file or to the secret
        temporary = path + ".swap"
        if flips % 2:
            os.link(good, temporary)
        else:
            os.symlink(evil, temporary)
        os.replace(temporary, path)
    elif flips % 2 == 0:  # a directory: moved aside, a symlink to the secret directory in its place
        os.rename(path, good)
        os.symlink(evil, path)
    else:
        os.unlink(path)
        os.rename(good, path)
    flips += 1
    time.sleep(random.uniform(0, 0.0005))
print(flips, flush=True)
"""


class Attacker:
    def __init__(self, mode: str, path: Path, good: Path, evil: Path) -> None:
        self.args = [sys.executable, "-c", ATTACKER, mode, str(path), str(good), str(evil)]
        self.flips = 0

    def __enter__(self) -> Attacker:
        self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        out, _ = self.process.communicate(timeout=60)
        self.flips = int(out.strip() or 0)


async def race(source: Path, dest: Path) -> list[str]:
    """Import TRIES times while the attacker flips; every result is checked for the secret."""
    outcomes = []
    for _ in range(TRIES):
        await asyncio.sleep(random.uniform(0, 0.003))  # start at a random phase of the attacker's flips
        outcomes.append(await import_once(source, dest))
        assert_no_leak(dest)
    return outcomes


async def import_once(source: Path, dest: Path) -> str:
    """'refused' or 'imported' (then the output must be the operator's data)."""
    dest.unlink(missing_ok=True)
    try:
        with await qemu_img.probe(source) as probed:
            await qemu_img.convert_to_raw(probed, dest)
    except (Invalid, Conflict):
        assert not dest.exists()
        return "refused"
    return "imported"


def assert_no_leak(dest: Path) -> None:
    if dest.exists():
        content = dest.read_bytes()
        assert SECRET not in content
        assert content == OPERATOR * (MiB // len(OPERATOR))


async def test_extent_swapped_for_a_symlink_to_a_root_only_file_never_leaks(
    upload: Path, secret_dir: Path, tmp_path: Path
) -> None:
    data = operator_data(upload / ".data")
    extent = upload / "disk-flat.vmdk"
    os.link(data, extent)
    (upload / "disk.vmdk").write_text(vmdk_descriptor("disk-flat.vmdk", MiB // 512))
    with Attacker("file", extent, data, secret_dir / "secret.raw") as attacker:
        outcomes = await race(upload / "disk.vmdk", tmp_path / "out.raw")
    assert attacker.flips >= TRIES and "refused" in outcomes


async def test_source_directory_swapped_for_a_symlink_to_a_root_only_directory_never_leaks(
    upload: Path, secret_dir: Path, tmp_path: Path
) -> None:
    real = upload / "sub"
    real.mkdir()
    operator_data(real / "disk.img")
    with Attacker("directory", real, upload / ".stash", secret_dir) as attacker:
        outcomes = await race(real / "disk.img", tmp_path / "out.raw")
    assert attacker.flips >= TRIES and "refused" in outcomes


async def test_the_image_file_swapped_for_a_symlink_never_leaks(upload: Path, secret_dir: Path, tmp_path: Path) -> None:
    data = operator_data(upload / ".data")
    target = upload / "disk.img"
    os.link(data, target)
    with Attacker("file", target, data, secret_dir / "disk.img") as attacker:
        outcomes = await race(target, tmp_path / "out.raw")
    assert attacker.flips >= TRIES and "refused" in outcomes


async def test_without_an_attacker_the_same_imports_succeed(upload: Path, tmp_path: Path) -> None:
    """The control for the races above: what they refuse is the attack, not the layout."""
    data = operator_data(upload / ".data")
    os.link(data, upload / "disk-flat.vmdk")
    (upload / "disk.vmdk").write_text(vmdk_descriptor("disk-flat.vmdk", MiB // 512))
    (upload / "sub").mkdir()
    operator_data(upload / "sub" / "disk.img")
    for source in (upload / "disk.vmdk", upload / "sub" / "disk.img", upload / ".data"):
        assert await import_once(source, tmp_path / "out.raw") == "imported"
        assert_no_leak(tmp_path / "out.raw")


async def test_symlinks_are_followed_only_where_no_other_user_can_change_them(upload: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    disk = operator_data(mine / "disk.img")
    (mine / "latest.img").symlink_to("disk.img")
    (tmp_path / "link-to-mine").symlink_to(mine)
    for path in (mine / "latest.img", tmp_path / "link-to-mine" / "disk.img"):
        await import_once(path, tmp_path / "out.raw")
        assert (tmp_path / "out.raw").read_bytes() == disk.read_bytes()
    (upload / "latest.img").symlink_to(disk)  # in a directory others can write: it could be swapped any time
    with pytest.raises(Invalid, match="latest.img is a symbolic link in a directory other users can change"):
        await qemu_img.probe(upload / "latest.img")
    (upload / "dir").symlink_to(mine)
    with pytest.raises(Invalid, match="symbolic link"):
        await qemu_img.probe(upload / "dir" / "disk.img")


@pytest.mark.timeout(120)
async def test_a_fifo_extent_is_refused_without_opening_it(upload: Path) -> None:
    """qemu-img info blocked 60 s on a FIFO extent; ggnet looks at it through O_PATH and says no."""
    os.mkfifo(upload / "disk-flat.vmdk")
    (upload / "disk.vmdk").write_text(vmdk_descriptor("disk-flat.vmdk"))
    with pytest.raises(Invalid, match="extent disk-flat.vmdk is not a regular file"):
        await qemu_img.probe(upload / "disk.vmdk")
    os.mkfifo(upload / "image.fifo")
    with pytest.raises(Invalid, match="not a regular file"):
        await qemu_img.probe(upload / "image.fifo")


async def test_extents_must_be_regular_files_below_the_descriptor_without_symlinks(
    upload: Path, tmp_path: Path
) -> None:
    (upload / "sub").mkdir()
    operator_data(upload / "sub" / "flat")
    (upload / "linkdir").symlink_to(upload / "sub")
    cases = {
        "linkdir/flat": "symbolic link",
        "/etc/passwd": "outside its own directory",
        "sub/../sub/flat": "outside its own directory",
        "nope/flat": "does not exist",
        "sub": "not a regular file",
    }
    for name, phrase in cases.items():
        (upload / "disk.vmdk").write_text(vmdk_descriptor(name, MiB // 512))
        with pytest.raises(Invalid, match=phrase):
            await qemu_img.probe(upload / "disk.vmdk")
    (upload / "disk.vmdk").write_text(vmdk_descriptor("sub/flat", MiB // 512))
    await import_once(upload / "disk.vmdk", tmp_path / "out.raw")
    assert (tmp_path / "out.raw").read_bytes() == (upload / "sub" / "flat").read_bytes()


async def test_descriptors_that_name_more_than_extents_are_refused_before_qemu_img(
    upload: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator_data(upload / "flat")
    started: list[list[str]] = []
    spawn = qemu_img._spawn

    async def recording(args: list[str], *rest: object, **kw: object) -> object:
        started.append(args)
        return await spawn(args, *rest, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(qemu_img, "_spawn", recording)
    base = vmdk_descriptor("flat", MiB // 512)
    crafted = {
        "parent": (base + 'parentFileNameHint="/etc/shadow"\n', "has a backing file"),
        "read-only extent": (base.replace('RW 2048 FLAT "flat" 0', 'RDONLY 2048 FLAT "flat" 0'), "RDONLY extent"),
        "device extent": (base.replace('RW 2048 FLAT "flat" 0', 'RW 2048 VMFSRDM "flat"'), "type VMFSRDM"),
        "no extent": (base.replace('RW 2048 FLAT "flat" 0', ""), "names no extent"),
        "unknown type": (base.replace("monolithicFlat", "custom"), "type custom"),
    }
    for name, (text, phrase) in crafted.items():
        (upload / "disk.vmdk").write_text(text)
        with pytest.raises(Invalid, match=phrase):
            await qemu_img.probe(upload / "disk.vmdk")
        assert started == [], name
    # a sparse VMDK whose header points to a descriptor (whose extents qemu would open by name)
    sparse = upload / "sparse.vmdk"
    qemu("create", "-f", "vmdk", str(sparse), "1M")
    with open(sparse, "r+b") as handle:
        handle.seek(12)
        handle.write((0).to_bytes(8, "little"))  # capacity 0: qemu reads the embedded descriptor instead
    with pytest.raises(Invalid, match="points to another descriptor"):
        await qemu_img.probe(sparse)
    assert started == []


async def test_escape_sequences_from_an_image_never_reach_a_message(upload: Path) -> None:
    evil = "\x1b]0;owned\x07\x1b[2J\x1b[31mdisk\r\n"
    (upload / "disk.vmdk").write_bytes(vmdk_descriptor(f"{evil[:-2]}-flat.vmdk").encode())
    with pytest.raises(Invalid) as refused:
        await qemu_img.probe(upload / "disk.vmdk")
    (upload / "backed.qcow2").unlink(missing_ok=True)
    qemu("create", "-f", "qcow2", "-u", "-b", f"/tmp/{evil[:-2]}", "-F", "raw", str(upload / "backed.qcow2"), "1M")
    with pytest.raises(Invalid) as backed:
        await qemu_img.probe(upload / "backed.qcow2")
    for message in (str(refused.value), str(backed.value)):
        assert not any(ch in message for ch in "\x1b\x07\r\n"), repr(message)
        assert "\\x1b" in message  # shown, escaped


def test_sniffing_follows_qemus_probes() -> None:
    assert untrusted.sniff(b"QFI\xfb\x00\x00\x00\x03") == "qcow2"
    assert untrusted.sniff(b"QFI\xfb\x00\x00\x00\x01") == "qcow"
    assert untrusted.sniff(b"KDMV") == untrusted.sniff(b"COWD") == "vmdk"
    assert untrusted.sniff(b"vhdxfile") == "vhdx"
    assert untrusted.sniff(b"conectix") == "vpc"
    assert untrusted.sniff(b"\0" * 0x40 + b"\x7f\x10\xda\xbe") == "vdi"
    assert untrusted.sniff(b"QED\0") == "qed"
    assert untrusted.sniff(b"# a comment\n  \nversion=1\nCID=1\n") == "vmdk-descriptor"
    assert untrusted.sniff(b"\nversion=1\n") == "raw"  # qemu's probe needs blank lines to hold a space
    assert untrusted.sniff(b"\0" * 4096, b"conectix") == "vpc"  # a fixed VHD: footer only at the end
    assert untrusted.sniff(b"\0" * 4096) == "raw"


def test_a_pinned_source_keeps_reading_the_file_it_opened(tmp_path: Path) -> None:
    first = operator_data(tmp_path / "disk.img")
    with untrusted.open_source(first) as source:
        fd = source.top
        os.rename(first, tmp_path / "moved")
        (tmp_path / "disk.img").write_bytes(SECRET * 100)
        assert os.pread(fd, len(OPERATOR), 0) == OPERATOR
        assert stat.S_ISREG(os.fstat(fd).st_mode)
    with pytest.raises(OSError):
        os.fstat(fd)  # closed with the source
