"""core.files on a real file system: modes whatever the umask, symlinks refused, untrusted input
files (devices, FIFOs, sizes), output paths (a real device node made with mknod), contained names,
the log's rotation and the disk reserve."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import files
from core.errors import DiskFull, Invalid, UnsafePath
from core.log import configure_logging, get_logger


@pytest.fixture(params=[0o000, 0o022, 0o077], ids=["umask000", "umask022", "umask077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_directories_and_files_get_exact_modes_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    files.make_dir(tmp_path / "data" / "images")
    assert (mode(tmp_path / "data"), mode(tmp_path / "data" / "images")) == (0o700, 0o700)
    files.public_dir(tmp_path / "srv" / "tftp")
    assert (mode(tmp_path / "srv"), mode(tmp_path / "srv" / "tftp")) == (0o755, 0o755)
    fd, note = files.open_private(tmp_path / "data" / "ggnet.log", os.O_WRONLY | os.O_APPEND)
    os.close(fd)
    assert note is None and mode(tmp_path / "data" / "ggnet.log") == 0o600
    os.close(files.create_private(tmp_path / "data" / "images" / "partial.raw"))
    assert mode(tmp_path / "data" / "images" / "partial.raw") == 0o600
    files.write_output(tmp_path / "out.conf", "x\n")
    assert mode(tmp_path / "out.conf") == 0o644


def test_an_existing_too_open_file_or_directory_is_tightened_and_said_so(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    log = data / "ggnet.log"
    log.write_text("old line\n")
    log.chmod(0o644)
    assert files.private_dir(data) == f"mode of {data} changed from 0755 to 0700"
    fd, note = files.open_private(log, os.O_WRONLY | os.O_APPEND)
    os.close(fd)
    assert note == f"mode of {log} changed from 0644 to 0600"
    assert (mode(data), mode(log), log.read_text()) == (0o700, 0o600, "old line\n")
    log.chmod(0o640)
    assert files.tighten(log) == f"mode of {log} changed from 0640 to 0600"
    assert files.tighten(log) is None and files.tighten(data / "missing") is None


def test_a_symlink_at_a_name_ggnet_creates_is_refused_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    (tmp_path / "data").mkdir()
    planted = tmp_path / "data" / "ggnet.log"
    planted.symlink_to(victim)
    with pytest.raises(UnsafePath, match="symbolic link"):
        files.open_private(planted, os.O_WRONLY | os.O_APPEND)
    with pytest.raises(FileExistsError):  # O_EXCL: a new file only, whatever is at the name
        files.create_private(planted)
    assert files.tighten(planted) is None
    with pytest.raises(Invalid, match="symbolic link"):
        configure_logging(planted)
    assert (victim.read_text(), mode(victim)) == ("precious\n", 0o644)


def test_the_key_is_made_once_0600_and_shared(tmp_path: Path) -> None:
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(files.secret_key(tmp_path / "k"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results[0]) == 32
    assert mode(tmp_path / "k") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]  # no temporary file left


# --- untrusted input ---------------------------------------------------------------------------


def _device_node(path: Path) -> Path:
    """A character device with /dev/null's numbers, made here (needs root, like mknod)."""
    if os.geteuid() != 0:
        pytest.skip("mknod of a character device needs root")
    null = os.stat("/dev/null")
    os.mknod(path, 0o666 | stat.S_IFCHR, null.st_rdev)
    return path


def test_input_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path: Path) -> None:
    (tmp_path / "zero.csv").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo.csv")  # no writer: an ordinary open would wait for ever
    (tmp_path / "dir.csv").mkdir()
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.csv"))
    cases = {
        "zero.csv": "is a character device, not a regular file",
        "fifo.csv": "is a FIFO (named pipe), not a regular file",
        "dir.csv": "is a directory, not a regular file",
        "sock.csv": "is a socket, not a regular file",
        "missing.csv": "does not exist",
    }
    try:
        for name, phrase in cases.items():
            with pytest.raises(Invalid) as caught:
                files.read_input(tmp_path / name)
            assert caught.value.errors == {"file": f"{tmp_path / name} {phrase}"}
    finally:
        sock.close()


def test_input_is_capped_and_its_content_never_quoted(tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    big.write_bytes(b"x" * 2049)
    with pytest.raises(Invalid, match="is larger than 2 KiB"):
        files.read_input(big, limit=2048)
    assert files.read_input(big, limit=4096) == b"x" * 2049
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"GGNET_PASSWORD=hunter2\x00\xff\xfe")
    with pytest.raises(Invalid) as caught:
        files.read_input_text(secret)
    assert caught.value.message == f"file: {secret} is not UTF-8 text" and "hunter2" not in caught.value.message
    # procfs files say size 0: the cap is enforced while reading
    assert len(files.read_input(Path("/proc/self/environ"), limit=1 << 20)) > 0


def test_a_symlink_given_as_the_path_is_followed_but_one_that_appears_later_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "lab.csv").write_text("name,mac\n")
    (tmp_path / "given").symlink_to(real)
    assert files.read_input_text(tmp_path / "given" / "lab.csv") == "name,mac\n"  # the operator's own link
    # a directory swapped for a symlink after the path was resolved: opening refuses it
    resolved = str(tmp_path / "given" / "lab.csv")
    monkeypatch.setattr(files.os.path, "realpath", lambda _path: resolved)
    with pytest.raises(Invalid) as caught:
        files.read_input(tmp_path / "given" / "lab.csv")
    assert "not a directory" in caught.value.message


# --- output paths --------------------------------------------------------------------------------


