"""Partial files that tell whether their creator is still alive.

Work that produces a big file (an image being imported, a writeback being cloned) writes it
under a hidden temporary name beside the final one, ``.<final name>.<12 hex>.part``, mode
0600, and renames it into place when it is complete. Its creator holds an exclusive
``flock`` on the temporary for as long as it works on it. The kernel drops that lock when
the last descriptor of it closes, that is when the creator dies (``kill -9`` included) and
with it any child that inherited the descriptor (qemu-img dies with ggnet, see qemu_img).
So `remove_orphans` needs no clock: a temporary whose lock it can take belongs to nobody,
and it is removed while that lock is held, so a live creator is never robbed.

    with temps.partial(dest) as part:       # created, 0600, locked
        write into part.fd (or hand /dev/fd/<part.fd> to a child)
        os.fsync(part.fd)
        part.commit(dest)                   # renamed into place, directory synced
    # not committed (an error, a cancel): the temporary is removed

The one race, a sweep between a creator's create and its lock, is closed on the
creator's side: after locking it checks that its file still has its name, and takes
another name if a sweep removed it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..files import fsync_dir

SUFFIX = ".part"
PATTERN = re.compile(r"\A\..+\.[0-9a-f]{12}\.part\Z", re.DOTALL)
_STEM_MAX = 200  # a file name has at most 255 bytes; leave room for the dot, the token and the suffix


@dataclass
class Partial:
    """A locked temporary file; ``fd`` is open for reading and writing."""

    path: Path
    fd: int
    committed: bool = False

    def commit(self, dest: Path) -> None:
        """Rename the temporary over ``dest`` (same directory) and make the rename durable."""
        os.replace(self.path, dest)
        self.committed = True
        fsync_dir(Path(dest).parent)


def temp_path(dest: Path) -> Path:
    """A fresh temporary name beside ``dest`` (the same file system, so the rename is atomic)."""
    stem = dest.name.encode()[:_STEM_MAX].decode(errors="ignore") or "file"
    return dest.parent / f".{stem}.{secrets.token_hex(6)}{SUFFIX}"


def _same_file(path: Path, fd: int) -> bool:
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _create_locked(dest: Path) -> tuple[Path, int]:
    for _ in range(100):
        path = temp_path(dest)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a sweep holds it for an instant
            if _same_file(path, fd):
                return path, fd
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        os.close(fd)  # a sweep removed it between our create and our lock: take another name
    raise OSError(f"could not create a temporary file in {dest.parent}")  # pragma: no cover


@contextlib.contextmanager
def partial(dest: str | Path) -> Iterator[Partial]:
    """A new, empty, locked 0600 temporary beside ``dest``; removed unless committed."""
    path, fd = _create_locked(Path(dest))
    part = Partial(path, fd)
    try:
        yield part
    finally:
        try:
            if not part.committed:  # removed while still locked: no sweep can mistake it for an orphan
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        finally:
            os.close(fd)


def is_temporary(name: str) -> bool:
    return bool(PATTERN.match(name))


def remove_orphans(directory: str | Path) -> list[Path]:
    """Remove the temporaries in ``directory`` whose creator has died; returns what was removed.

    Safe to call at any time from any process: a temporary whose lock is held is left alone."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if not is_temporary(entry.name):
            continue
        path = Path(entry.path)
        try:
            # O_NONBLOCK: a FIFO under such a name cannot stall the sweep; O_NOFOLLOW: nor a symlink divert it
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile, a symlink, or not ours to read
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its creator is alive
            if _same_file(path, fd):  # not renamed into place or replaced meanwhile
                os.unlink(path)
                removed.append(path)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed
