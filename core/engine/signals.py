"""How a change of intent reaches the engine within a second.

Every service that changes desired state bumps one counter in the same transaction
(``bump_intent``); the engine compares it between passes (a cheap read on SQLite). On PostgreSQL
the same transaction also sends ``NOTIFY ggnet_intent``, which wakes a listening engine at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..db import Database
from ..log import get_logger
from ..models import IntentSignal

CHANNEL = "ggnet_intent"
POLL_SECONDS = 0.25


async def bump_intent(session: AsyncSession) -> None:
    """Part of the caller's transaction: the engine will look at the database again."""
    await session.execute(update(IntentSignal).where(IntentSignal.id == 1).values(seq=IntentSignal.seq + 1))
    if (await session.connection()).dialect.name == "postgresql":
        await session.execute(select(_pg_notify()))


def _pg_notify() -> Any:
    from sqlalchemy import func

    return func.pg_notify(CHANNEL, "")


async def intent_seq(db: Database) -> int:
    async with db.session() as session:
        return int((await session.execute(select(IntentSignal.seq).where(IntentSignal.id == 1))).scalar_one())


class IntentWatcher:
    """Wait until intent changes (or a timeout passes, or someone calls ``poke``)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._event = asyncio.Event()
        self._seq: int | None = None
        self._listener: Any = None

    async def start(self) -> None:
        self._seq = await intent_seq(self.db)
        if self.db.dialect == "postgresql":
            try:
                import asyncpg

                url = self.db.engine.url.set(drivername="postgresql")
                self._listener = await asyncpg.connect(url.render_as_string(hide_password=False))
                await self._listener.add_listener(CHANNEL, lambda *_args: self._event.set())
            except Exception as exc:  # polling still works
                get_logger().warning("intent listener unavailable; polling", error=str(exc))
                self._listener = None

    def poke(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """True when intent changed or we were poked; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._event.is_set():
                self._event.clear()
                self._seq = await intent_seq(self.db)
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), min(POLL_SECONDS, remaining))
                continue
            seq = await intent_seq(self.db)
            if seq != self._seq:
                self._seq = seq
                return True

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None
