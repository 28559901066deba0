"""Accounts: first admin, login with throttling, CRUD with the last-admin guard."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from .. import auth
from ..auth import Actor, Permission
from ..context import Core
from ..errors import AccountLocked, AuthenticationFailed, Conflict, Invalid, NotFound
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


async def _change(core: Core, actor: Actor, username: str, action: str, expected_version: int | None, apply):  # type: ignore[no-untyped-def]
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


async def login(core: Core, username: str, password: str, client: str | None = None) -> Actor:
    """Check a password. Every attempt, good or bad, is audited (with ``client``, where the
    attempt came from, e.g. "api 10.0.0.5"); failures are throttled."""
    name = shown(str(username or "").strip().lower())
    try:
        normalize_username(name)
        possible = True
    except ValueError:  # no account can have this name (NUL, look-alikes ...): do not ask the database
        possible = False
    now = utcnow()
    structlog.contextvars.bind_contextvars(actor=name or "?", operation="auth.login")
    async with core.db.transaction() as session:
        user = None
        if possible:
            user = (await session.execute(select(User).where(User.username == name))).scalar_one_or_none()
        op = Operation(session, Actor(user.id if user else None, name or "?", Role.VIEWER, client=client), "auth.login")
        wait = 0
        if user is not None:
            if user.locked_until is not None and user.locked_until > now:
                wait = int((user.locked_until - now).total_seconds() + 0.999)
            else:
                wait = auth.throttle_wait(user.failed_logins, user.last_failed_at, now)
        # the hash check runs in a thread: it is deliberately slow and must not block a UI loop
        ok = await asyncio.to_thread(auth.verify_password, str(password or ""), user.password_hash if user else None)
        if wait:
            op.audit("user", user.id, user.username, detail=f"throttled, retry in {wait}s", outcome=Outcome.DENIED)  # type: ignore[union-attr]
            error: AuthenticationFailed = AccountLocked(
                f"too many failed logins for '{name}'; try again in {wait} s", retry_after_seconds=wait
            )
        elif user is None or not ok:
            if user is not None:
                user.failed_logins += 1
                user.last_failed_at = now
                if user.failed_logins >= auth.LOCK_AFTER:
                    user.locked_until = now + timedelta(seconds=auth.LOCK_SECONDS)
            op.audit("user", user.id if user else None, name, detail=BAD_CREDENTIALS, outcome=Outcome.FAILED)
            error = AuthenticationFailed(BAD_CREDENTIALS)
        elif user.disabled:
            op.audit("user", user.id, user.username, detail="account disabled", outcome=Outcome.DENIED)
            error = AuthenticationFailed(f"the account '{name}' is disabled; ask an admin to enable it")
        else:
            user.failed_logins = 0
            user.locked_until = None
            user.last_login_at = now
            op.audit("user", user.id, user.username)
            return Actor(user.id, user.username, Role(user.role), logged_in_at=now, client=client)
    raise error


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