def test_output_refuses_a_device_node_and_leaves_it(tmp_path: Path) -> None:
    node = _device_node(tmp_path / "full")
    with pytest.raises(Invalid) as caught:
        files.write_output(node, "dhcp-range=...\n")
    assert caught.value.errors == {
        "output": f"{node} is a character device; ggnet writes only to a regular file or a new name"
    }
    assert stat.S_ISCHR(os.lstat(node).st_mode) and os.lstat(node).st_rdev == os.stat("/dev/null").st_rdev
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no temporary file left


def test_output_refuses_fifo_symlink_directory_and_a_missing_directory(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    target = tmp_path / "target"
    target.write_text("mine\n")
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "dir").mkdir()
    for name, phrase in [
        ("fifo", "is a FIFO (named pipe); ggnet writes only to a regular file or a new name"),
        ("link", "is a symbolic link; ggnet writes only to a regular file or a new name"),
        ("dir", "is a directory; ggnet writes only to a regular file or a new name"),
        ("nowhere/x.conf", f"the directory {tmp_path / 'nowhere'} does not exist; create it first"),
    ]:
        with pytest.raises(Invalid) as caught:
            files.write_output(tmp_path / name, "x\n")
        assert phrase in caught.value.errors["output"]
    assert target.read_text() == "mine\n" and not (tmp_path / "nowhere").exists()
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode) and (tmp_path / "link").is_symlink()


def test_output_replaces_a_regular_file_atomically_and_creates_a_new_name(tmp_path: Path) -> None:
    existing = tmp_path / "dnsmasq.conf"
    existing.write_text("old\n")
    existing.chmod(0o600)
    files.write_output(existing, "new\n")
    assert (existing.read_text(), mode(existing)) == ("new\n", 0o644)
    files.write_output(tmp_path / "fresh.conf", b"bytes\n", mode=0o640)
    assert ((tmp_path / "fresh.conf").read_bytes(), mode(tmp_path / "fresh.conf")) == (b"bytes\n", 0o640)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dnsmasq.conf", "fresh.conf"]


# --- names from the database ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../../../../victim", "..", ".", "", "a/b", "/etc/passwd", "x\x00y", ".hidden", " x", "x" * 256, None, 5]
)
def test_contained_refuses_anything_but_a_plain_name(tmp_path: Path, name: object) -> None:
    with pytest.raises(UnsafePath, match="is not a plain file name inside"):
        files.contained(tmp_path, name)


def test_contained_refuses_a_symlink_and_accepts_a_plain_name(tmp_path: Path) -> None:
    (tmp_path / "machine-1.raw").symlink_to("/etc/passwd")
    with pytest.raises(UnsafePath, match="symbolic link"):
        files.contained(tmp_path, "machine-1.raw")
    assert files.contained(tmp_path, "machine-2.raw") == tmp_path / "machine-2.raw"


# --- the log ---------------------------------------------------------------------------------------


def _events(path: Path) -> list[str]:
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def test_the_log_follows_rotation_and_the_new_file_is_private(tmp_path: Path) -> None:
    old = os.umask(0)  # a careless umask: the mode must still be 0600
    try:
        log = tmp_path / "logs" / "ggnet.log"
        configure_logging(log)
        get_logger().info("before rotation")
        assert mode(log) == 0o600 and mode(log.parent) == 0o700
        log.rename(tmp_path / "logs" / "ggnet.log.1")  # what logrotate does (without copytruncate)
        get_logger().info("after rotation")
        assert mode(log) == 0o600
        assert _events(tmp_path / "logs" / "ggnet.log.1") == ["before rotation"]
        assert _events(log) == ["after rotation"]
        log.unlink()  # removed outright: a new one again
        get_logger().info("after removal")
        assert _events(log) == ["after removal"]
    finally:
        os.umask(old)
        configure_logging(None)


def test_a_log_that_cannot_take_a_line_never_stops_the_caller(tmp_path: Path) -> None:
    log = tmp_path / "ggnet.log"
    configure_logging(log)
    try:
        log.unlink()
        log.mkdir()  # the name now leads to a directory: the line is dropped, nothing raises
        get_logger().info("dropped")
        get_logger().warning("dropped too")
    finally:
        configure_logging(None)


# --- the disk reserve --------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "mnt"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], check=True, timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def fill(directory: Path, name: str = "fill") -> None:
    """Write zeros until the file system says it is full."""
    with open(directory / name, "ab", buffering=0) as handle:
        chunk = b"\0" * (1 << 20)
        try:
            while True:
                handle.write(chunk)
        except OSError:
            pass
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass


def test_the_reserve_is_kept_and_given_back_when_the_disk_is_full(small_tmpfs: Path) -> None:
    assert files.keep_reserve(small_tmpfs) is None
    reserve = small_tmpfs / files.RESERVE_NAME
    assert reserve.stat().st_size == files.RESERVE_BYTES and mode(reserve) == 0o600
    fill(small_tmpfs)
    assert files.disk_full(small_tmpfs)
    note = files.keep_reserve(small_tmpfs)
    assert note is not None and "released its 8 MiB reserve" in note
    assert not reserve.exists() and not files.disk_full(small_tmpfs)
    assert files.keep_reserve(small_tmpfs) is None and not reserve.exists()  # not made again while short
    fill(small_tmpfs, "more")
    with pytest.raises(DiskFull, match=f"the disk holding {small_tmpfs} is full"):  # not "bad input"
        files.write_output(small_tmpfs / "x.conf", "x" * 65536)
    assert not (small_tmpfs / "x.conf").exists()
