"""Read-only views handed to the CLI and the TUI (never ORM rows, which belong to a session)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class View(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class UserView(View):
    id: int
    username: str
    role: str
    disabled: bool
    failed_logins: int
    locked_until: datetime | None
    last_login_at: datetime | None
    created_at: datetime
    row_version: int


class MachineView(View):
    id: int
    name: str
    mac: str
    ip: str | None
    boot_mode: str
    initiator_iqn: str
    chap_username: str
    chap_secret: str | None  # this boot's secret; None unless booted and the actor may read secrets
    image: str | None
    image_id: int | None
    pinned_version: int | None
    game_image: str | None = None
    game_pinned_version: int | None = None
    boot_enabled: bool = True
    writeback_policy: str = "fresh"
    status: str = "off"  # off, booting, booted, failed: what the engine last saw
    status_detail: str | None = None
    logged_in: bool = False
    client_address: str | None = None
    last_seen_at: datetime | None = None
    writeback_bytes: int | None = None
    read_bytes: int | None = None  # through its target, as the engine last counted them
    written_bytes: int | None = None
    observed_at: datetime | None = None  # when the engine last recorded a change in the above
    notes: str
    updated_at: datetime
    updated_by: str | None
    row_version: int


class AuditView(View):
    id: int
    at: datetime
    actor: str
    action: str
    object_type: str | None
    object_id: int | None
    object_name: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    outcome: str
    detail: str | None
