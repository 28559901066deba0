"""Every file ggnet creates, reads from a user or writes for one: modes, symlinks, sizes, durability.

Modes are set explicitly, whatever the umask:

* the data directory 0700 (0711 when the TFTP root lies inside it: dnsmasq serves TFTP as its own
  unprivileged user and must be able to pass through; nothing in the data directory can be listed,
  and everything secret in it is 0600 or inside a 0700 directory);
* the database (SQLite gives its -wal and -shm files the database's mode), the log, the key file
  and every other private file 0600, private directories (images, writebacks) 0700;
* image and writeback files 0600: the iSCSI target daemons that serve them (LIO in the kernel, tgtd)
  run as root, and qemu-img runs as ggnet's own user, so nobody else needs to read them;
* the TFTP root 0755 with world-readable files: dnsmasq's TFTP serves only world-readable files, and
  the TFTP root holds only what any PC on the boot LAN may fetch anyway.

Symlinks: a path from the settings or the command line is *given*; symlinks in it are followed as
they are when ggnet resolves it, once. The resolved path is then opened one component at a time
without following any symlink, so a symlink swapped in afterwards is refused, never followed. A file
name ggnet creates inside a directory is never followed either (a symlink planted at ggnet.log or at
a temporary name is refused), and an output path must be a regular file or a new name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from .errors import DiskFull, Invalid, UnsafePath
from .validation import shown

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
PUBLIC_DIR = 0o755
PUBLIC_FILE = 0o644

RESERVE_NAME = "ggnet.reserve"
RESERVE_BYTES = 8 << 20
DISK_FULL_BELOW = 1 << 20  # free bytes under which the reserve is given back

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


def kind_of(mode: int) -> str:
    return "a regular file" if stat.S_ISREG(mode) else _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _shown(path: object) -> str:
    return shown(os.fsdecode(path) if isinstance(path, bytes) else str(path), 300)


# --- durability ------------------------------------------------------------------------------


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- opening without following symlinks -----------------------------------------------------


def _open_beneath_root(resolved: str, flags: int, mode: int = PRIVATE_FILE) -> int:
    """Open the absolute, already resolved path ``resolved`` following no symlink anywhere in it:
    each directory is opened from the one before with O_NOFOLLOW, so a component that has become
    a symlink since the path was resolved fails (ENOTDIR or ELOOP) instead of being followed."""
    parts = [p for p in resolved.split("/") if p]
    dir_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        if not parts:
            return os.open("/", flags | os.O_CLOEXEC)
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def _resolved_dir(directory: Path) -> str:
    """A given directory resolved once (its symlinks followed as they are now)."""
    return os.path.realpath(directory)


def _in_dir(path: Path) -> str:
    """``path`` with its directory resolved and its own name kept: the name is never followed."""
    name = Path(path).name
    if name in ("", ".", ".."):
        raise UnsafePath(f"{_shown(path)} does not name a file")
    return os.path.join(_resolved_dir(Path(path).parent), name)


def _symlink_refused(path: Path, exc: OSError) -> UnsafePath | None:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return UnsafePath(f"{_shown(path)} is a symbolic link, or one appeared in its path; ggnet does not follow it")
    return None


# --- directories -----------------------------------------------------------------------------


def make_dir(path: Path, mode: int = PRIVATE_DIR) -> str | None:
    """Create ``path`` (and missing parents) with exactly ``mode``; give an existing directory
    exactly ``mode`` too. Returns a sentence when an existing directory's mode was changed."""
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing[1:]):  # parents get the same mode (the umask may have cut it)
        _mkdir(directory, mode)
    if missing:
        _mkdir(path, mode)
        return None
    fd = _open_beneath_root(_resolved_dir(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        current = stat.S_IMODE(os.fstat(fd).st_mode)
        if current != mode:
            try:
                os.fchmod(fd, mode)
            except OSError:  # not ours to change (another owner, a read-only file system)
                return None
            return f"mode of {_shown(path)} changed from {current:04o} to {mode:04o}"
    finally:
        os.close(fd)
    return None


def _mkdir(directory: Path, mode: int) -> None:
    with contextlib.suppress(FileExistsError):  # another process was quicker: same result
        os.mkdir(directory, mode)
    fd = _open_beneath_root(_resolved_dir(directory), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def private_dir(path: Path) -> str | None:
    return make_dir(path, PRIVATE_DIR)


def public_dir(path: Path) -> None:
    """A directory others must read (the TFTP root): created 0755; an existing one is left as the
    operator set it up (it may be shared with other boot files)."""
    if not Path(path).is_dir():
        make_dir(path, PUBLIC_DIR)


# --- private files ---------------------------------------------------------------------------


def _tighten_fd(fd: int, path: Path, mode: int) -> str | None:
    current = stat.S_IMODE(os.fstat(fd).st_mode)
    wanted = current & mode
    if current != wanted:
        try:
            os.fchmod(fd, wanted)
        except OSError:  # not ours to change (another owner, a read-only file system)
            return None
        return f"mode of {_shown(path)} changed from {current:04o} to {wanted:04o}"
    return None


def open_private(
    path: Path, flags: int = os.O_RDWR, mode: int = PRIVATE_FILE, *, create: bool = True
) -> tuple[int, str | None]:
    """Open (or, with ``create``, create) a file only its owner may read (``mode``, 0600 by default).

    Never follows a symlink at ``path``'s name; refuses anything but a regular file. A new file
    gets exactly ``mode``; an existing one loses any permission bit beyond it. Returns the open
    descriptor and, when an existing file's mode was tightened, a sentence saying so.
    """
    target = _in_dir(path)
    access = flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)
    created = False
    try:
        try:
            fd = _open_beneath_root(target, access | os.O_NONBLOCK | os.O_NOCTTY)
        except FileNotFoundError:
            if not create:
                raise
            fd = _open_beneath_root(target, access | os.O_CREAT | os.O_EXCL | os.O_NOCTTY, mode)
            created = True
    except OSError as exc:
        raise _symlink_refused(path, exc) or exc from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(f"{_shown(path)} is {kind_of(info.st_mode)}, not a regular file")
        os.set_blocking(fd, True)
        if flags & os.O_TRUNC:
            os.ftruncate(fd, 0)
        if created:
            os.fchmod(fd, mode)
            return fd, None
        return fd, _tighten_fd(fd, path, mode)
    except BaseException:
        os.close(fd)
        raise


def create_private(path: Path, mode: int = PRIVATE_FILE) -> int:
    """Create a new file (it must not exist) with exactly ``mode``; never follows a symlink at its name."""
    try:
        fd = _open_beneath_root(_in_dir(path), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOCTTY, mode)
    except OSError as exc:
        raise _symlink_refused(path, exc) or exc from None
    os.fchmod(fd, mode)
    return fd


def tighten(path: Path, mode: int = PRIVATE_FILE) -> str | None:
    """Remove permission bits beyond ``mode`` from an existing regular file; a missing one is fine.
    Returns a sentence when it changed something. Never follows a symlink at ``path``."""
    try:
        fd = _open_beneath_root(_in_dir(path), os.O_PATH)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        current = stat.S_IMODE(info.st_mode)
        if not stat.S_ISREG(info.st_mode) or current & ~mode == 0:
            return None
        os.chmod(f"/proc/self/fd/{fd}", current & mode)  # an O_PATH descriptor cannot fchmod
        return f"mode of {_shown(path)} changed from {current:04o} to {current & mode:04o}"
    except OSError:
        return None  # not ours to change (another owner, a read-only file system): leave it
    finally:
        os.close(fd)


def secret_key(path: Path, size: int = 32) -> bytes:
    """A random key kept in ``path`` (0600), made on first use; two processes racing agree on one."""
    with contextlib.suppress(FileNotFoundError):
        return _read_key(path, size)
    temp = Path(path).with_name(f".{Path(path).name}.{secrets.token_hex(6)}.tmp")
    fd = create_private(temp)
    try:
        os.write(fd, secrets.token_bytes(size))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temp, path, follow_symlinks=False)  # fails if another process made the key first
    except FileExistsError:
        pass
    finally:
        temp.unlink(missing_ok=True)
    return _read_key(path, size)


def _read_key(path: Path, size: int) -> bytes:
    fd, _note = open_private(path, os.O_RDONLY, create=False)
    try:
        key = os.read(fd, size)
    finally:
        os.close(fd)
    if len(key) != size:
        raise UnsafePath(f"{_shown(path)} is damaged (shorter than {size} bytes); remove it and retry")
    return key


# --- what a user hands ggnet to read ---------------------------------------------------------


def read_input(path: Path, *, field: str = "file", limit: int = 16 << 20) -> bytes:
    """Read a file a user named (a CSV import, a settings file).

    Refuses at once anything but a regular file (a FIFO, a device, a directory, a socket) without
    blocking; follows only the symlinks in the path as given; reads at most ``limit`` bytes (a file
    that grows while being read is refused too). Error messages name the path, never its content.
    """
    given = Path(path)
    where = _shown(given)
    resolved = os.path.realpath(given)
    try:
        fd = _open_beneath_root(resolved, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise Invalid(field, f"{where} does not exist") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.realpath(given) != resolved:
            raise Invalid(field, f"{where} changed while being opened (a symbolic link appeared in its path)") from None
        if exc.errno == errno.ENXIO:  # open() of a socket
            raise Invalid(field, f"{where} is a socket, not a regular file") from None
        raise Invalid(field, f"cannot read {where}: {(exc.strerror or str(exc)).lower()}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Invalid(field, f"{where} is {kind_of(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise Invalid(field, f"{where} is larger than {_size(limit)}")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise Invalid(field, f"{where} is larger than {_size(limit)}")
        return b"".join(chunks)
    except OSError as exc:
        raise Invalid(field, f"cannot read {where}: {(exc.strerror or str(exc)).lower()}") from None
    finally:
        os.close(fd)


def read_input_text(path: Path, *, field: str = "file", limit: int = 16 << 20) -> str:
    """``read_input`` decoded as UTF-8 (a byte-order mark is allowed and dropped)."""
    data = read_input(path, field=field, limit=limit)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Invalid(field, f"{_shown(path)} is not UTF-8 text") from None


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} bytes"


# --- what ggnet writes where a user says ------------------------------------------------------


def write_output(path: Path, data: str | bytes, *, mode: int = PUBLIC_FILE, field: str = "output") -> None:
    """Write ``data`` to a path a user named, atomically (readers see the old or the new file).

    ``path`` must be a regular file or a new name in an existing directory: a device node, a
    FIFO, a directory or a symlink at ``path`` is refused and left alone, and no directory is
    created. A name that appears while writing is refused too (it is linked in, not renamed over).
    """
    given = Path(path)
    where = _shown(given)
    name = given.name
    if name in ("", ".", ".."):
        raise Invalid(field, f"{where} does not name a file")
    directory = given.parent
    try:
        dir_fd = _open_beneath_root(_resolved_dir(directory), os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise Invalid(field, f"the directory {_shown(directory)} does not exist; create it first") from None
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            raise Invalid(field, f"{_shown(directory)} is not a directory") from None
        raise _write_error(exc, given, field) from None
    temp = f".ggnet-{secrets.token_hex(8)}.tmp"
    try:
        try:
            existing = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            raise Invalid(
                field,
                f"{where} is {kind_of(existing.st_mode)}; ggnet writes only to a regular file or a new name",
            )
        body = data.encode("utf-8") if isinstance(data, str) else data
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        if existing is not None:
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            try:
                os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            except FileExistsError:
                raise Invalid(field, f"{where} appeared while ggnet was writing it; run the command again") from None
            os.unlink(temp, dir_fd=dir_fd)
        os.fsync(dir_fd)
    except OSError as exc:
        raise _write_error(exc, given, field) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        os.close(dir_fd)


def _write_error(exc: OSError, path: Path, field: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"the disk holding {_shown(path.parent)} is full; nothing was written to {_shown(path)}")
    return Invalid(field, f"cannot write {_shown(path)}: {(exc.strerror or str(exc)).lower()}")


# --- paths built from stored values ----------------------------------------------------------


def contained(directory: Path, name: object) -> Path:
    """``directory / name``, proven to stay inside ``directory``: ``name`` must be a plain file name
    (no '/', no NUL, not '.' or '..', no leading dot, at most 255 bytes) and, if it exists, must not
    be a symlink (which could point anywhere). For every path built from a database value."""
    text = name if isinstance(name, str) else None
    if (
        not text
        or "/" in text
        or "\x00" in text
        or text.startswith(".")
        or len(os.fsencode(text)) > 255
        or text != text.strip()
    ):
        raise UnsafePath(f"'{shown(name)}' is not a plain file name inside {_shown(directory)}")
    path = Path(directory) / text
    if path.is_symlink():
        raise UnsafePath(f"{_shown(path)} is a symbolic link; ggnet does not follow it")
    return path


# --- free space ------------------------------------------------------------------------------


def disk_full(path: Path, below: int = DISK_FULL_BELOW) -> bool:
    """Whether the file system holding ``path`` (or its nearest existing parent) is (nearly) full."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        info = os.statvfs(probe)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < below


def keep_reserve(directory: Path) -> str | None:
    """Keep RESERVE_BYTES of disk in ``directory`` in reserve, and give them back when the disk is
    full, so that the commands that free space (removing images, stopping sessions) can still open
    the database and record what they do. Returns a sentence when the reserve was given back."""
    path = Path(directory) / RESERVE_NAME
    try:
        exists = os.path.lexists(path)
        if exists and disk_full(directory):
            path.unlink()
            return (
                f"the disk holding {_shown(directory)} is full: ggnet released its "
                f"{RESERVE_BYTES >> 20} MiB reserve so that commands that free space still work; free space soon"
            )
        if not exists and not disk_full(directory, 4 * RESERVE_BYTES):
            fd = create_private(path)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            except OSError:
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
    except (OSError, UnsafePath):
        pass  # a reserve is a convenience; never a reason to fail
    return None


# --- operating-system errors as sentences ------------------------------------------------------


def os_error_sentence(exc: OSError) -> str:
    """One sentence for an operating-system error that reached a boundary (never a traceback)."""
    where = _shown(exc.filename) if exc.filename else "a file ggnet needed"
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk holding {where} is full: free space there and try again"
    if code == errno.EROFS:
        return f"{where} is on a read-only file system"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied: {where} (run ggnet as the user that owns its data directory)"
    if code == errno.ENOENT:
        return f"{where} does not exist"
    if code == errno.EIO:
        return f"input/output error on {where}: check the disk"
    if code in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT):
        return f"cannot connect: {(exc.strerror or str(exc)).lower()}"
    return f"{(exc.strerror or type(exc).__name__).lower()}: {where}"
