"""Protection around the API: rate limits, a request size limit, and network allow-lists.

The limits live in this process (there is one `ggnet serve` per boot server); the login
throttling and lockout that matter across processes live in the database (``core.auth``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import time
from collections.abc import Iterator
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.db import give_way

from .errors import BodyTooLarge, RateLimited

MAX_KEYS = 100_000  # a flood of distinct addresses or names cannot grow the table without bound


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests, refilled evenly."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[Any, tuple[float, float]] = {}

    def hit(self, key: Any, what: str) -> None:
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / self.rate)
            raise RateLimited(f"too many {what}; try again in {wait} s", wait)
        if len(self._buckets) >= MAX_KEYS and key not in self._buckets:
            self._prune(now)
        self._buckets[key] = (tokens - 1.0, now)

    def _prune(self, now: float) -> None:
        full = self.capacity / self.rate  # a bucket untouched this long is full again: forget it
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full}
        if len(self._buckets) >= MAX_KEYS:
            self._buckets.clear()


def address_allowed(host: str | None, networks: list[Any]) -> bool:
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return any(address in net for net in networks)


class BodyLimit:
    """Refuse request bodies above ``limit`` bytes (by Content-Length, and by counting a chunked one),
    except on ``exempt`` paths (image uploads, which stream to disk with their own limit)."""

    def __init__(self, app: ASGIApp, limit: int, exempt: tuple[str, ...]) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await _send_too_large(send, self.limit)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


async def _send_too_large(send: Send, limit: int) -> None:
    from .errors import error_response

    response = error_response(413, "too_large", BodyTooLarge(limit).message)
    await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class BootsFirst:
    """PCs' boot requests go first: while one is answered, no API request starts its work, and those
    under way pause before their next database session (core.db.give_way). The engine shares this
    process's event loop and its database."""

    def __init__(self) -> None:
        self._booting = 0
        self._clear = asyncio.Event()
        self._clear.set()

    @contextlib.contextmanager
    def boot(self) -> Iterator[None]:
        self._booting += 1
        self._clear.clear()
        try:
            yield
        finally:
            self._booting -= 1
            if not self._booting:
                self._clear.set()

    async def wait(self) -> None:
        await self._clear.wait()


class ConcurrencyLimit:
    """At most ``limit`` API requests are worked on at once; the others wait their turn, and none
    starts while a PC's boot request is answered (``boots_first``): a flood of API requests must not
    slow the boot requests, which never wait here. Long transfers (``exempt``: uploads, imports)
    and WebSockets do not take a turn."""

    def __init__(
        self, app: ASGIApp, limit: int, prefixes: tuple[str, ...], exempt: tuple[str, ...], boots_first: BootsFirst
    ) -> None:
        self.app = app
        self.prefixes = prefixes
        self.exempt = exempt
        self.boots_first = boots_first
        self._turns = asyncio.Semaphore(limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(self.prefixes) or path in self.exempt:
            await self.app(scope, receive, send)
            return
        async with self._turns:
            await self.boots_first.wait()
            # and between its steps: each database session it opens waits for the boots too
            marked = give_way.set(self.boots_first.wait)
            try:
                await self.app(scope, receive, send)
            finally:
                give_way.reset(marked)


class TrustedHosts:
    """Refuse requests whose Host header is not listed (``*.example.org`` covers subdomains),
    in the API's error shape."""

    def __init__(self, app: ASGIApp, hosts: list[str]) -> None:
        self.app = app
        self.hosts = [h.lower() for h in hosts]

    def _allowed(self, host: str) -> bool:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return any(name == h or (h.startswith("*.") and name.endswith(h[1:])) for h in self.hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = next((v.decode("latin-1").lower() for k, v in scope.get("headers", ()) if k == b"host"), "")
            if not self._allowed(host):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                from .errors import error_response

                response = error_response(400, "invalid", "this server does not answer to that host name (Host header)")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
