"""core.storage.qemu_img with the real qemu-img on real (small) files."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from core.errors import Invalid
from core.storage import qemu_img
from core.storage.digest import disk_digest, reference_digest
from core.storage.qemu_img import Cancelled, ProgressParser

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) is not installed")

MiB = 1 << 20
# the formats ggnet imports, as qemu-img names them, with options that keep the exact size
SOURCES = {"vpc": ["-o", "force_size=on"], "vhdx": [], "vmdk": [], "qcow2": [], "vdi": [], "raw": []}


def qemu(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_original(path: Path, size: int = 4 * MiB) -> Path:
    """Random data, a long run of zeros, random data at the end: data, holes and the tail all matter."""
    with open(path, "wb") as handle:
        handle.write(os.urandom(MiB))
        handle.seek(size - 512 * 1024)
        handle.write(os.urandom(512 * 1024))
    return path


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One known raw disk and the same disk in every supported format. Misleading extensions on
    purpose: the format must come from the content."""
    root = tmp_path_factory.mktemp("disks")
    original = make_original(root / "original.bin")
    made = {"original": original}
    for fmt, options in SOURCES.items():
        out = root / f"disk-{fmt}.img"
        qemu("convert", "-f", "raw", "-O", fmt, *options, str(original), str(out))
        made[fmt] = out
    return made


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- parsing ----------------------------------------------------------------

# captured from `qemu-img convert -p -f qcow2 -O raw` (qemu-img 7.2) on an 8 MiB image
CAPTURED_PROGRESS = (
    b"    (0.00/100%)\r    (25.00/100%)\r    (50.00/100%)\r    (75.00/100%)\r    (100.00/100%)\r    (100.00/100%)\r\n"
)


@pytest.mark.parametrize("chunk", [1, 3, 7, 4096])
def test_progress_parser_reads_captured_output_in_any_chunking(chunk: int) -> None:
    parser = ProgressParser()
    values: list[float] = []
    for start in range(0, len(CAPTURED_PROGRESS), chunk):
        values += parser.feed(CAPTURED_PROGRESS[start : start + chunk])
    assert values == [0.0, 25.0, 50.0, 75.0, 100.0, 100.0]


def test_progress_parser_handles_fractions_and_ignores_noise() -> None:
    parser = ProgressParser()
    assert parser.feed(b"    (12.34/100%)\rwarning: something\r    (99.") == [12.34]
    assert parser.feed(b"99/100%)\r") == [99.99]


def test_parse_info_backing_chain_and_vmdk_extents() -> None:
    text = """[{"virtual-size": 1024, "filename": "bk.qcow2", "format": "qcow2",
                "backing-filename": "/etc/shadow", "full-backing-filename": "/etc/shadow",
                "format-specific": {"type": "qcow2", "data": {"corrupt": false}}, "dirty-flag": false},
               {"virtual-size": 1024, "filename": "/etc/shadow", "format": "raw"}]"""
    info = qemu_img.parse_info(text)
    assert (info.format, info.virtual_size, info.backing_filename) == ("qcow2", 1024, "/etc/shadow")
    assert [c.filename for c in info.chain] == ["/etc/shadow"]
    vmdk = qemu_img.parse_info(
        '{"virtual-size": 4096, "filename": "a.vmdk", "format": "vmdk", "format-specific": {"type": "vmdk",'
        ' "data": {"extents": [{"filename": "/x/a-flat.vmdk", "format": "FLAT"}]}}}'
    )
    assert vmdk.extents == ("/x/a-flat.vmdk",)
    assert qemu_img.parse_info('{"virtual-size": 1, "filename": "v", "format": "vpc"}').kind == "vhd"


# --- probing and converting every format ----------------------------------------


