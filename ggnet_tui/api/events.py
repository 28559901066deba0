"""`WebSocket /api/v1/events`: live events as JSON text messages, one event per message.

Authentication: an ``Authorization: Bearer <access token>`` header, or (browsers cannot set one)
a first message ``{"access_token": "..."}`` within 10 seconds. Then every event of the engine
(boots, machine status, logins, passes) and every audit event of any process. A client that
falls more than a queue's worth behind gets ``{"type": "overflow"}`` and is disconnected; the
engine never waits for anyone. The login is checked again every few seconds and the socket is
closed when it ends (logout, account disabled) or the access token expires: reconnect with a
fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from core.errors import AuthenticationFailed
from core.models import utcnow
from core.services import api_tokens

router_doc = __doc__
events_router = APIRouter(tags=["events"])

AUTH_TIMEOUT = 10.0
RECHECK_SECONDS = 5.0
CLOSE_UNAUTHENTICATED = 4401  # private-use close codes (4000-4999) in the HTTP status' spirit
CLOSE_TOO_SLOW = 4408


async def _token(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    try:
        first = await asyncio.wait_for(websocket.receive_text(), AUTH_TIMEOUT)
        token = json.loads(first).get("access_token")
    except (TimeoutError, ValueError, AttributeError, KeyError, WebSocketDisconnect, RuntimeError):
        return None
    return token if isinstance(token, str) else None


async def _send(websocket: WebSocket, event: dict[str, Any]) -> None:
    await websocket.send_text(json.dumps(event, default=str))


@events_router.websocket("/events")
async def events(websocket: WebSocket) -> None:
    ctx = websocket.app.state.ctx
    await websocket.accept()
    address = websocket.client.host if websocket.client else "?"
    client = f"api {address}"
    token = await _token(websocket)
    try:
        if token is None:
            raise AuthenticationFailed("send 'Authorization: Bearer <access token>' or {\"access_token\": ...} first")
        actor, claims = await api_tokens.authenticate(ctx.core, ctx.key, token, client)
    except AuthenticationFailed as exc:
        with contextlib.suppress(Exception):
            await _send(websocket, {"type": "error", "code": "unauthenticated", "message": exc.message})
            await websocket.close(CLOSE_UNAUTHENTICATED)
        return
    subscription = ctx.core.events.subscribe()
    await _send(websocket, {"type": "hello", "at": utcnow().isoformat(), "user": actor.username})

    async def until_closed() -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return

    closed = asyncio.ensure_future(until_closed())
    try:
        while not closed.done():
            getter = asyncio.ensure_future(subscription.get())
            done, _ = await asyncio.wait({getter, closed}, timeout=RECHECK_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                if closed.done():
                    break
                try:  # still logged in? (cheap: one indexed read)
                    if claims.expires_at <= utcnow():
                        raise AuthenticationFailed(api_tokens.EXPIRED)
                    await api_tokens.authenticate(ctx.core, ctx.key, token, client)
                except AuthenticationFailed as exc:
                    await _send(websocket, {"type": "error", "code": "unauthenticated", "message": exc.message})
                    await websocket.close(CLOSE_UNAUTHENTICATED)
                    break
                continue
            event = getter.result()
            await _send(websocket, event)
            if event["type"] == "overflow":
                await websocket.close(CLOSE_TOO_SLOW, "too slow: fell behind the events")
                break
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        subscription.close()
        closed.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await closed
