"""Open an untrusted disk image so that qemu-img reads the files the operator chose, and nothing else.

The image may come from anywhere, and the directory it lies in may be writable by other
local users. Two kinds of attack follow. A disk image can name other files that qemu-img
would read into our image: a qcow2 backing file or external data file, VMDK extents, a
sparse VMDK pointing to another descriptor. And a user who can write the directory can swap
a file or a directory of the path for a symbolic link (to /etc/shadow, or to a root-only
directory) between ggnet's checks and qemu-img's open. So, before any qemu-img runs:

1. The operator's path is walked one component at a time (``openat`` with O_PATH and
   O_NOFOLLOW). A symbolic link is followed only where nobody else can have made or swapped
   it: in a directory owned by root or by ggnet's user that no one else may write. Anywhere
   else it is refused (the operator can give the path it points to).
2. Only a regular file is accepted. It is looked at through O_PATH first, so a FIFO or a
   device is never opened for reading (a FIFO extent cannot block the import).
3. ggnet identifies the format from the first bytes (the magic numbers of qemu's own
   probes) and always tells qemu-img the format: qemu-img never guesses.
4. ggnet reads the headers that could name other files itself. A backing file, an external
   data file or a descriptor inside a sparse VMDK is refused. A VMDK descriptor (text) is
   parsed here; its extents must lie below the descriptor's directory, and are walked with
   O_NOFOLLOW on every component: no symbolic link at all.
5. qemu-img gets open descriptors only: ``/dev/fd/N``, inherited through ``pass_fds``
   (opening that path reopens the very inode ggnet pinned). A VMDK descriptor is rewritten
   by ggnet into a memfd that names ``/dev/fd/N`` extents, so qemu-img never reads a path
   the untrusted descriptor wrote. The JSON pseudo-filename also says ``"backing": null``.

Swapping any path after that changes nothing: the inodes are pinned. Text quoted from an
input file (a backing file name, an extent name) passes through ``shown``: no terminal
escape sequence reaches an error message or the log.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Invalid
from ..validation import shown

# qemu's driver name -> the name operators know
FORMATS = {"vpc": "vhd", "vhdx": "vhdx", "vmdk": "vmdk", "qcow2": "qcow2", "vdi": "vdi", "raw": "raw"}
# the names disk image files of those formats usually end with (file pickers show these)
DISK_IMAGE_SUFFIXES = frozenset({".vhd", ".vhdx", ".vmdk", ".qcow2", ".qcow", ".vdi", ".raw", ".img", ".bin"})
# formats ggnet recognises only to name them in a refusal (qemu's probes know them too)
_OTHER_MAGIC = (
    (b"QED\x00", "qed"),
    (b"LUKS\xba\xbe", "luks"),
    (b"WithoutFreeSpace", "parallels"),
    (b"WithouFreSpacExt", "parallels"),
    (b"Bochs Virtual HD Image", "bochs"),
    (b"#!/bin/sh\n#V2.0 Format\n", "cloop"),
)
_PSEUDO_FS = ("/proc/", "/sys/", "/dev/")  # kernel views that look like regular files (/proc/kcore)
_MAX_LINKS = 40
_DESCRIPTOR_MAX = (1 << 20) - 1  # what qemu reads of a VMDK descriptor
_VMDK_CREATE_TYPES = {
    "monolithicFlat",
    "vmfs",
    "vmfsSparse",
    "seSparse",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
}
_VMDK_EXTENT_TYPES = {"FLAT", "SPARSE", "VMFS", "VMFSSPARSE", "SESPARSE"}
_EXTENT_LINE = re.compile(rb'^[ \t]*(RW|RDONLY|NOACCESS)[ \t]+(\d+)[ \t]+(\w+)[ \t]+"([^"\r\n]*)"(?:[ \t]+(\d+))?')
_CREATE_TYPE = re.compile(rb'^[ \t]*createType[ \t]*=[ \t]*"([^"\r\n]*)"', re.MULTILINE)
_PARENT_HINT = re.compile(rb'^[ \t]*parentFileNameHint[ \t]*=[ \t]*"([^"\r\n]*)"', re.MULTILINE)

QUOTE_LIMIT = 200  # characters of a name quoted in a message


def quoted(value: bytes | str) -> str:
    """Text from an input file or qemu-img, safe to put in a message or the log."""
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
    return shown(text, QUOTE_LIMIT)


def _refuse(rule: str) -> Invalid:
    return Invalid("file", rule)


# --- walking paths ----------------------------------------------------------------


def _trusted_directory(st: os.stat_result) -> bool:
    """Only root or ggnet's own user can change what a name in this directory points to."""
    return st.st_uid in (0, os.geteuid()) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _open_path(dirfd: int, name: str) -> int:
    return os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)


