"""The HTTP API, version 1 (mounted at /api/v1 by ``app.create_app``).

Every endpoint calls the same core service as the console and the CLI: the permission check,
the audit event (with the client's address) and the error sentences are core's. This module only
translates HTTP to service calls and back; it holds no business rule. Each operation's
``x-permission`` in the OpenAPI document names the permission core checks (documentation; core
enforces it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from core.auth import PERMISSIONS, Actor, Permission
from core.context import Core
from core.engine import disks
from core.engine.engine import Engine
from core.errors import AuthenticationFailed, Invalid
from core.services import api_tokens, audit, boots, images, machines, targets, users, wol
from core.services.boots import DiscoveredView, EngineView, RequestView
from core.services.images import ImageVersionView, ImageView
from core.services.targets import TargetView
from core.services.views import MachineView, UserView

from . import errors, schemas
from .errors import ERROR_RESPONSES
from .protect import RateLimiter

PREFIX = "/api/v1"
UPLOAD_PATH = f"{PREFIX}/images/upload"
UPLOAD_DIR = "uploads"
UPLOAD_BUFFER = 4 << 20
ID = Annotated[int, Path(ge=1, le=2**31 - 1)]


@dataclass
class ApiContext:
    core: Core
    engine: Engine
    key: bytes
    login_by_address: RateLimiter
    login_by_account: RateLimiter
    per_token: RateLimiter


def json_out(model: BaseModel, status_code: int = 200) -> Response:
    """Serialise with pydantic-core directly (the response_model documents the shape)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def needs(permission: Permission | str) -> dict[str, Any]:
    value = permission.value if isinstance(permission, Permission) else permission
    return {"x-permission": value}


def _ctx(request: Request) -> ApiContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


def client_label(request: Request) -> str:
    """How the audit trail names where a request came from."""
    return f"api {request.client.host if request.client else '?'}"


_bearer = HTTPBearer(auto_error=False, description="the access token from POST /auth/login")


async def current_actor(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Actor:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthenticationFailed(
            "log in first: send 'Authorization: Bearer <access token>' (POST /api/v1/auth/login)"
        )
    ctx = _ctx(request)
    actor, claims = await api_tokens.authenticate(ctx.core, ctx.key, credentials.credentials, client_label(request))
    ctx.per_token.hit(claims.family, "requests with this token")
    request.state.claims = claims
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]
Ctx = Annotated[ApiContext, Depends(_ctx)]


def _tokens(tokens: api_tokens.Tokens) -> schemas.TokenResponse:
    return schemas.TokenResponse(
        access_token=tokens.access_token,
        expires_in=tokens.expires_in,
        refresh_token=tokens.refresh_token,
        refresh_expires_in=tokens.refresh_expires_in,
        username=tokens.user.username,
        role=tokens.user.role.value,
    )


def _results(results: list[Any]) -> list[schemas.BootResult]:
    return [schemas.BootResult(machine=r.machine, ok=r.ok, message=r.message) for r in results]


