"""The API's turn-taking in front of the boot requests (ggnet_tui.api.protect), on a bare ASGI app."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import text

from core.db import Database
from ggnet_tui.api.protect import BootsFirst, ConcurrencyLimit


def limited(boots_first: BootsFirst, limit: int = 2) -> tuple[ConcurrencyLimit, list[str], asyncio.Event]:
    started: list[str] = []
    release = asyncio.Event()

    async def api(scope: Any, receive: Any, send: Any) -> None:
        started.append(scope["path"])
        await release.wait()

    return ConcurrencyLimit(api, limit, ("/api/v1",), ("/api/v1/images/upload",), boots_first), started, release


def request(path: str) -> dict[str, Any]:
    return {"type": "http", "path": path}


async def test_no_api_request_starts_while_a_boot_request_is_answered() -> None:
    boots_first = BootsFirst()
    app, started, release = limited(boots_first)
    release.set()
    with boots_first.boot():
        waiting = asyncio.create_task(app(request("/api/v1/machines"), None, None))
        upload = asyncio.create_task(app(request("/api/v1/images/upload"), None, None))  # takes no turn
        await asyncio.sleep(0.05)
        assert started == ["/api/v1/images/upload"]
        with boots_first.boot():  # two boots at once: the API waits for the last
            pass
        await asyncio.sleep(0.05)
        assert not waiting.done()
    await asyncio.wait_for(asyncio.gather(waiting, upload), 5)
    assert started == ["/api/v1/images/upload", "/api/v1/machines"]


async def test_at_most_limit_api_requests_are_worked_on_at_once() -> None:
    app, started, release = limited(BootsFirst(), limit=2)
    tasks = [asyncio.create_task(app(request(f"/api/v1/machines/{i}"), None, None)) for i in range(3)]
    await asyncio.sleep(0.05)
    assert len(started) == 2
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(started) == 3


async def test_an_api_request_under_way_pauses_at_its_next_database_session_while_a_boot_is_answered(
    tmp_path: Path,
) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'pause.db'}")
    boots_first = BootsFirst()
    steps: list[str] = []
    first_done, go_on = asyncio.Event(), asyncio.Event()

    async def api(scope: Any, receive: Any, send: Any) -> None:
        async with database.session() as session:
            await session.execute(text("SELECT 1"))
            async with database.transaction():  # inside a session: never waits (it may hold a lock)
                steps.append("nested")
        steps.append("first")
        first_done.set()
        await go_on.wait()
        async with database.session():
            steps.append("second")

    app = ConcurrencyLimit(api, 1, ("/api/v1",), (), boots_first)
    try:
        under_way = asyncio.create_task(app(request("/api/v1/machines"), None, None))
        await asyncio.wait_for(first_done.wait(), 5)
        with boots_first.boot():
            go_on.set()
            await asyncio.sleep(0.1)
            assert steps == ["nested", "first"]  # the second session waits for the boot
            async with database.session():  # the boot's own sessions (not an API request's) never wait
                pass
        await asyncio.wait_for(under_way, 5)
        assert steps == ["nested", "first", "second"]
    finally:
        await database.dispose()
