"""Accounts: first admin, login with throttling, CRUD with the last-admin guard."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, case, func, literal, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from .. import auth, files
from ..auth import Actor, Permission
from ..context import Core
from ..errors import (
    AccountLocked,
    AuthenticationFailed,
    Conflict,
    DatabaseBusy,
    DatabaseReadOnly,
    DiskFull,
    GgnetError,
    Invalid,
    NotFound,
)
from ..log import bind_context, get_logger
from ..models import Outcome, Role, User, utcnow
from ..validation import Password, StrictInput, Username, lookup_key, normalize_username, parse, shown
from .base import Operation, check_version, operation, reading, snapshot
from .views import UserView


class NewUser(StrictInput):
    username: Username
    role: Role
    password: Password


class PasswordInput(StrictInput):
    password: Password


def _role(value: str) -> Role:
    try:
        return Role(str(value).strip().lower())
    except ValueError:
        raise Invalid("role", "must be one of admin, operator or viewer") from None


async def _get(session: AsyncSession, username: str) -> User:
    key = lookup_key(username)
    user = None
    if key is not None:
        user = (await session.execute(select(User).where(User.username == key))).scalar_one_or_none()
    if user is None:
        raise NotFound(f"no user named '{shown(key if key is not None else username)}'")
    return user


async def _serialise_account_counts(session: AsyncSession) -> None:
    """Decisions that count accounts (the first admin, the last active admin) must not race.
    SQLite already lets one writer in at a time (BEGIN IMMEDIATE); PostgreSQL, in READ
    COMMITTED, would let two consoles both count "2 admins" and disable one each, so the
    table is locked against other writers until this transaction ends."""
    if (await session.connection()).dialect.name == "postgresql":
        await session.execute(text("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE"))


async def _active_admins(session: AsyncSession) -> int:
    query = select(func.count()).select_from(User).where(User.role == Role.ADMIN.value, User.disabled.is_(False))
    return int((await session.execute(query)).scalar_one())


async def _guard_last_admin(session: AsyncSession, user: User, what: str) -> None:
    if user.role != Role.ADMIN.value or user.disabled:
        return
    await _serialise_account_counts(session)
    await session.refresh(user)  # as it is now, after any console that held the lock
    if user.role == Role.ADMIN.value and not user.disabled and await _active_admins(session) <= 1:
        raise Conflict(f"cannot {what} '{user.username}': it is the last active admin")


def _new_user(op: Operation, data: NewUser) -> User:
    now = utcnow()
    return User(
        username=data.username,
        password_hash=auth.hash_password(data.password),
        role=data.role.value,
        disabled=False,
        failed_logins=0,
        password_changed_at=now,
        created_at=now,
        updated_at=now,
        updated_by=op.actor.username,
    )


async def revoke_tokens(session: AsyncSession, user_id: int) -> None:
    """Every login token of the account (API refresh tokens, CLI tokens) stops working, for good:
    enabling the account again or changing the password back does not revive one."""
    from sqlalchemy import update

    from ..models import AuthToken

    await session.execute(
        update(AuthToken)
        .where(AuthToken.user_id == user_id, AuthToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


async def count_users(core: Core) -> int:
    """Whether anyone exists yet (first-run screen, ``init``). Needs no login."""
    async with core.db.session() as session:
        return int((await session.execute(select(func.count()).select_from(User))).scalar_one())


async def create_first_admin(core: Core, username: str, password: str) -> UserView:
    """Only while there are no users at all; the database decides, so two racing inits give one admin."""
    data = parse(NewUser, {"username": username, "role": "admin", "password": password})
    async with operation(core, auth.SYSTEM, Permission.MANAGE_USERS, "user.init") as op:
        await _serialise_account_counts(op.session)
        existing = (await op.session.execute(select(func.count()).select_from(User))).scalar_one()
        if existing:
            raise Conflict("ggnet is already initialised: users exist; ask an admin to add you with 'ggnet user add'")
        user = _new_user(op, data)
        op.session.add(user)
        await op.flush(conflict=f"a user named '{data.username}' already exists")
        op.audit("user", user.id, user.username, None, snapshot(user))
        return UserView.model_validate(user)


async def add_user(core: Core, actor: Actor, username: str, role: str, password: str) -> UserView:
    data = parse(NewUser, {"username": username, "role": str(role).strip().lower(), "password": password})
    async with operation(core, actor, Permission.MANAGE_USERS, "user.create") as op:
        clash = await op.session.execute(select(User.id).where(User.username == data.username))
        if clash.first() is not None:
            raise Conflict(f"a user named '{data.username}' already exists")
        user = _new_user(op, data)
        op.session.add(user)
        await op.flush(conflict=f"a user named '{data.username}' already exists")
        op.audit("user", user.id, user.username, None, snapshot(user))
        return UserView.model_validate(user)


async def list_users(core: Core, actor: Actor) -> list[UserView]:
    async with reading(core, actor) as session:
        rows = (await session.execute(select(User).order_by(User.username))).scalars().all()
        return [UserView.model_validate(u) for u in rows]


async def get_user(core: Core, actor: Actor, username: str) -> UserView:
    async with reading(core, actor) as session:
        return UserView.model_validate(await _get(session, username))


async def _change(
    core: Core,
    actor: Actor,
    username: str,
    action: str,
    expected_version: int | None,
    apply: Callable[[Operation, User], Awaitable[None]],
) -> UserView:
    async with operation(core, actor, Permission.MANAGE_USERS, action) as op:
        user = await _get(op.session, username)
        check_version(user, expected_version, f"user '{user.username}'")
        before = snapshot(user)
        await apply(op, user)
        op.stamp(user)
        await op.flush(conflict=f"user '{user.username}' was changed by another console; reload")
        op.audit("user", user.id, user.username, before, snapshot(user))
        return UserView.model_validate(user)


async def set_role(core: Core, actor: Actor, username: str, role: str, expected_version: int | None = None) -> UserView:
    new_role = _role(role)

    async def apply(op: Operation, user: User) -> None:
        if new_role != Role.ADMIN:
            await _guard_last_admin(op.session, user, "demote")
        user.role = new_role.value

    return await _change(core, actor, username, "user.set_role", expected_version, apply)


async def disable_user(core: Core, actor: Actor, username: str) -> UserView:
    async def apply(op: Operation, user: User) -> None:
        await _guard_last_admin(op.session, user, "disable")
        user.disabled = True
        await revoke_tokens(op.session, user.id)

    return await _change(core, actor, username, "user.disable", None, apply)


async def enable_user(core: Core, actor: Actor, username: str) -> UserView:
    """Also lifts a login lock and clears the failure count."""

    async def apply(_op: Operation, user: User) -> None:
        user.disabled = False
        user.failed_logins = 0
        user.locked_until = None

    return await _change(core, actor, username, "user.enable", None, apply)


async def set_password(core: Core, actor: Actor, username: str, password: str) -> UserView:
    """Admins reset anyone's password; every user may change their own."""
    data = parse(PasswordInput, {"password": password})
    target = str(username).strip().lower()
    permission = Permission.READ if target == actor.username else Permission.MANAGE_USERS
    async with operation(core, actor, permission, "user.passwd") as op:
        user = await _get(op.session, target)
        before = snapshot(user)
        user.password_hash = auth.hash_password(data.password)
        user.password_changed_at = utcnow()
        user.failed_logins = 0
        user.locked_until = None
        await revoke_tokens(op.session, user.id)
        op.stamp(user)
        await op.flush(conflict="the account was changed by another console; reload")
        op.audit("user", user.id, user.username, before, snapshot(user))
        return UserView.model_validate(user)


