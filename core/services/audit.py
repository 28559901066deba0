"""Reading the audit trail: filters and pages. (Writing happens in services.base.)"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from ..auth import Actor
from ..context import Core
from ..errors import Invalid
from ..models import AuditEvent
from .base import reading
from .views import AuditView

MAX_PAGE = 1000
MAX_OFFSET = 2**63 - 1  # the largest row offset SQLite and PostgreSQL take


async def list_events(
    core: Core,
    actor: Actor,
    *,
    limit: int = 50,
    offset: int = 0,
    actor_name: str | None = None,
    action: str | None = None,
    object_type: str | None = None,
    object_name: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[AuditView], int]:
    """Newest first. Returns one page and the total number of matching events."""
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid("limit", f"must be between 1 and {MAX_PAGE}")
    if not 0 <= offset <= MAX_OFFSET:
        raise Invalid("offset", f"must be between 0 and {MAX_OFFSET}")
    for field, value in (("actor", actor_name), ("action", action), ("object", object_name), ("outcome", outcome)):
        if value is not None and "\x00" in value:
            raise Invalid(field, "must not contain a NUL character")
    conditions = []
    if actor_name:
        conditions.append(AuditEvent.actor == actor_name.strip().lower())
    if action:
        # "machine" matches machine.create, machine.update ...; "machine.create" matches itself
        action = action.strip().lower()
        conditions.append(AuditEvent.action.startswith(action + ".", autoescape=True) | (AuditEvent.action == action))
    if object_type:
        conditions.append(AuditEvent.object_type == object_type.strip().lower())
    if object_name:
        conditions.append(AuditEvent.object_name.contains(object_name.strip(), autoescape=True))
    if outcome:
        conditions.append(AuditEvent.outcome == outcome.strip().lower())
    if since:
        conditions.append(AuditEvent.at >= since)
    if until:
        conditions.append(AuditEvent.at < until)
    async with reading(core, actor) as session:
        total = (await session.execute(select(func.count()).select_from(AuditEvent).where(*conditions))).scalar_one()
        rows = (
            await session.execute(
                select(AuditEvent).where(*conditions).order_by(AuditEvent.id.desc()).limit(limit).offset(offset)
            )
        ).scalars()
        return [AuditView.model_validate(r) for r in rows], int(total)
