"""The engine's host-wide lock: only one process converges this server's targets and writebacks.

A lock file in the data directory (flock, released by the kernel when its holder dies, even by
``kill -9``), holding the pid of its owner so a second ``ggnet serve`` can say whom it waits for.
On PostgreSQL also a session advisory lock keyed by the server name, so two hosts that were given
the same GGNET_SERVER_NAME never converge that server's rows at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from ..config import Settings
from ..db import Database

LOCK_NAME = "engine.lock"
WAIT_POLL_SECONDS = 0.5


def lock_path(settings: Settings) -> Path:
    return settings.data_dir / LOCK_NAME


def _advisory_key(server: str) -> int:
    """A signed 64-bit key for pg_advisory_lock, stable for a server name."""
    return int.from_bytes(hashlib.sha256(f"ggnet-engine:{server}".encode()).digest()[:8], "big", signed=True)


def holder_pid(settings: Settings) -> int | None:
    """The pid written by whoever holds (or last held) the lock; None when unknown."""
    try:
        text_ = lock_path(settings).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text_) if text_.isdigit() else None


def is_held(settings: Settings) -> bool:
    """Whether another process holds the lock right now (this one not counted)."""
    path = lock_path(settings)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class EngineLock:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._fd: int | None = None
        self._pg: Any = None  # the connection that holds the advisory lock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _try_file(self) -> bool:
        path = lock_path(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return True

    async def _try_database(self) -> bool:
        if self.db.dialect != "postgresql":
            return True
        conn = await self.db.engine.connect()
        try:
            got = (
                await conn.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": _advisory_key(self.settings.server_name)}
                )
            ).scalar_one()
            await conn.commit()
        except BaseException:
            await conn.close()
            raise
        if not got:
            await conn.close()
            return False
        self._pg = conn
        return True

    async def acquire(self, wait: bool = False, say: Callable[[str], Any] | None = None) -> bool:
        """Take the lock; with ``wait``, keep trying (saying once whom we wait for)."""
        said = False
        while True:
            if self._try_file():
                if await self._try_database():
                    return True
                self._release_file()
                who = f"another host using the server name '{self.settings.server_name}'"
            else:
                pid = holder_pid(self.settings)
                who = f"process {pid}" if pid else "another process"
            if not wait:
                return False
            if say is not None and not said:
                say(f"waiting for the engine lock of {self.settings.server_name}, held by {who}")
                said = True
            await asyncio.sleep(WAIT_POLL_SECONDS)

    def _release_file(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    async def release(self) -> None:
        if self._pg is not None:
            with contextlib.suppress(Exception):
                await self._pg.close()  # ends the session: PostgreSQL drops its advisory locks
            self._pg = None
        self._release_file()
