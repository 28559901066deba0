"""The ASGI application `ggnet serve` runs (FastAPI on uvicorn).

``GET /boot/{mac}`` is a PC's boot request: the engine prepares this boot and answers the iPXE
script (see ``core.engine.prepare``). ``GET /healthz`` says whether the engine works, ``GET
/readyz`` whether requests can be served, ``GET /metrics`` is for Prometheus, and the HTTP API
lives under ``/api/v1`` (its OpenAPI document at ``/api/v1/openapi.json``, its page at
``/api/v1/docs``).
"""

from __future__ import annotations

import ipaddress
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import text
from starlette.types import ASGIApp, Receive, Scope, Send

from core.config import split_list
from core.context import Core
from core.engine.engine import Engine
from core.services.api_tokens import signing_key

from . import errors
from .metrics import CONTENT_TYPE, Metrics
from .protect import BodyLimit, BootsFirst, ConcurrencyLimit, TrustedHosts, address_allowed

IPXE_MEDIA_TYPE = "text/plain; charset=utf-8"


def create_app(core: Core, engine: Engine) -> FastAPI:
    from .v1 import PREFIX, UPLOAD_PATH, create_api

    settings = core.settings
    app = FastAPI(
        title="ggnet",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # the API (under /api/v1) documents itself; the boot endpoints are for iPXE
    )
    app.state.core = core
    app.state.engine = engine
    metrics = Metrics(core)
    app.state.metrics = metrics
    errors.install(app)
    boots_first = BootsFirst()

    @app.get("/boot/{mac}", response_class=PlainTextResponse)
    async def boot(mac: str, request: Request) -> PlainTextResponse:
        """A PC asks for its script: this is its boot."""
        client = request.client.host if request.client else None
        started = time.perf_counter()
        with boots_first.boot():
            answer = await engine.boot_request(mac, client)
        metrics.boot_seconds.observe(time.perf_counter() - started)
        return PlainTextResponse(answer.script, media_type=IPXE_MEDIA_TYPE, headers={"Cache-Control": "no-store"})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ok, body = engine.health()
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready to serve: the database answers and the engine has finished its first pass."""
        reasons = []
        try:
            async with core.db.session() as session:
                await session.execute(text("SELECT 1"))
        except Exception as exc:  # any failure to reach the database means "not ready"
            reasons.append(f"database: {type(exc).__name__}")
        if engine.last_report is None:
            reasons.append("the engine has not finished its first pass")
        body = {"ready": not reasons, "reasons": reasons, "server": settings.server_name}
        return JSONResponse(body, status_code=503 if reasons else 200)

    metrics_networks = settings.metrics_allowed

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        if not address_allowed(request.client.host if request.client else None, metrics_networks):
            return errors.error_response(403, "permission_denied", "this address may not read the metrics")
        return Response(await metrics.render(), media_type=CONTENT_TYPE)

    app.mount(PREFIX, create_api(core, engine, signing_key(settings)))

    # outermost last: hosts are checked first, then TLS, then the body size, then the turns
    app.add_middleware(
        ConcurrencyLimit,
        limit=settings.api_concurrency,
        prefixes=(PREFIX, "/metrics"),
        exempt=(UPLOAD_PATH, f"{PREFIX}/images/import"),
        boots_first=boots_first,
    )
    app.add_middleware(BodyLimit, limit=int(settings.api_max_body), exempt=(UPLOAD_PATH,))
    if settings.tls_cert is not None:
        app.add_middleware(RequireTls, prefixes=(PREFIX, "/metrics"))
    hosts = split_list(settings.api_trusted_hosts)
    if hosts:
        # PCs ask for their scripts at the boot address: never refuse them
        extra = [h for h in (settings.boot_host, "127.0.0.1", "localhost") if h]
        app.add_middleware(TrustedHosts, hosts=[*hosts, *extra])
    return app


class RequireTls:
    """With TLS configured, the API and the metrics answer over plain HTTP only to this host
    itself; PCs' boot requests stay plain HTTP (iPXE's stock builds have no TLS)."""

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope.get("scheme") in ("http", "ws"):
            path = scope.get("path", "")
            host = (scope.get("client") or ("", 0))[0]
            if path.startswith(self.prefixes) and not _loopback(host):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                response = errors.error_response(403, "tls_required", "use https:// (GGNET_HTTPS_ADDRESS) for the API")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
