"""The unit of work every service runs in: permission check, change, audit — one transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from ..auth import Actor, Permission, allowed
from ..context import Core
from ..errors import Conflict, PermissionDenied, StaleEdit
from ..log import REDACTED, bind_context, get_logger, unbind_context
from ..models import AuditEvent, Outcome, Role, User, utcnow

# columns that are never written into an audit event
SECRET_COLUMNS = frozenset({"password_hash", "chap_secret"})
# bookkeeping columns that would only add noise to before/after
_SKIP_COLUMNS = frozenset({"row_version", "updated_at", "updated_by", "created_at"})

_PERMISSION_WORDS = {
    Permission.READ: "read ggnet data",
    Permission.READ_SECRETS: "read secrets",
    Permission.MANAGE_MACHINES: "manage machines",
    Permission.MANAGE_IMAGES: "manage images",
    Permission.MANAGE_SESSIONS: "manage sessions",
    Permission.MANAGE_TARGETS: "manage targets",
    Permission.WAKE_MACHINES: "wake machines",
    Permission.MANAGE_USERS: "manage users",
    Permission.MANAGE_SETTINGS: "manage settings",
}


def snapshot(obj: Any) -> dict[str, Any]:
    """Column values of a row for the audit trail, secrets redacted."""
    values: dict[str, Any] = {}
    for column in inspect(obj).mapper.column_attrs:
        key = column.key
        if key in _SKIP_COLUMNS:
            continue
        value = getattr(obj, key)
        if key in SECRET_COLUMNS:
            value = REDACTED
        elif isinstance(value, datetime):
            value = value.isoformat()
        values[key] = value
    return values


class Operation:
    """Handed to a service body: the session, the actor and the audit writer."""

    def __init__(self, session: AsyncSession, actor: Actor, action: str) -> None:
        self.session = session
        self.actor = actor
        self.action = action
        self.audited = False
        self.changes_intent = False
        self.log = get_logger()

    def intent_changed(self) -> None:
        """This change alters what the engine should converge to: wake it when committed."""
        self.changes_intent = True

    def audit(
        self,
        object_type: str | None,
        object_id: int | None = None,
        object_name: str | None = None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        detail: str | None = None,
        outcome: Outcome = Outcome.OK,
    ) -> None:
        if self.actor.client:
            detail = f"{detail}; {self.actor.client}" if detail else self.actor.client
        self.session.add(
            AuditEvent(
                at=utcnow(),
                actor=self.actor.username,
                action=self.action,
                object_type=object_type,
                object_id=object_id,
                object_name=object_name,
                before=before,
                after=after,
                outcome=outcome.value,
                detail=detail,
            )
        )
        self.audited = True
        self.log.info("audit", object_type=object_type, object_name=object_name, outcome=outcome.value)

    async def flush(self, conflict: str) -> None:
        """Flush now so a unique-constraint race becomes a Conflict with ``conflict`` as its sentence."""
        try:
            await self.session.flush()
        except IntegrityError:
            raise Conflict(conflict) from None
        except StaleDataError:
            raise StaleEdit("changed by another console just now; reload") from None

    def stamp(self, row: Any) -> None:
        row.updated_at = utcnow()
        row.updated_by = self.actor.username


def check_version(row: Any, expected: int | None, what: str) -> None:
    """Refuse an edit made on an out-of-date copy of ``row``."""
    if expected is not None and row.row_version != expected:
        when = row.updated_at.strftime("%Y-%m-%d %H:%M:%S UTC") if row.updated_at else "an unknown time"
        raise StaleEdit(f"{what} was changed by {row.updated_by or 'someone'} at {when}; reload")


async def _denial(session: AsyncSession, actor: Actor, permission: Permission) -> str | None:
    """Why ``actor`` may not do this now (role re-read from the database), or None."""
    if actor.user_id is None:
        return None if allowed(actor.role, permission) else f"{actor.username} may not {_PERMISSION_WORDS[permission]}"
    user = await session.get(User, actor.user_id)
    if user is None:
        return f"the account '{actor.username}' no longer exists"
    if user.disabled:
        return f"the account '{user.username}' is disabled"
    if not allowed(user.role, permission):
        return f"{Role(user.role).value} '{user.username}' may not {_PERMISSION_WORDS[permission]}"
    return None


async def may(session: AsyncSession, actor: Actor, permission: Permission) -> bool:
    """Whether ``actor`` holds ``permission`` now (role re-read), e.g. to decide whether to show secrets."""
    return await _denial(session, actor, permission) is None


@asynccontextmanager
async def operation(core: Core, actor: Actor, permission: Permission, action: str) -> AsyncIterator[Operation]:
    """Run a change as ``actor``. A refusal is audited (and committed) before PermissionDenied is raised."""
    bind_context(actor=actor.username, operation=action)
    try:
        async with core.db.transaction() as session:
            reason = await _denial(session, actor, permission)
            if reason is None:
                op = Operation(session, actor, action)
                yield op
                try:
                    if op.changes_intent:
                        from ..engine.signals import bump_intent

                        await bump_intent(session)
                    await session.flush()
                except IntegrityError:
                    raise Conflict("another console changed the same data at the same time; reload and retry") from None
                except StaleDataError:
                    raise StaleEdit("changed by another console just now; reload") from None
                return
            Operation(session, actor, action).audit(None, detail=reason, outcome=Outcome.DENIED)
            get_logger().warning("permission denied", reason=reason)
        raise PermissionDenied(f"permission denied: {reason}")
    finally:
        unbind_context("actor", "operation")


@asynccontextmanager
async def reading(core: Core, actor: Actor, permission: Permission = Permission.READ) -> AsyncIterator[AsyncSession]:
    """A read-only session for ``actor``. Refused reads are audited like refused changes."""
    async with core.db.session() as session:
        reason = await _denial(session, actor, permission)
        if reason is None:
            yield session
            return
    async with operation(core, actor, permission, "read"):
        pass  # pragma: no cover - operation raises


async def require(core: Core, actor: Actor, permission: Permission, action: str) -> None:
    """Check up front, for work that spans several transactions (sessions, reconcile):
    a refusal raises PermissionDenied with an audit event naming ``action``."""
    async with operation(core, actor, permission, action):
        pass
