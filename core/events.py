"""Live events inside one process: the engine (and the audit feed) publish, the HTTP API's
WebSocket clients and the metrics listen.

Publishing never waits: each subscriber has a bounded queue, and one that falls behind is told
so once and dropped (its queue ends with an ``overflow`` event) — a slow client never slows the
engine. Listeners are plain callbacks run inside ``publish`` (metrics counters); they must be quick.

Events are dicts with at least ``type`` (``boot.requested``, ``boot.ready``, ``boot.failed``,
``boot.refused``, ``boot.unregistered``, ``machine.status``, ``machine.login``, ``machine.logout``,
``engine.pass``, ``audit``) and ``at`` (ISO time, UTC).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .log import get_logger
from .models import utcnow

if TYPE_CHECKING:
    from .context import Core

QUEUE_SIZE = 1000
AUDIT_POLL_SECONDS = 1.0
AUDIT_BATCH = 500

Event = dict[str, Any]
Listener = Callable[[Event], None]


class Subscription:
    """One subscriber's queue. ``get`` returns the next event; after an overflow the last event is
    ``{"type": "overflow", ...}`` and nothing more comes."""

    def __init__(self, bus: EventBus, size: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=size + 1)  # +1: room for the overflow notice
        self._size = size
        self.dropped = False

    def offer(self, event: Event) -> None:
        if self.dropped:
            return
        if self._queue.qsize() >= self._size:
            self.dropped = True
            self._queue.put_nowait(
                {"type": "overflow", "at": utcnow().isoformat(), "detail": f"more than {self._size} events behind"}
            )
            self._bus.unsubscribe(self)
            return
        self._queue.put_nowait(event)

    async def get(self) -> Event:
        return await self._queue.get()

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self._listeners: list[Listener] = []

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self, queue_size: int | None = None) -> Subscription:
        sub = Subscription(self, queue_size or self.queue_size)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, type_: str, **data: Any) -> None:
        """Never blocks and never raises (a broken listener is logged, not propagated)."""
        if not self._subscribers and not self._listeners:
            return
        event: Event = {"type": type_, "at": utcnow().isoformat(), **data}
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                get_logger().exception("event listener failed", event_type=type_)
        for sub in list(self._subscribers):
            sub.offer(event)


async def follow_audit(core: Core, interval: float = AUDIT_POLL_SECONDS) -> None:
    """Publish every audit event committed by any process (this one, the CLI, consoles) as an
    ``audit`` event, by polling for ids above the newest one seen (one indexed query a second)."""
    from sqlalchemy import func, select

    from .models import AuditEvent
    from .services.views import AuditView

    bus = core.events
    last: int | None = None
    while True:
        try:
            async with core.db.session() as session:
                if last is None:
                    last = int((await session.execute(select(func.max(AuditEvent.id)))).scalar_one() or 0)
                rows = list(
                    (
                        await session.execute(
                            select(AuditEvent).where(AuditEvent.id > last).order_by(AuditEvent.id).limit(AUDIT_BATCH)
                        )
                    ).scalars()
                )
        except Exception as exc:  # the database is away for a moment: try again next time
            get_logger().warning("audit feed: cannot read the audit trail", error=str(exc))
            rows = []
        for row in rows:
            last = max(last or 0, int(row.id))
            bus.publish("audit", event=AuditView.model_validate(row).to_json())
        await asyncio.sleep(interval)


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
