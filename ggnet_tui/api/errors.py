"""One JSON error shape for the whole API, with HTTP status codes mapped from core's errors:
``{"error": {"code": "...", "message": "<core's sentence>", "fields": {"field": "rule"}}}``."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import (
    AccountLocked,
    AuthenticationFailed,
    BackendUnavailable,
    Conflict,
    GgnetError,
    Invalid,
    NotFound,
    PermissionDenied,
    SchemaTooNew,
    StaleEdit,
)
from core.log import get_logger


class ErrorDetail(BaseModel):
    code: str = Field(description="invalid, unauthenticated, permission_denied, not_found, conflict, stale_edit, ...")
    message: str = Field(description="one sentence a person can act on (the same as the console and the CLI say)")
    fields: dict[str, str] = Field(default_factory=dict, description="for invalid input: each field and the rule")


class ErrorBody(BaseModel):
    error: ErrorDetail


class RateLimited(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = max(1, retry_after)


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes (GGNET_API_MAX_BODY)")
        self.message = str(self)


# most specific first
_MAPPING: list[tuple[type[GgnetError], int, str]] = [
    (AccountLocked, 423, "locked"),
    (AuthenticationFailed, 401, "unauthenticated"),
    (PermissionDenied, 403, "permission_denied"),
    (NotFound, 404, "not_found"),
    (StaleEdit, 409, "stale_edit"),
    (Conflict, 409, "conflict"),
    (Invalid, 400, "invalid"),
    (BackendUnavailable, 503, "unavailable"),
    (SchemaTooNew, 503, "unavailable"),
]

_HTTP_CODES = {
    400: "invalid",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}

# documented on every operation (the OpenAPI page shows what each can answer)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "invalid input: the fields and the rules they broke"),
        (401, "not logged in, or the token expired or was revoked"),
        (403, "the account's role does not allow this"),
        (404, "no such object"),
        (409, "conflict, or the object changed since it was read (stale row_version)"),
        (413, "request body too large"),
        (423, "the account is locked after failed logins (see Retry-After)"),
        (429, "too many requests (see Retry-After)"),
        (503, "the database or the iSCSI target stack is unavailable"),
    )
}


def error_response(
    status: int, code: str, message: str, fields: dict[str, str] | None = None, **headers: str
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "fields": fields or {}}}
    return JSONResponse(body, status_code=status, headers=headers or None)


def from_core(exc: GgnetError) -> JSONResponse:
    for cls, status, code in _MAPPING:
        if isinstance(exc, cls):
            headers: dict[str, str] = {}
            if isinstance(exc, AccountLocked):
                headers["Retry-After"] = str(max(1, exc.retry_after_seconds))
            elif status == 401:
                headers["WWW-Authenticate"] = "Bearer"
            fields = dict(exc.errors) if isinstance(exc, Invalid) else None
            return error_response(status, code, exc.message, fields, **headers)
    return error_response(400, "refused", exc.message)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(GgnetError)
    async def _core(_request: Request, exc: GgnetError) -> JSONResponse:
        return from_core(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        fields: dict[str, str] = {}
        for error in exc.errors():
            fields.setdefault(_field_name(tuple(error.get("loc", ()))), str(error.get("msg", "is invalid")))
        message = "; ".join(f"{k}: {v}" for k, v in fields.items())
        return error_response(400, "invalid", message, fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = str(exc.detail) if exc.detail else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint (see /api/v1/docs)"
        return error_response(exc.status_code, code, message, **(exc.headers or {}))

    @app.exception_handler(RateLimited)
    async def _limited(_request: Request, exc: RateLimited) -> JSONResponse:
        return error_response(429, "rate_limited", exc.message, **{"Retry-After": str(exc.retry_after)})

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_request: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_response(413, "too_large", exc.message)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:8]
        get_logger("ggnet.api").error("unexpected error", incident=incident, exc_info=exc)
        return error_response(500, "internal", f"unexpected error (incident {incident}, details in the server's log)")
