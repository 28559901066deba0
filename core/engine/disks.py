"""Writeback files: their names, where they live, and making and removing them.

Names are generated (``wb-<machine id>-<disk>-<random>.raw``; ``machine-<id>.raw`` from before the
engine), never typed by anyone, and every path built from a database value is checked to stay a
plain file name inside the writebacks directory: a tampered row cannot point the engine at
another file to serve or delete.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from ..config import Settings
from ..errors import Conflict
from ..storage.writeback import writeback_dir

OWNED_NAME = re.compile(r"^(machine-\d+|wb-\d+-(system|game)-[0-9a-f]{8})\.raw\Z")


def new_file_name(machine_id: int, disk: str) -> str:
    return f"wb-{int(machine_id)}-{disk}-{secrets.token_hex(4)}.raw"


def writeback_file(settings: Settings, file_name: str) -> Path:
    """The path of a writeback named in the database, refused unless it is one of ggnet's names and
    stays a plain file inside the writebacks directory (no symlink out of it)."""
    from ..errors import UnsafePath
    from ..files import contained

    name = str(file_name)
    if not OWNED_NAME.match(name):
        raise Conflict(f"a writeback row names an unusable file ({name[:60]!r}); refusing to touch it")
    try:
        return contained(writeback_dir(settings), name)
    except UnsafePath as exc:
        raise Conflict(f"writeback {name}: {exc.message}; refusing to touch it") from None


def allocated_bytes(path: Path) -> int | None:
    """What a (sparse) writeback really takes on disk."""
    try:
        return os.stat(path, follow_symlinks=False).st_blocks * 512
    except OSError:
        return None


def free_bytes(settings: Settings) -> int | None:
    try:
        st = os.statvfs(writeback_dir(settings) if writeback_dir(settings).is_dir() else settings.data_dir)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
