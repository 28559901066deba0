"""The ASGI application `ggnet serve` runs (FastAPI on uvicorn).

``GET /boot/{mac}`` is a PC's boot request: the engine prepares this boot and answers the iPXE
script (see ``core.engine.prepare``). ``GET /healthz`` says whether the engine works.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from core.context import Core
from core.engine.engine import Engine

IPXE_MEDIA_TYPE = "text/plain; charset=utf-8"


def create_app(core: Core, engine: Engine) -> FastAPI:
    app = FastAPI(
        title="ggnet",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # the API (under /api/v1) documents itself; the boot endpoints are for iPXE
    )
    app.state.core = core
    app.state.engine = engine

    @app.get("/boot/{mac}", response_class=PlainTextResponse)
    async def boot(mac: str, request: Request) -> PlainTextResponse:
        """A PC asks for its script: this is its boot."""
        client = request.client.host if request.client else None
        answer = await engine.boot_request(mac, client)
        return PlainTextResponse(answer.script, media_type=IPXE_MEDIA_TYPE, headers={"Cache-Control": "no-store"})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ok, body = engine.health()
        return JSONResponse(body, status_code=200 if ok else 503)

    return app