def _utc(value: datetime | None, field: str) -> datetime | None:
    """Times without a zone are UTC."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise Invalid(field, "must be a time between the years 1 and 9999") from None


# --- auth ---------------------------------------------------------------------------------

auth_router = APIRouter(prefix="/auth", tags=["auth"])


@auth_router.post("/login", response_model=schemas.TokenResponse, openapi_extra=needs("none"))
async def login(body: schemas.LoginRequest, request: Request, ctx: Ctx) -> Response:
    """Log in: an access token (short-lived) and a refresh token. Failed logins are throttled and
    lock the account exactly as in the console (shared through the database)."""
    address = request.client.host if request.client else "?"
    ctx.login_by_address.hit(address, "login attempts from this address")
    ctx.login_by_account.hit(str(body.username).strip().lower()[:64], "login attempts for this account")
    tokens = await api_tokens.login(ctx.core, ctx.key, body.username, body.password, client_label(request))
    return json_out(_tokens(tokens))


@auth_router.post("/refresh", response_model=schemas.TokenResponse, openapi_extra=needs("none"))
async def refresh(body: schemas.RefreshRequest, request: Request, ctx: Ctx) -> Response:
    """Use the refresh token up and get the next pair. A refresh token used twice ends the login."""
    address = request.client.host if request.client else "?"
    ctx.login_by_address.hit(("refresh", address), "refreshes from this address")
    tokens = await api_tokens.refresh(ctx.core, ctx.key, body.refresh_token, client_label(request))
    return json_out(_tokens(tokens))


@auth_router.post("/logout", status_code=204, openapi_extra=needs("login"))
async def logout(actor: CurrentActor, request: Request, ctx: Ctx) -> Response:
    """End this login: its access and refresh tokens stop working at once."""
    await api_tokens.logout(ctx.core, actor, request.state.claims.family)
    return Response(status_code=204)


@auth_router.get("/me", response_model=schemas.Me, openapi_extra=needs("login"))
async def me(actor: CurrentActor) -> Response:
    permissions = sorted(p.value for p in PERMISSIONS[actor.role])
    return json_out(schemas.Me(username=actor.username, role=actor.role.value, permissions=permissions))


# --- users ----------------------------------------------------------------------------------

users_router = APIRouter(prefix="/users", tags=["users"])


class UserList(BaseModel):
    items: list[UserView]


@users_router.get("", response_model=UserList, openapi_extra=needs(Permission.READ))
async def list_users(actor: CurrentActor, ctx: Ctx) -> Response:
    return json_out(UserList(items=await users.list_users(ctx.core, actor)))


@users_router.get("/{username}", response_model=UserView, openapi_extra=needs(Permission.READ))
async def get_user(username: str, actor: CurrentActor, ctx: Ctx) -> Response:
    return json_out(await users.get_user(ctx.core, actor, username))


@users_router.post("", response_model=UserView, status_code=201, openapi_extra=needs(Permission.MANAGE_USERS))
async def add_user(body: schemas.NewUser, actor: CurrentActor, ctx: Ctx) -> Response:
    return json_out(await users.add_user(ctx.core, actor, body.username, body.role, body.password), 201)


@users_router.put("/{username}/role", response_model=UserView, openapi_extra=needs(Permission.MANAGE_USERS))
async def set_role(username: str, body: schemas.RoleChange, actor: CurrentActor, ctx: Ctx) -> Response:
    return json_out(await users.set_role(ctx.core, actor, username, body.role, body.row_version))


@users_router.put(
    "/{username}/password",
    response_model=UserView,
    openapi_extra=needs(Permission.MANAGE_USERS) | {"x-permission-own": Permission.READ.value},
)
async def set_password(username: str, body: schemas.PasswordChange, actor: CurrentActor, ctx: Ctx) -> Response:
    """Admins reset anyone's password; everyone may change their own. Every token of the account ends."""
    return json_out(await users.set_password(ctx.core, actor, username, body.password))


@users_router.post("/{username}/disable", response_model=UserView, openapi_extra=needs(Permission.MANAGE_USERS))
async def disable_user(username: str, actor: CurrentActor, ctx: Ctx) -> Response:
    """The account can no longer log in, and its tokens stop working at once."""
    return json_out(await users.disable_user(ctx.core, actor, username))


@users_router.post("/{username}/enable", response_model=UserView, openapi_extra=needs(Permission.MANAGE_USERS))
async def enable_user(username: str, actor: CurrentActor, ctx: Ctx) -> Response:
    """Also lifts a login lock."""
    return json_out(await users.enable_user(ctx.core, actor, username))


@users_router.delete("/{username}", status_code=204, openapi_extra=needs(Permission.MANAGE_USERS))
async def remove_user(username: str, actor: CurrentActor, ctx: Ctx) -> Response:
    await users.remove_user(ctx.core, actor, username)
    return Response(status_code=204)


# --- machines ----------------------------------------------------------------------------------

machines_router = APIRouter(prefix="/machines", tags=["machines"])