async def convert(source: Path, dest: Path, **kw: object) -> str:
    """Probe and convert, the way the import does; returns the digest."""
    with await qemu_img.probe(source) as probed:
        return await qemu_img.convert_to_raw(probed, dest, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", list(SOURCES))
async def test_each_format_is_probed_and_converts_to_the_original_bytes(
    fmt: str, disks: dict[str, Path], tmp_path: Path
) -> None:
    seen: list[float] = []
    dest = tmp_path / "served.raw"
    with await qemu_img.probe(disks[fmt]) as probed:
        assert probed.format == fmt
        assert probed.info.virtual_size == disks["original"].stat().st_size
        digest = await qemu_img.convert_to_raw(probed, dest, progress=seen.append)
    assert sha(dest) == sha(disks["original"])
    assert digest == reference_digest(disks["original"].read_bytes()) == disk_digest(dest)
    assert seen and seen[-1] == 100.0
    assert seen == sorted(seen)
    assert leftovers(tmp_path) == ["served.raw"]  # no temporary left beside it
    assert oct(dest.stat().st_mode & 0o777) == "0o600"


async def test_a_fixed_vhd_is_read_as_vhd_not_as_raw_with_its_footer(disks: dict[str, Path], tmp_path: Path) -> None:
    fixed = tmp_path / "fixed.vhd"
    qemu("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size=on", str(disks["original"]), str(fixed))
    assert fixed.stat().st_size == disks["original"].stat().st_size + 512  # the footer only at the end
    await convert(fixed, tmp_path / "out.raw")
    assert sha(tmp_path / "out.raw") == sha(disks["original"])


async def test_conversion_in_windows_covers_every_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Data in many places, windows far smaller than the data: the result is byte for byte the source."""
    source = tmp_path / "scattered.raw"
    size = 37 * MiB + 4096  # not a whole number of leaves
    with open(source, "wb") as handle:
        handle.truncate(size)
        for offset in (0, 3 * MiB - 100, 9 * MiB, 9 * MiB + 1, 20 * MiB + 12345, size - 7):
            handle.seek(offset)
            handle.write(os.urandom(5000 if offset < size - 5000 else 7))
    with await qemu_img.probe(source) as probed:
        windows = qemu_img.plan_windows(probed.extents, probed.info.virtual_size, target=4096)
        assert len(windows) > 3
        assert [w.start for w in windows[1:]] == [w.end for w in windows[:-1]]  # contiguous
        assert windows[0].start == 0 and windows[-1].end == probed.info.virtual_size
        assert all(w.start % (1 << 20) == 0 for w in windows)  # on leaf boundaries
        monkeypatch.setattr(qemu_img, "WINDOW_MIN", 4096)  # the conversion uses many windows too
        digest = await qemu_img.convert_to_raw(probed, tmp_path / "out.raw")
    assert (tmp_path / "out.raw").read_bytes() == source.read_bytes()
    assert digest == reference_digest(source.read_bytes())


def test_windows_hold_about_the_same_data_and_skip_nothing() -> None:
    extents = [(0, 10 * MiB), (100 * MiB, 300 * MiB), (512 * MiB, 513 * MiB)]
    windows = qemu_img.plan_windows(extents, 1 << 30, target=64 * MiB)
    assert [(w.start // MiB, w.end // MiB, w.data // MiB) for w in windows] == [
        (0, 154, 64),
        (154, 218, 64),
        (218, 282, 64),
        (282, 1024, 19),
    ]
    assert qemu_img.plan_windows([], 8 * MiB) == [qemu_img.Window(0, 8 * MiB, 0)]


async def test_info_with_backing_chain(tmp_path: Path) -> None:
    base = make_original(tmp_path / "base.raw", MiB)
    top = tmp_path / "top.qcow2"
    qemu("create", "-f", "qcow2", "-b", str(base), "-F", "raw", str(top))
    info = await qemu_img.info(top, backing_chain=True)
    assert info.backing_filename == str(base)
    assert [(c.filename, c.format) for c in info.chain] == [(str(base), "raw")]


# --- refusals -----------------------------------------------------------------------


async def test_backing_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:$6$secret-hash:19000:0:99999:7:::\n" * 20)
    crafted = tmp_path / "crafted.qcow2"
    qemu("create", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(crafted), "1M")
    with pytest.raises(Invalid, match="backing file") as refused:
        await qemu_img.probe(crafted)
    assert str(secret) in str(refused.value)
    if Path("/etc/shadow").exists():
        shadow = tmp_path / "shadow.qcow2"
        qemu("create", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", "-u", str(shadow), "1M")
        with pytest.raises(Invalid, match="backing file"):
            await qemu_img.probe(shadow)


async def test_conversion_never_reads_a_backing_file(disks: dict[str, Path], tmp_path: Path) -> None:
    """Even if the file gained a backing file after it was probed (rewritten in place), the
    conversion does not open it."""
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"TOP-SECRET" * (MiB // 10))
    crafted = tmp_path / "crafted.qcow2"
    qemu("create", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(crafted))
    upload = tmp_path / "upload.qcow2"
    shutil.copy(disks["qcow2"], upload)
    with await qemu_img.probe(upload) as probed:
        with open(upload, "r+b") as handle:  # same inode, new content: a qcow2 that names the secret
            handle.truncate(0)
            handle.write(crafted.read_bytes())
        assert probed.changed()
        await qemu_img.convert_to_raw(probed, tmp_path / "out.raw")
    assert b"TOP-SECRET" not in (tmp_path / "out.raw").read_bytes()


async def test_qcow2_external_data_file_is_refused(tmp_path: Path) -> None:
    data = make_original(tmp_path / "data.raw", MiB)
    crafted = tmp_path / "crafted.qcow2"
    qemu("create", "-f", "qcow2", "-o", f"data_file={data},data_file_raw=on", str(crafted), "1M")
    with pytest.raises(Invalid, match="another file"):
        await qemu_img.probe(crafted)


def vmdk_descriptor(extent: str, sectors: int = 8) -> str:
    return (
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
        f'RW {sectors} FLAT "{extent}" 0\n\nddb.virtualHWVersion = "4"\n'
    )


async def test_vmdk_extent_outside_its_directory_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret").write_bytes(b"x" * 4096)
    upload = tmp_path / "upload"
    upload.mkdir()
    for extent in (str(outside / "secret"), "../elsewhere/secret"):
        descriptor = upload / "disk.vmdk"
        descriptor.write_text(vmdk_descriptor(extent))
        with pytest.raises(Invalid, match="outside its own directory"):
            await qemu_img.probe(descriptor)


async def test_vmdk_extent_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"x" * 4096)
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "disk-flat.vmdk").symlink_to(tmp_path / "secret")
    (upload / "disk.vmdk").write_text(vmdk_descriptor("disk-flat.vmdk"))
    with pytest.raises(Invalid, match="symbolic link"):
        await qemu_img.probe(upload / "disk.vmdk")


async def test_vmdk_descriptor_with_its_flat_extent_beside_it_imports(disks: dict[str, Path], tmp_path: Path) -> None:
    descriptor = tmp_path / "esxi.vmdk"
    qemu(
        "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicFlat", str(disks["original"]), str(descriptor)
    )
    await convert(descriptor, tmp_path / "out.raw")
    assert sha(tmp_path / "out.raw") == sha(disks["original"])


async def test_vmdk_split_in_extents_imports(disks: dict[str, Path], tmp_path: Path) -> None:
    """Several extents, one in a subdirectory, and a blank line before an extent line (which
    qemu's own parser would read twice): the disk is exactly the extents in order."""
    half = disks["original"].stat().st_size // 2
    data = disks["original"].read_bytes()
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.bin").write_bytes(data[:half])
    (tmp_path / "b.bin").write_bytes(b"\0" * 512 + data[half:])
    descriptor = tmp_path / "split.vmdk"
    descriptor.write_text(
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="twoGbMaxExtentFlat"\n\n'
        f'RW {half // 512} FLAT "parts/a.bin" 0\n\nRW {half // 512} FLAT "b.bin" 1\n'
    )
    await convert(descriptor, tmp_path / "out.raw")
    assert (tmp_path / "out.raw").read_bytes() == data


async def test_protocol_and_json_names_are_plain_file_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Invalid, match="does not exist"):
        await qemu_img.probe('json:{"driver": "file", "filename": "/etc/passwd"}')
    with pytest.raises(Invalid, match="does not exist"):
        await qemu_img.probe("nbd://127.0.0.1:10809/disk")
    # a real file with a protocol-looking name is read as that file, nothing else
    (tmp_path / "nbd:disk").write_bytes(b"plain raw data".ljust(MiB, b"\0"))
    probed = await qemu_img.probe("nbd:disk")
    assert probed.format == "raw" and probed.path == tmp_path / "nbd:disk"


async def test_corrupt_qcow2_is_refused_with_qemu_imgs_message(disks: dict[str, Path], tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.qcow2"
    shutil.copy(disks["qcow2"], damaged)
    with open(damaged, "r+b") as handle:
        header = handle.read(56)
        l1_offset = struct.unpack(">Q", header[40:48])[0]
        handle.seek(l1_offset)
        handle.write(struct.pack(">Q", (1 << 63) | (1 << 40)))  # L1 entry pointing far past the end
    with pytest.raises(Invalid, match="damaged: .*errors were found on the image"):
        await qemu_img.probe(damaged)


async def test_damaged_vhdx_header_is_refused_with_qemu_imgs_message(disks: dict[str, Path], tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.vhdx"
    shutil.copy(disks["vhdx"], damaged)
    with open(damaged, "r+b") as handle:
        handle.seek(64 * 1024)
        handle.write(os.urandom(3 * 64 * 1024))  # both headers and the region table
    with pytest.raises(Invalid, match="No valid VHDX header"):
        await qemu_img.probe(damaged)


async def test_other_formats_and_non_files_are_refused(tmp_path: Path) -> None:
    qed = tmp_path / "disk.qed"
    qemu("create", "-f", "qed", str(qed), "1M")
    with pytest.raises(Invalid, match="qed format"):
        await qemu_img.probe(qed)
    for special in (tmp_path, Path("/dev/zero"), Path("/proc/self/environ")):
        with pytest.raises(Invalid, match="not a regular file"):
            await qemu_img.probe(special)
    for name, size in (("empty", 0), ("shadow", 900), ("almost", MiB - 512)):
        (tmp_path / name).write_bytes(b"x" * size)
        with pytest.raises(Invalid, match="too small to be a disk"):
            await qemu_img.probe(tmp_path / name)


# --- cancellation ---------------------------------------------------------------------


def qemu_img_processes_writing_to(directory: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and cmdline[0].endswith(b"qemu-img") and any(str(directory).encode() in a for a in cmdline):
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def slow_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A qcow2 with 96 MiB of data: long enough that qemu-img is still running at its first progress line."""
    root = tmp_path_factory.mktemp("slow")
    raw = root / "slow.raw"
    with open(raw, "wb") as handle:
        block = os.urandom(MiB)
        for _ in range(96):
            handle.write(block)
    out = root / "slow.qcow2"
    qemu("convert", "-f", "raw", "-O", "qcow2", str(raw), str(out))
    raw.unlink()
    return out


async def test_cancelling_a_conversion_kills_qemu_img_and_leaves_nothing(slow_disk: Path, tmp_path: Path) -> None:
    dest = tmp_path / "served.raw"
    task: asyncio.Task[None] | None = None
    seen: list[float] = []

    def on_progress(value: float) -> None:
        seen.append(value)
        assert task is not None
        task.cancel()  # asyncio cancellation, as a closing console or Ctrl-C does

    task = asyncio.ensure_future(convert(slow_disk, dest, progress=on_progress))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen and seen[0] < 100.0
    assert leftovers(tmp_path) == []
    assert qemu_img_processes_writing_to(tmp_path) == []


async def test_cancel_event_stops_the_conversion(slow_disk: Path, tmp_path: Path) -> None:
    cancel = asyncio.Event()
    with pytest.raises(Cancelled):
        await convert(slow_disk, tmp_path / "served.raw", progress=lambda _v: cancel.set(), cancel=cancel)
    assert leftovers(tmp_path) == []
    assert qemu_img_processes_writing_to(tmp_path) == []


async def test_cancel_at_any_moment_leaves_no_partial_file(tmp_path: Path) -> None:
    """Cancels land at staggered moments, including while qemu-img is still being started
    (a partial file was left in about one run in four before that case was handled)."""
    source = tmp_path / "src.raw"
    source.write_bytes(os.urandom(4 << 20))
    out = tmp_path / "out"
    out.mkdir()
    for attempt in range(40):
        cancel = asyncio.Event()
        asyncio.get_running_loop().call_later(0.0005 * (attempt % 10), cancel.set)
        try:
            await convert(source, out / "disk.raw", cancel=cancel)
        except Cancelled:
            pass
        assert [p.name for p in out.iterdir() if p.name != "disk.raw"] == [], f"attempt {attempt}"
        (out / "disk.raw").unlink(missing_ok=True)


async def test_source_that_changes_after_probe_is_noticed(disks: dict[str, Path], tmp_path: Path) -> None:
    # changed() is what import checks after converting
    copy = tmp_path / "disk.img"
    shutil.copy(disks["qcow2"], copy)
    with await qemu_img.probe(copy) as probed:
        assert not probed.changed()
        with open(copy, "ab") as handle:
            handle.write(b"\0" * 512)
        assert probed.changed()