def _walk(text: str) -> tuple[int, int]:
    """Resolve the operator's path: (O_PATH descriptor of its directory, O_PATH descriptor of
    the file). Symbolic links are followed only in trusted directories."""
    dirfd = os.open("/" if text.startswith("/") else ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    pending = [p for p in reversed(text.split("/")) if p not in ("", ".")]
    if not pending:
        os.close(dirfd)
        raise _refuse(f"{quoted(text)} is not a regular file")
    links = 0
    try:
        while True:
            name = pending.pop()
            if name == "..":
                parent = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
                os.close(dirfd)
                dirfd = parent
                if not pending:
                    raise _refuse(f"{quoted(text)} is not a regular file")
                continue
            fd = _open_path(dirfd, name)
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                os.close(fd)
                if not _trusted_directory(os.fstat(dirfd)):
                    raise _refuse(
                        f"{quoted(text)}: {quoted(name)} is a symbolic link in a directory other users can "
                        "change; give the path it points to"
                    )
                links += 1
                if links > _MAX_LINKS:
                    raise _refuse(f"{quoted(text)}: too many levels of symbolic links")
                target = os.readlink(name, dir_fd=dirfd)
                if target.startswith("/"):
                    os.close(dirfd)
                    dirfd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                pending += [p for p in reversed(target.split("/")) if p not in ("", ".")]
                if not pending:
                    raise _refuse(f"{quoted(text)} is not a regular file")
                continue
            if not pending:
                return dirfd, fd
            if not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise _refuse(f"{quoted(text)} does not exist ({quoted(name)} is not a directory)")
            os.close(dirfd)
            dirfd = fd
    except BaseException:
        os.close(dirfd)
        raise


def _walk_below(dirfd: int, name: str, what: str) -> int:
    """O_PATH descriptor of ``name`` below the directory ``dirfd``: no '..', no absolute path,
    no symbolic link anywhere."""
    parts = name.split("/")
    if not name or name.startswith("/") or ".." in parts:
        raise _refuse(f"the VMDK names {what} outside its own directory ({quoted(name)}); refused")
    parts = [p for p in parts if p not in ("", ".")]
    current = os.dup(dirfd)
    try:
        for index, part in enumerate(parts):
            try:
                fd = _open_path(current, part)
            except FileNotFoundError:
                raise _refuse(f"the VMDK's {what} {quoted(name)} does not exist") from None
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                os.close(fd)
                raise _refuse(f"the VMDK's {what} {quoted(name)} is a symbolic link; refused")
            if index == len(parts) - 1:
                return fd
            if not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise _refuse(f"the VMDK's {what} {quoted(name)} does not exist")
            os.close(current)
            current = fd
        raise _refuse(f"the VMDK names an empty {what}")  # pragma: no cover - parts is never empty here
    finally:
        os.close(current)


def _reopen_regular(pathfd: int, shown_as: str) -> tuple[int, os.stat_result]:
    """Open an O_PATH descriptor for reading if it is a regular file (never opening anything else)."""
    st = os.fstat(pathfd)
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(f"{shown_as} is not a regular file")
    with contextlib.suppress(OSError):
        if os.readlink(f"/proc/self/fd/{pathfd}").startswith(_PSEUDO_FS):
            raise _refuse(f"{shown_as} is not a regular file")
    try:
        # reopening through /proc opens the pinned inode, whatever its name points to by now
        fd = os.open(f"/proc/self/fd/{pathfd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except PermissionError:
        raise _refuse(f"cannot read {shown_as}: permission denied") from None
    return fd, st


# --- the pinned set ------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int  # unlike mtime, nobody can set it back

    @classmethod
    def of(cls, fd: int) -> Identity:
        st = os.fstat(fd)
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class Source:
    """The files of one image, open; what qemu-img is given instead of their names."""

    shown_as: str  # the operator's path, safe to print
    path: Path  # where the kernel says the image file is (for the log and the audit)
    format: str  # qemu's driver name
    top: int  # the image file, or ggnet's rewritten VMDK descriptor (a memfd)
    files: list[int] = field(default_factory=list)  # every descriptor qemu-img may read (top included)
    identities: dict[int, Identity] = field(default_factory=dict)  # of the operator's files
    _owned: list[int] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return FORMATS.get(self.format, self.format)

    def spec(self) -> dict[str, Any]:
        """qemu's JSON description: the format given, the pinned descriptor, never a backing file."""
        return {"driver": self.format, "file": {"driver": "file", "filename": f"/dev/fd/{self.top}"}, "backing": None}

    def changed(self) -> bool:
        """Whether any of its files was written since it was opened."""
        return any(Identity.of(fd) != before for fd, before in self.identities.items())

    def close(self) -> None:
        while self._owned:
            with contextlib.suppress(OSError):
                os.close(self._owned.pop())
        self.files.clear()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_source(path: str | os.PathLike[str]) -> Source:
    """Pin an untrusted image and everything it reads, or refuse it with a sentence."""
    text = os.fspath(path)
    if not text:
        raise _refuse("is required")
    shown_as = quoted(text)
    try:
        dirfd, pathfd = _walk(text)
    except FileNotFoundError:
        raise _refuse(f"{shown_as} does not exist") from None
    except NotADirectoryError:
        raise _refuse(f"{shown_as} does not exist") from None
    except PermissionError:
        raise _refuse(f"cannot read {shown_as}: permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(f"{shown_as}: too many levels of symbolic links") from None
        raise _refuse(f"cannot read {shown_as}: {exc.strerror}") from None
    source = Source(shown_as, Path(text), "raw", -1)
    try:
        try:
            fd, st = _reopen_regular(pathfd, shown_as)
        finally:
            os.close(pathfd)
        source._owned.append(fd)
        with contextlib.suppress(OSError):
            source.path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        source.identities[fd] = Identity.of(fd)
        head = os.pread(fd, 4096, 0)
        tail = os.pread(fd, 512, st.st_size - 512) if st.st_size >= 512 else b""
        kind = sniff(head, tail)
        if kind == "vmdk-descriptor":
            _pin_vmdk_descriptor(source, fd, dirfd)
            return source
        if kind not in FORMATS:
            names = ", ".join(sorted(FORMATS.values()))
            raise _refuse(f"is in {kind} format; ggnet imports {names}")
        if kind == "qcow2":
            _check_qcow2(fd, head)
        if kind == "vmdk":
            _check_sparse_vmdk(fd, head, "image")
        source.format, source.top = kind, fd
        source.files.append(fd)
        return source
    except BaseException:
        source.close()
        raise
    finally:
        os.close(dirfd)


# --- formats --------------------------------------------------------------------------


def sniff(head: bytes, tail: bytes = b"") -> str:
    """The format from the first bytes (and the last 512), as qemu's probes would name it;
    ``vmdk-descriptor`` for a VMDK text descriptor."""
    if head[:4] == b"QFI\xfb":
        return "qcow2" if len(head) >= 8 and struct.unpack(">I", head[4:8])[0] >= 2 else "qcow"
    if head[:4] in (b"KDMV", b"COWD"):
        return "vmdk"
    if head[:8] == b"vhdxfile":
        return "vhdx"
    if head[:8] == b"conectix":
        return "vpc"
    if head[0x40:0x44] == b"\x7f\x10\xda\xbe":
        return "vdi"
    for magic, name in _OTHER_MAGIC:
        if head.startswith(magic):
            return name
    if _looks_like_vmdk_descriptor(head[:2048]):
        return "vmdk-descriptor"
    if tail[:8] == b"conectix":  # a fixed VHD keeps its footer only at the end
        return "vpc"
    return "raw"


def _looks_like_vmdk_descriptor(buf: bytes) -> bool:
    """qemu's vmdk_probe for text, step by step: comment lines and blank lines (of spaces),
    then 'version=1', 2 or 3 at the start of a line."""
    p, end = 0, len(buf)
    while p < end:
        if buf[p] == ord("#"):
            newline = buf.find(b"\n", p)
            p = end if newline < 0 else newline + 1
            continue
        if buf[p] == ord(" "):
            while p < end and buf[p] == ord(" "):
                p += 1
            if p < end and buf[p] == ord("\r"):
                p += 1
            if p == end or buf[p] != ord("\n"):
                return False
            p += 1
            continue
        return buf.startswith(tuple(f"version={v}{eol}".encode() for v in "123" for eol in ("\n", "\r\n")), p)
    return False


def _check_qcow2(fd: int, head: bytes) -> None:
    """A qcow2 names other files in its header: a backing file, an external data file."""
    if len(head) < 72:
        return  # qemu-img will call it damaged
    version, backing_offset, backing_size = struct.unpack(">IQI", head[4:20])
    if backing_offset and backing_size:
        name = os.pread(fd, min(backing_size, 1023), backing_offset)
        raise _refuse(
            f"has a backing file ({quoted(name)}); convert it to a stand-alone image first "
            "(qemu-img convert); images that name other files are refused"
        )
    if version >= 3 and len(head) >= 104:
        incompatible = struct.unpack(">Q", head[72:80])[0]
        if incompatible & 0b100:  # external data file: qemu opens it by the name in a header extension
            data_file = _qcow2_data_file_name(fd, struct.unpack(">I", head[100:104])[0])
            raise _refuse(f"keeps its data in another file ({quoted(data_file or '?')}); refused")


def _qcow2_data_file_name(fd: int, offset: int) -> bytes | None:
    for _ in range(64):
        entry = os.pread(fd, 8, offset)
        if len(entry) < 8:
            return None
        kind, length = struct.unpack(">II", entry)
        if kind == 0:
            return None
        if kind == 0x44415441:
            return os.pread(fd, min(length, 1023), offset + 8)
        offset += 8 + (length + 7) // 8 * 8
    return None


def _check_sparse_vmdk(fd: int, head: bytes, what: str) -> None:
    """A sparse VMDK whose header has no capacity but a descriptor offset is read by qemu as a
    descriptor, whose extents it would open by name."""
    if head[:4] == b"KDMV" and len(head) >= 36:
        capacity, _granularity, descriptor_offset = struct.unpack("<QQQ", head[12:36])
        if capacity == 0 and descriptor_offset:
            raise _refuse(f"the VMDK {what} points to another descriptor; refused")


@dataclass(frozen=True)
class Extent:
    sectors: int
    kind: str
    name: str
    offset: int | None


def parse_descriptor(text: bytes) -> tuple[str, list[Extent]]:
    """createType and extents of a VMDK text descriptor; refuses what ggnet does not import."""
    text = text[:_DESCRIPTOR_MAX].split(b"\x00", 1)[0]
    if _PARENT_HINT.search(text):
        hint = _PARENT_HINT.search(text)
        assert hint is not None
        raise _refuse(
            f"has a backing file ({quoted(hint.group(1))}); convert it to a stand-alone image first "
            "(qemu-img convert); images that name other files are refused"
        )
    found = _CREATE_TYPE.search(text)
    if found is None:
        raise _refuse("is a VMDK descriptor without a createType; refused")
    create_type = found.group(1).decode("ascii", errors="replace")
    if create_type not in _VMDK_CREATE_TYPES:
        raise _refuse(f"is a VMDK of type {quoted(create_type)}, which qemu-img cannot read")
    extents = []
    for line in text.splitlines():
        match = _EXTENT_LINE.match(line)
        if match is None:
            continue
        access, sectors, kind, name, offset = match.groups()
        kind_text = kind.decode("ascii", errors="replace")
        if access != b"RW":
            raise _refuse(f"names a {access.decode()} extent; ggnet imports VMDKs whose extents are all RW")
        if kind_text not in _VMDK_EXTENT_TYPES:
            raise _refuse(f"names an extent of type {quoted(kind_text)}, which ggnet does not import")
        if int(sectors) <= 0:
            raise _refuse(f"names an extent of {int(sectors)} sectors; refused")
        if kind_text == "FLAT" and offset is None:
            raise _refuse("names a FLAT extent without an offset; refused")
        if kind_text != "FLAT" and offset is not None:
            raise _refuse(f"names a {kind_text} extent with an offset; refused")
        try:
            name_text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise _refuse(f"names an extent that is not UTF-8 ({quoted(name)}); refused") from None
        extents.append(Extent(int(sectors), kind_text, name_text, int(offset) if offset is not None else None))
    if not extents:
        raise _refuse("is a VMDK descriptor that names no extent; refused")
    return create_type, extents


def _pin_vmdk_descriptor(source: Source, descriptor: int, dirfd: int) -> None:
    size = os.fstat(descriptor).st_size
    create_type, extents = parse_descriptor(os.pread(descriptor, min(size, _DESCRIPTOR_MAX), 0))
    # no blank line: qemu's sscanf would skip it and read the next extent line twice
    lines = [
        "# Disk DescriptorFile (rewritten by ggnet: the extents are files ggnet opened)",
        "version=1",
        "CID=fffffffe",
        "parentCID=ffffffff",
        f'createType="{create_type}"',
    ]
    for extent in extents:
        pathfd = _walk_below(dirfd, extent.name, "extent")
        try:
            fd, _st = _reopen_regular(pathfd, f"the VMDK's extent {quoted(extent.name)}")
        finally:
            os.close(pathfd)
        source._owned.append(fd)
        source.files.append(fd)
        source.identities[fd] = Identity.of(fd)
        if extent.kind in ("SPARSE", "VMFSSPARSE"):
            _check_sparse_vmdk(fd, os.pread(fd, 64, 0), f"extent {quoted(extent.name)}")
        offset = f" {extent.offset}" if extent.offset is not None else ""
        lines.append(f'RW {extent.sectors} {extent.kind} "/dev/fd/{fd}"{offset}')
    rewritten = os.memfd_create("ggnet-vmdk-descriptor", os.MFD_CLOEXEC)
    source._owned.append(rewritten)
    os.write(rewritten, ("\n".join(lines) + "\n").encode())
    source.format, source.top = "vmdk", rewritten
    source.files.insert(0, rewritten)