@machines_router.get("", response_model=schemas.MachinePage, openapi_extra=needs(Permission.READ))
async def list_machines(
    actor: CurrentActor,
    ctx: Ctx,
    status: Annotated[str | None, Query(description="off, booting, booted or failed")] = None,
    image: Annotated[str | None, Query(description="the name of their system image")] = None,
    search: Annotated[str | None, Query(description="part of the name, MAC or IP")] = None,
    limit: Annotated[int, Query(ge=1, le=machines.MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    items, total = await machines.page_machines(
        ctx.core, actor, status=status, image=image, search=search, limit=limit, offset=offset
    )
    return json_out(schemas.MachinePage(items=items, total=total, limit=limit, offset=offset))


@machines_router.get("/{name}", response_model=MachineView, openapi_extra=needs(Permission.READ))
async def get_machine(name: str, actor: CurrentActor, ctx: Ctx) -> Response:
    return json_out(await machines.get_machine(ctx.core, actor, name))


@machines_router.post("", response_model=MachineView, status_code=201, openapi_extra=needs(Permission.MANAGE_MACHINES))
async def add_machine(body: schemas.MachineCreate, actor: CurrentActor, ctx: Ctx) -> Response:
    fields = body.model_dump(exclude_none=True)
    return json_out(await machines.add_machine(ctx.core, actor, **fields), 201)


@machines_router.patch("/{name}", response_model=MachineView, openapi_extra=needs(Permission.MANAGE_MACHINES))
async def update_machine(name: str, body: schemas.MachinePatch, actor: CurrentActor, ctx: Ctx) -> Response:
    """Change the fields given, all or none (give ``row_version`` to refuse a stale edit)."""
    fields = body.model_dump(exclude_unset=True)
    expected = fields.pop("row_version", None)
    return json_out(await machines.update_machine(ctx.core, actor, name, expected_version=expected, **fields))


@machines_router.delete("/{name}", status_code=204, openapi_extra=needs(Permission.MANAGE_MACHINES))
async def remove_machine(name: str, actor: CurrentActor, ctx: Ctx) -> Response:
    await machines.remove_machine(ctx.core, actor, name)
    return Response(status_code=204)


_CSV_BODY = {
    "requestBody": {
        "required": True,
        "content": {"text/csv": {"schema": {"type": "string"}, "example": "name,mac,ip\npc01,52:54:00:00:00:01,\n"}},
    }
}


@machines_router.post(
    "/import",
    response_model=schemas.Names,
    status_code=201,
    openapi_extra=needs(Permission.MANAGE_MACHINES) | _CSV_BODY,
)
async def import_machines(request: Request, actor: CurrentActor, ctx: Ctx) -> Response:
    """CSV (name,mac[,ip][,boot_mode] with a header line): every row or none. Bad rows come back
    in ``fields``, one per line ("CSV line 3": the rule)."""
    try:
        text = (await request.body()).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Invalid("csv", "must be UTF-8 text") from None
    names = await machines.import_csv(ctx.core, actor, text, source="CSV")
    return json_out(schemas.Names(names=names), 201)


@machines_router.post("/wake", response_model=schemas.Woken, openapi_extra=needs(Permission.WAKE_MACHINES))
async def wake_machines(body: schemas.WakeRequest, actor: CurrentActor, ctx: Ctx) -> Response:
    return json_out(schemas.Woken(woken=await wol.wake(ctx.core, actor, body.machines)))


@machines_router.post("/{name}/wake", response_model=schemas.Woken, openapi_extra=needs(Permission.WAKE_MACHINES))
async def wake_machine(name: str, actor: CurrentActor, ctx: Ctx) -> Response:
    return json_out(schemas.Woken(woken=await wol.wake(ctx.core, actor, [name])))


@machines_router.post(
    "/{name}/maintenance/start", response_model=schemas.Message, openapi_extra=needs(Permission.MANAGE_SESSIONS)
)
async def maintenance_start(name: str, actor: CurrentActor, ctx: Ctx) -> Response:
    """Its writeback survives its reboots until applied or discarded (one maintenance machine per image)."""
    return json_out(schemas.Message(message=await boots.maintenance_start(ctx.core, actor, name)))


@machines_router.post(
    "/{name}/maintenance/apply",
    response_model=schemas.Accepted,
    status_code=202,
    openapi_extra=needs(Permission.MANAGE_IMAGES),
)
async def maintenance_apply(name: str, body: schemas.ApplyRequest, actor: CurrentActor, ctx: Ctx) -> Response:
    """The engine makes the maintenance writeback the image's next version (refused while its client is logged in)."""
    request_id = await boots.maintenance_apply(ctx.core, actor, name, activate=body.activate, notes=body.notes)
    return json_out(schemas.Accepted(request_id=request_id), 202)


@machines_router.post(
    "/{name}/maintenance/discard", response_model=schemas.Message, openapi_extra=needs(Permission.MANAGE_SESSIONS)
)
async def maintenance_discard(name: str, body: schemas.DiscardRequest, actor: CurrentActor, ctx: Ctx) -> Response:
    return json_out(schemas.Message(message=await boots.maintenance_discard(ctx.core, actor, name, force=body.force)))


# --- images ---------------------------------------------------------------------------------------

images_router = APIRouter(prefix="/images", tags=["images"])


class ImageList(BaseModel):
    items: list[ImageView]


class VersionList(BaseModel):
    items: list[ImageVersionView]


@images_router.get("", response_model=ImageList, openapi_extra=needs(Permission.READ))
async def list_images(actor: CurrentActor, ctx: Ctx) -> Response:
    return json_out(ImageList(items=await images.list_images(ctx.core, actor)))


@images_router.post(
    "/import", response_model=ImageVersionView, status_code=201, openapi_extra=needs(Permission.MANAGE_IMAGES)
)
async def import_image(body: schemas.ImportRequest, actor: CurrentActor, ctx: Ctx) -> Response:
    """Import a disk file that is already on the server (VHD, VHDX, VMDK, QCOW2, VDI or raw);
    answers once it is converted and recorded."""
    path = _importable(ctx.core, body.path)
    version = await images.import_image(
        ctx.core,
        actor,
        path,
        name=body.name,
        kind=body.kind,
        new_version_of=body.new_version_of,
        notes=body.notes,
        activate=body.activate,
    )
    return json_out(version, 201)


def _importable(core: Core, text: str) -> FsPath:
    if "\x00" in text or not text.strip():
        raise Invalid("path", "must be the path of a file on the server")
    roots = core.settings.api_import_roots
    resolved = FsPath(text).expanduser().resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in roots):
        raise Invalid("path", f"must be under {' or '.join(str(r) for r in roots)} (GGNET_API_IMPORT_DIRS)")
    return resolved


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@images_router.post(
    "/upload",
    response_model=ImageVersionView,
    status_code=201,
    openapi_extra=needs(Permission.MANAGE_IMAGES) | _UPLOAD_BODY,
)
async def upload_image(
    request: Request,
    actor: CurrentActor,
    ctx: Ctx,
    name: Annotated[str | None, Query(description="a new image's name (or give new_version_of)")] = None,
    kind: str = "system",
    new_version_of: str | None = None,
    notes: str = "",
    activate: bool = True,
) -> Response:
    """Upload a disk file as the body (streamed to disk, never held in memory), then import it
    with the same checks as a file import. Refused before the upload starts when the fields or the
    permission are wrong."""
    core = ctx.core
    await images.precheck_import(
        core, actor, name=name, kind=kind, new_version_of=new_version_of, notes=notes, activate=activate
    )
    path = await _receive_upload(core, request)
    try:
        version = await images.import_image(
            core, actor, path, name=name, kind=kind, new_version_of=new_version_of, notes=notes, activate=activate
        )
    finally:
        path.unlink(missing_ok=True)
    return json_out(version, 201)


async def _receive_upload(core: Core, request: Request) -> FsPath:
    settings = core.settings
    directory = FsPath(settings.data_dir) / UPLOAD_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{uuid.uuid4().hex}.upload"
    limit = int(settings.api_upload_max)
    size = 0
    buffer = bytearray()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Invalid("body", f"is larger than {limit} bytes (GGNET_API_UPLOAD_MAX)")
                buffer += chunk
                if len(buffer) >= UPLOAD_BUFFER:
                    await _write(handle, bytes(buffer), settings)
                    buffer.clear()
            if buffer:
                await _write(handle, bytes(buffer), settings)
        if size == 0:
            raise Invalid("body", "is empty: send the disk file as the request body")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


async def _write(handle: Any, data: bytes, settings: Any) -> None:
    free = disks.free_bytes(settings)
    if free is not None and free - len(data) < settings.reserved_bytes:
        raise Invalid("body", f"does not fit: the data directory keeps {settings.reserved_bytes >> 20} MiB free")
    await asyncio.to_thread(handle.write, data)


@images_router.get("/{name}", response_model=ImageView, openapi_extra=needs(Permission.READ))
async def get_image(name: str, actor: CurrentActor, ctx: Ctx) -> Response:
    return json_out(await images.get_image(ctx.core, actor, name))


@images_router.get("/{name}/versions", response_model=VersionList, openapi_extra=needs(Permission.READ))
async def list_versions(name: str, actor: CurrentActor, ctx: Ctx) -> Response:
    return json_out(VersionList(items=await images.list_versions(ctx.core, actor, name)))


@images_router.post(
    "/{name}/versions/{number}/activate", response_model=ImageVersionView, openapi_extra=needs(Permission.MANAGE_IMAGES)
)
async def activate_version(name: str, number: ID, actor: CurrentActor, ctx: Ctx) -> Response:
    """Machines boot this version from their next boot on (unless they pin another)."""
    return json_out(await images.activate_version(ctx.core, actor, name, number))


@images_router.delete("/{name}", status_code=204, openapi_extra=needs(Permission.MANAGE_IMAGES))
async def remove_image(name: str, actor: CurrentActor, ctx: Ctx) -> Response:
    await images.remove_image(ctx.core, actor, name)
    return Response(status_code=204)


@images_router.delete("/{name}/versions/{number}", status_code=204, openapi_extra=needs(Permission.MANAGE_IMAGES))
async def remove_version(name: str, number: ID, actor: CurrentActor, ctx: Ctx) -> Response:
    await images.remove_image(ctx.core, actor, name, number)
    return Response(status_code=204)


# --- boots, targets, the engine --------------------------------------------------------------------

boots_router = APIRouter(tags=["boots and the engine"])


class TargetList(BaseModel):
    items: list[TargetView]


class DiscoveredList(BaseModel):
    items: list[DiscoveredView]


@boots_router.get("/boots", response_model=schemas.BootList, openapi_extra=needs(Permission.READ))
async def boot_history(
    actor: CurrentActor,
    ctx: Ctx,
    machine: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
) -> Response:
    """The latest boots, newest first (of one machine, or all)."""
    return json_out(schemas.BootList(items=await boots.boot_history(ctx.core, actor, machine, limit)))


@boots_router.get("/boots/current", response_model=schemas.BootList, openapi_extra=needs(Permission.READ))
async def current_boots(actor: CurrentActor, ctx: Ctx) -> Response:
    """Every machine's current boot, with whether its client is logged in (what the engine last saw)."""
    return json_out(schemas.BootList(items=await boots.current_boots(ctx.core, actor)))


@boots_router.post(
    "/boots/prepare", response_model=schemas.PrepareResponse, openapi_extra=needs(Permission.MANAGE_SESSIONS)
)
async def prepare(body: schemas.PrepareRequest, actor: CurrentActor, ctx: Ctx) -> Response:
    """Prepare these machines' boots now (before power-on, e.g. with Wake-on-LAN)."""
    results, ids = await boots.prepare(ctx.core, actor, body.machines, all_machines=body.all, policy=body.policy)
    return json_out(schemas.PrepareResponse(results=_results(results), boot_ids=ids))


@boots_router.post("/boots/offline", response_model=schemas.Results, openapi_extra=needs(Permission.MANAGE_SESSIONS))
async def take_offline(body: schemas.OfflineRequest, actor: CurrentActor, ctx: Ctx) -> Response:
    """End these machines' current boots; the engine removes their targets."""
    results = await boots.take_offline(ctx.core, actor, body.machines, all_machines=body.all, force=body.force)
    return json_out(schemas.Results(results=_results(results)))


@boots_router.post("/writebacks/reset", response_model=schemas.Results, openapi_extra=needs(Permission.MANAGE_SESSIONS))
async def reset_writeback(body: schemas.ResetRequest, actor: CurrentActor, ctx: Ctx) -> Response:
    """Drop the kept writebacks: the machines' next boot starts from the image again."""
    results = await boots.reset_writeback(ctx.core, actor, body.machines, force=body.force)
    return json_out(schemas.Results(results=_results(results)))


@boots_router.get("/targets", response_model=TargetList, openapi_extra=needs(Permission.READ))
async def list_targets(actor: CurrentActor, ctx: Ctx) -> Response:
    """What the iSCSI target stack holds right now (503 when it is unavailable)."""
    return json_out(TargetList(items=await targets.list_targets(ctx.core, actor)))


@boots_router.get("/engine", response_model=EngineView, openapi_extra=needs(Permission.READ))
async def engine_status(actor: CurrentActor, ctx: Ctx) -> Response:
    return json_out(await boots.engine_status(ctx.core, actor))


@boots_router.get("/engine/drift", response_model=schemas.DriftReport, openapi_extra=needs(Permission.READ))
async def engine_drift(actor: CurrentActor, ctx: Ctx) -> Response:
    """What the engine's last pass found different from what should be, and its repair."""
    items = [schemas.Drift.model_validate(d) for d in await boots.engine_drift(ctx.core, actor)]
    return json_out(schemas.DriftReport(items=items))


@boots_router.post(
    "/engine/pass",
    response_model=schemas.Accepted,
    status_code=202,
    openapi_extra=needs(Permission.MANAGE_TARGETS) | {"x-permission-dry-run": Permission.READ.value},
)
async def request_pass(body: schemas.PassRequest, actor: CurrentActor, ctx: Ctx) -> Response:
    """A pass now; its report is the request's result."""
    request_id = await boots.request_pass(ctx.core, actor, dry_run=body.dry_run)
    ctx.engine.poke()
    return json_out(schemas.Accepted(request_id=request_id), 202)


@boots_router.get("/engine/requests/{request_id}", response_model=RequestView, openapi_extra=needs(Permission.READ))
async def get_request(request_id: ID, actor: CurrentActor, ctx: Ctx) -> Response:
    return json_out(await boots.get_request(ctx.core, actor, request_id))


@boots_router.get("/discovered", response_model=DiscoveredList, openapi_extra=needs(Permission.READ))
async def discovered(actor: CurrentActor, ctx: Ctx) -> Response:
    """PCs that asked to boot but are not registered (for adoption)."""
    return json_out(DiscoveredList(items=await boots.discovered(ctx.core, actor)))


@boots_router.post(
    "/discovered/adopt", response_model=schemas.Names, status_code=201, openapi_extra=needs(Permission.MANAGE_MACHINES)
)
async def adopt(body: schemas.AdoptRequest, actor: CurrentActor, ctx: Ctx) -> Response:
    """Register discovered PCs as machines, all or none."""
    items = [item.model_dump() for item in body.machines]
    return json_out(schemas.Names(names=await boots.adopt(ctx.core, actor, items)), 201)


@boots_router.delete(
    "/discovered/{mac}", response_model=schemas.Forgotten, openapi_extra=needs(Permission.MANAGE_MACHINES)
)
async def forget(mac: str, actor: CurrentActor, ctx: Ctx) -> Response:
    return json_out(schemas.Forgotten(forgotten=await boots.forget_discovered(ctx.core, actor, [mac])))


# --- audit ---------------------------------------------------------------------------------------

audit_router = APIRouter(prefix="/audit", tags=["audit"])


@audit_router.get("", response_model=schemas.AuditPage, openapi_extra=needs(Permission.READ))
async def audit_events(
    actor: CurrentActor,
    ctx: Ctx,
    user: Annotated[str | None, Query(description="who acted")] = None,
    action: Annotated[str | None, Query(description="e.g. machine (every machine.*) or machine.create")] = None,
    object_type: str | None = None,
    object: Annotated[str | None, Query(description="part of the object's name")] = None,
    outcome: Annotated[str | None, Query(description="ok, denied or failed")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    """Newest first."""
    items, total = await audit.list_events(
        ctx.core,
        actor,
        limit=limit,
        offset=offset,
        actor_name=user,
        action=action,
        object_type=object_type,
        object_name=object,
        outcome=outcome,
        since=_utc(since, "since"),
        until=_utc(until, "until"),
    )
    return json_out(schemas.AuditPage(items=items, total=total, limit=limit, offset=offset))


# --- the application ---------------------------------------------------------------------------------


def create_api(core: Core, engine: Engine, key: bytes) -> FastAPI:
    from .events import events_router

    settings = core.settings
    api = FastAPI(
        title="ggnet API",
        version="1",
        description=(
            "The HTTP API of a ggnet boot server. Log in with POST /auth/login and send the access token as "
            "'Authorization: Bearer <token>'. Each operation's x-permission names the permission the account's "
            "role needs (see the roles in the README). Errors are "
            '{"error": {"code", "message", "fields"}}.'
        ),
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        responses=ERROR_RESPONSES,
    )
    api.state.ctx = ApiContext(
        core=core,
        engine=engine,
        key=key,
        login_by_address=RateLimiter(settings.api_login_rate_per_minute),
        login_by_account=RateLimiter(settings.api_login_rate_per_minute),
        per_token=RateLimiter(settings.api_rate_per_minute),
    )
    errors.install(api)
    for router in (
        auth_router,
        users_router,
        machines_router,
        images_router,
        boots_router,
        audit_router,
        events_router,
    ):
        api.include_router(router)
    origins = [o for o in (s.strip() for s in settings.api_cors_origins.split(",")) if o]
    if origins:
        from fastapi.middleware.cors import CORSMiddleware

        api.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return api


async def remove_stale_uploads(core: Core) -> None:
    """Uploads a killed process left behind (none can be in progress before we listen)."""
    directory = FsPath(core.settings.data_dir) / UPLOAD_DIR
    if directory.is_dir():
        for path in directory.glob("*.upload"):
            with contextlib.suppress(OSError):
                path.unlink()
