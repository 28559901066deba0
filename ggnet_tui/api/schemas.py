"""Request and response bodies of the API that are not core's own views.

Fields are plain types: the rules (what a MAC, a name or a password must be) are core's, and
refusals come back with core's sentences naming the field.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from core.services.boots import BootView
from core.services.views import AuditView, MachineView

T = TypeVar("T")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- auth ------------------------------------------------------------------------------


class LoginRequest(Body):
    username: str
    password: str


class RefreshRequest(Body):
    refresh_token: str


class TokenResponse(BaseModel):
    access_token: str = Field(description="send as 'Authorization: Bearer <token>'")
    token_type: str = "bearer"
    expires_in: int = Field(description="seconds the access token is valid")
    refresh_token: str = Field(description="use once with POST /auth/refresh for the next pair")
    refresh_expires_in: int
    username: str
    role: str


class Me(BaseModel):
    username: str
    role: str
    permissions: list[str]


# --- users -----------------------------------------------------------------------------


class NewUser(Body):
    username: str
    role: str
    password: str


class RoleChange(Body):
    role: str
    row_version: int | None = Field(default=None, description="refuse if the account changed since (409 stale_edit)")


class PasswordChange(Body):
    password: str


# --- machines --------------------------------------------------------------------------


class MachineCreate(Body):
    name: str
    mac: str
    ip: str | None = None
    boot_mode: str = "bios"
    initiator_iqn: str | None = None
    notes: str = ""


class MachinePatch(Body):
    """Only the fields given change. ``ip: null`` clears the IP; ``image: null`` leaves the machine
    without an image; ``pin_version: null`` follows the active version again."""

    row_version: int | None = Field(default=None, description="refuse if the machine changed since (409 stale_edit)")
    name: str | None = None
    mac: str | None = None
    ip: str | None = None
    boot_mode: str | None = None
    initiator_iqn: str | None = None
    boot_enabled: bool | None = None
    writeback_policy: str | None = Field(default=None, description="fresh or keep (maintenance: its own endpoint)")
    notes: str | None = None
    image: str | None = None
    pin_version: int | None = None
    game_image: str | None = None
    game_pin_version: int | None = None


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(description="how many match the filters")
    limit: int
    offset: int


class MachinePage(Page[MachineView]):
    pass


class AuditPage(Page[AuditView]):
    pass


class BootList(BaseModel):
    items: list[BootView]


class Names(BaseModel):
    names: list[str]


class WakeRequest(Body):
    machines: list[str]


class Woken(BaseModel):
    woken: list[str]


# --- the engine's intents ----------------------------------------------------------------


class Selection(Body):
    machines: list[str] = Field(default_factory=list)
    all: bool = Field(default=False, description="every machine (with an image, or booted, as fits)")


class PrepareRequest(Selection):
    policy: str | None = Field(default=None, description="fresh or keep: set the machines' writeback policy first")


class OfflineRequest(Selection):
    force: bool = Field(default=False, description="also machines whose client is logged in (cuts their disk off)")


class ResetRequest(Body):
    machines: list[str]
    force: bool = False


class BootResult(BaseModel):
    machine: str
    ok: bool
    message: str


class Results(BaseModel):
    results: list[BootResult]


class PrepareResponse(Results):
    boot_ids: list[int] = Field(description="the boots to watch (GET /boots/current, or the events)")


class Message(BaseModel):
    message: str


class ApplyRequest(Body):
    activate: bool = True
    notes: str = ""


class DiscardRequest(Body):
    force: bool = False


class Accepted(BaseModel):
    request_id: int = Field(description="GET /engine/requests/{request_id} says when it is done and how")


class PassRequest(Body):
    dry_run: bool = False


class AdoptItem(Body):
    mac: str
    name: str
    image: str | None = None
    boot_mode: str | None = None
    ip: str | None = None


class AdoptRequest(Body):
    machines: list[AdoptItem]


class Forgotten(BaseModel):
    forgotten: int


# --- images ---------------------------------------------------------------------------------


class ImportRequest(Body):
    path: str = Field(description="a disk file on the server, under one of GGNET_API_IMPORT_DIRS")
    name: str | None = Field(default=None, description="a new image's name (or give new_version_of)")
    kind: str = "system"
    new_version_of: str | None = None
    notes: str = ""
    activate: bool = True


class Drift(BaseModel):
    kind: str
    subject: str
    machine: str | None
    fields: list[str]
    repair: str


class DriftReport(BaseModel):
    items: list[Drift]