async def remove_user(core: Core, actor: Actor, username: str) -> None:
    async with operation(core, actor, Permission.MANAGE_USERS, "user.delete") as op:
        user = await _get(op.session, username)
        await _guard_last_admin(op.session, user, "delete")
        before = snapshot(user)
        await op.session.delete(user)
        op.audit("user", user.id, user.username, before, None)


# --- login -----------------------------------------------------------------

BAD_CREDENTIALS = "wrong user name or password"
NAME_KEY_FILE = "ggnet.key"
_fallback_name_key = secrets.token_bytes(32)

_users = cast(Table, User.__table__)  # login bookkeeping is written with Core statements: see _record


def unknown_user_label(core: Core, typed: str) -> str:
    """How a name that matches no account appears in the audit trail and the log: a short keyed
    hash, never the text, because what lands in the user field is sometimes a password. The same
    name gives the same label (repeated attempts stay visible); without the key (kept 0600 in the
    data directory) no one can test guesses against it."""
    key = core.extras.get("name_key")
    if key is None:
        try:
            key = files.secret_key(core.settings.data_dir / NAME_KEY_FILE)
        except (OSError, GgnetError):  # no usable data directory: a key for this process only
            key = _fallback_name_key
        core.extras["name_key"] = key
    digest = hmac.new(key, typed.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return f"unknown user #{digest[:12]}"


def _wait(row: Any, now: datetime) -> int:
    """Seconds the account must still wait before an attempt counts (0 = may try now)."""
    if row.locked_until is not None and row.locked_until > now:
        return int((row.locked_until - now).total_seconds() + 0.999)
    return auth.throttle_wait(row.failed_logins, row.last_failed_at, now)


_LOGIN_COLUMNS = (
    User.id,
    User.username,
    User.password_hash,
    User.role,
    User.disabled,
    User.failed_logins,
    User.last_failed_at,
    User.locked_until,
)


async def login(core: Core, username: str, password: str, client: str | None = None) -> Actor:
    """Check a password. Every attempt, good or bad, is audited (with ``client``, where the attempt
    came from, e.g. "api 10.0.0.5"); failures are throttled.

    The account is read, the (deliberately slow) hash is checked with no transaction open, then
    one short transaction records the outcome. When the database cannot record it (read-only,
    busy beyond the wait, disk full) the decision stands and the log says it was not recorded,
    so reading a read-only database still works.
    """
    typed = str(username or "").strip().lower()
    try:
        name: str | None = normalize_username(typed)
    except ValueError:  # no account can have this name (NUL, look-alikes ...): do not ask the database
        name = None
    now = utcnow()
    row = None
    if name is not None:
        async with core.db.session() as session:
            row = (await session.execute(select(*_LOGIN_COLUMNS).where(User.username == name))).first()
    who = row.username if row is not None else unknown_user_label(core, typed)
    bind_context(actor=who, operation="auth.login")
    wait = _wait(row, now) if row is not None else 0
    # the hash check runs in a thread: it is deliberately slow and must not block a UI loop
    ok = await asyncio.to_thread(auth.verify_password, str(password or ""), row.password_hash if row else None)
    try:
        async with core.db.transaction() as session:
            op = Operation(session, Actor(row.id if row else None, who, Role.VIEWER, client=client), "auth.login")
            result = await _record(op, row, ok, wait, now)
    except (DatabaseReadOnly, DatabaseBusy, DiskFull) as exc:
        get_logger().warning("login not recorded", reason=exc.message)
        result = _decide(row, ok, wait, now, client)
    if isinstance(result, Actor):
        return result
    raise result


def _decide(row: Any, ok: bool, wait: int, now: datetime, client: str | None = None) -> Actor | AuthenticationFailed:
    """The answer to an attempt, from the account as read before the hash check."""
    if row is not None and wait:
        return AccountLocked(f"too many failed logins for '{row.username}'; try again in {wait} s", wait)
    if row is None or not ok:
        return AuthenticationFailed(BAD_CREDENTIALS)
    if row.disabled:
        return AuthenticationFailed(f"the account '{row.username}' is disabled; ask an admin to enable it")
    return Actor(row.id, row.username, Role(row.role), logged_in_at=now, client=client)


async def _record(op: Operation, row: Any, ok: bool, wait: int, now: datetime) -> Actor | AuthenticationFailed:
    """Record an attempt, atomically whatever else runs at the same moment.

    The counters are changed by single UPDATE statements on the table (SQL adds 1 to the stored
    count, so no attempt is lost) that leave ``row_version`` alone: logging in is not an edit of the
    account, so it must neither conflict with an admin's edit nor make that admin's form stale.
    A right password is checked once more against the account as it is now (a burst of parallel
    guesses may have locked it meanwhile, or an admin disabled it).
    """
    if row is not None and ok and not wait:
        current = (
            await op.session.execute(
                select(*(_users.c[column.key] for column in _LOGIN_COLUMNS))
                .where(_users.c.id == row.id)
                .with_for_update()
            )
        ).first()
        row = current  # None when the account was deleted meanwhile
        wait = _wait(current, now) if current is not None else 0
    result = _decide(row, ok, wait, now, op.actor.client)
    if isinstance(result, AccountLocked):
        assert row is not None  # only an existing account is throttled
        op.audit("user", row.id, row.username, detail=f"throttled, retry in {wait}s", outcome=Outcome.DENIED)
    elif row is None or not ok:
        if row is not None:
            failures = _users.c.failed_logins + 1
            lock = literal(now + timedelta(seconds=auth.LOCK_SECONDS), _users.c.locked_until.type)
            await op.session.execute(
                update(_users)
                .where(_users.c.id == row.id)
                .values(
                    failed_logins=failures,
                    last_failed_at=now,
                    locked_until=case((failures >= auth.LOCK_AFTER, lock), else_=_users.c.locked_until),
                )
            )
        op.audit("user", row.id if row else None, op.actor.username, detail=BAD_CREDENTIALS, outcome=Outcome.FAILED)
    elif isinstance(result, AuthenticationFailed):
        op.audit("user", row.id, row.username, detail="account disabled", outcome=Outcome.DENIED)
    else:
        await op.session.execute(
            update(_users).where(_users.c.id == row.id).values(failed_logins=0, locked_until=None, last_login_at=now)
        )
        op.audit("user", row.id, row.username)
    return result


async def logout(core: Core, actor: Actor) -> None:
    async with core.db.transaction() as session:
        Operation(session, actor, "auth.logout").audit("user", actor.user_id, actor.username)


async def still_valid(core: Core, actor: Actor) -> Actor | None:
    """Cheap check for open consoles: the current Actor (role may have changed), or None when
    the account was disabled, deleted or had its password changed since this login."""
    if actor.user_id is None:
        return actor
    async with core.db.session() as session:
        row = (
            await session.execute(
                select(User.disabled, User.role, User.password_changed_at).where(User.id == actor.user_id)
            )
        ).first()
    if row is None or row.disabled:
        return None
    if actor.logged_in_at is not None and row.password_changed_at > actor.logged_in_at:
        return None
    if row.role != actor.role.value:
        return Actor(actor.user_id, actor.username, Role(row.role), actor.logged_in_at, actor.client)
    return actor
