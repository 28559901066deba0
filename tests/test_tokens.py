"""Login tokens on SQLite and PostgreSQL: only a hash stored; revoked by logout, a disabled account
or a changed password; expiry that slides with use but not past the cap."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from core.auth import Actor
from core.context import Core
from core.errors import AuthenticationFailed
from core.models import AuditEvent, AuthToken, Role, TokenKind, User, utcnow
from core.services import tokens, users

from .conftest import make_user

IDLE = timedelta(minutes=15)


async def _row(core: Core, token: str) -> AuthToken:
    async with core.db.session() as session:
        query = select(AuthToken).where(AuthToken.token_hash == tokens.token_hash(token))
        return (await session.execute(query)).scalar_one()


async def _set(core: Core, token: str, **values: Any) -> None:
    async with core.db.transaction() as session:
        await session.execute(
            update(AuthToken).where(AuthToken.token_hash == tokens.token_hash(token)).values(**values)
        )


async def _events(core: Core, action: str) -> list[AuditEvent]:
    async with core.db.session() as session:
        query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        return list((await session.execute(query)).scalars())


async def _issue(core: Core, actor: Actor) -> str:
    return (await tokens.issue(core, actor, TokenKind.CLI, IDLE, client="alice@server")).token


async def test_a_token_stands_for_its_user_and_only_its_hash_is_stored(core: Core, admin: Actor) -> None:
    oscar = await make_user(core, "oscar", Role.OPERATOR)
    issued = await tokens.issue(core, oscar, TokenKind.CLI, IDLE, client="alice@server")
    assert len(issued.token) >= 43  # 32 random bytes
    row = await _row(core, issued.token)
    assert row.token_hash == hashlib.sha256(issued.token.encode()).hexdigest() != issued.token
    assert (row.user_id, row.kind, row.family, row.client) == (oscar.user_id, "cli", issued.family, "alice@server")
    async with core.db.session() as session:  # the secret itself is nowhere in the table
        stored = (await session.execute(select(AuthToken.token_hash, AuthToken.family, AuthToken.client))).all()
    assert issued.token not in str(stored)
    actor = await tokens.authenticate(core, issued.token, TokenKind.CLI)
    assert (actor.user_id, actor.username, actor.role) == (oscar.user_id, "oscar", Role.OPERATOR)
    (event,) = await _events(core, "auth.token.issue")
    assert (event.actor, event.object_name, event.outcome) == ("oscar", "oscar", "ok")
    assert "cli token for alice@server" in (event.detail or "")
    assert issued.token not in str(event.before) + str(event.after) + str(event.detail)


async def test_the_role_is_read_afresh_on_each_use(core: Core, admin: Actor) -> None:
    oscar = await make_user(core, "oscar", Role.OPERATOR)
    token = await _issue(core, oscar)
    await users.set_role(core, admin, "oscar", "viewer")
    assert (await tokens.authenticate(core, token, TokenKind.CLI)).role == Role.VIEWER


@pytest.mark.parametrize("wrong", ["", "not-a-token", "x" * 10_000, "\x00"])
async def test_unknown_tokens_are_refused(core: Core, admin: Actor, wrong: str) -> None:
    await _issue(core, admin)
    with pytest.raises(AuthenticationFailed) as caught:
        await tokens.authenticate(core, wrong, TokenKind.CLI)
    assert caught.value.message == tokens.ENDED


async def test_a_token_of_another_kind_is_refused(core: Core, admin: Actor) -> None:
    token = await _issue(core, admin)
    with pytest.raises(AuthenticationFailed):
        await tokens.authenticate(core, token, TokenKind.REFRESH)


async def test_logout_revokes_the_token_and_is_audited(core: Core, admin: Actor) -> None:
    token = await _issue(core, admin)
    ended = await tokens.revoke(core, token)
    assert ended is not None and ended.username == "root-admin"
    with pytest.raises(AuthenticationFailed) as caught:
        await tokens.authenticate(core, token, TokenKind.CLI)
    assert caught.value.message == tokens.ENDED
    assert (await _row(core, token)).revoked_at is not None
    (event,) = await _events(core, "auth.logout")
    assert (event.actor, event.object_name, event.outcome) == ("root-admin", "root-admin", "ok")
    assert await tokens.revoke(core, token) is None  # a second logout ends nothing and audits nothing
    assert len(await _events(core, "auth.logout")) == 1


async def test_logout_ends_only_that_login(core: Core, admin: Actor) -> None:
    first, second = await _issue(core, admin), await _issue(core, admin)
    await tokens.revoke(core, first)
    assert (await tokens.authenticate(core, second, TokenKind.CLI)).username == "root-admin"


async def test_a_disabled_account_ends_its_logins_for_good(core: Core, admin: Actor) -> None:
    await make_user(core, "root2", Role.ADMIN)
    oscar = await make_user(core, "oscar", Role.OPERATOR)
    token = await _issue(core, oscar)
    await users.disable_user(core, admin, "oscar")
    with pytest.raises(AuthenticationFailed, match="the account 'oscar' is disabled"):
        await tokens.authenticate(core, token, TokenKind.CLI)
    await users.enable_user(core, admin, "oscar")
    with pytest.raises(AuthenticationFailed) as caught:
        await tokens.authenticate(core, token, TokenKind.CLI)
    assert caught.value.message == tokens.ENDED
    assert (await tokens.authenticate(core, await _issue(core, oscar), TokenKind.CLI)).username == "oscar"


async def test_a_changed_password_ends_the_logins_before_it(core: Core, admin: Actor) -> None:
    oscar = await make_user(core, "oscar", Role.OPERATOR)
    token = await _issue(core, oscar)
    await users.set_password(core, oscar, "oscar", "another-pass-1")
    with pytest.raises(AuthenticationFailed, match="password of 'oscar' has changed since this login"):
        await tokens.authenticate(core, token, TokenKind.CLI)
    fresh = await users.login(core, "oscar", "another-pass-1")
    assert (await tokens.authenticate(core, await _issue(core, fresh), TokenKind.CLI)).username == "oscar"


async def test_a_deleted_account_takes_its_tokens_along(core: Core, admin: Actor) -> None:
    oscar = await make_user(core, "oscar", Role.OPERATOR)
    token = await _issue(core, oscar)
    await users.remove_user(core, admin, "oscar")
    async with core.db.session() as session:
        assert (await session.execute(select(AuthToken).where(AuthToken.user_id == oscar.user_id))).first() is None
    with pytest.raises(AuthenticationFailed):
        await tokens.authenticate(core, token, TokenKind.CLI)


async def test_an_expired_token_is_refused(core: Core, admin: Actor) -> None:
    token = await _issue(core, admin)
    await _set(core, token, expires_at=utcnow() - timedelta(seconds=1))
    with pytest.raises(AuthenticationFailed, match="the login of 'root-admin' has expired"):
        await tokens.authenticate(core, token, TokenKind.CLI, idle=IDLE)


async def test_use_slides_the_expiry_at_most_once_a_minute_and_never_past_the_cap(core: Core, admin: Actor) -> None:
    async with core.db.transaction() as session:  # the password is older than the backdated logins below
        since = utcnow() - timedelta(days=1)
        await session.execute(update(User).where(User.id == admin.user_id).values(password_changed_at=since))
    token = await _issue(core, admin)
    issued = await _row(core, token)
    # used 10 minutes after the login: expires 15 minutes after that use
    await _set(core, token, created_at=issued.created_at - timedelta(minutes=10))
    before = utcnow()
    await tokens.authenticate(core, token, TokenKind.CLI, idle=IDLE)
    used = await _row(core, token)
    assert used.used_at is not None and used.used_at >= before
    assert before + IDLE <= used.expires_at <= utcnow() + IDLE
    # another use within the minute writes nothing
    await tokens.authenticate(core, token, TokenKind.CLI, idle=IDLE)
    assert (await _row(core, token)).expires_at == used.expires_at
    # a use near the end of the 12 hours cannot carry it further
    created = utcnow() - tokens.CLI_MAX_AGE + timedelta(minutes=5)
    await _set(core, token, created_at=created, used_at=utcnow() - timedelta(minutes=2))
    await tokens.authenticate(core, token, TokenKind.CLI, idle=IDLE)
    assert (await _row(core, token)).expires_at == created + tokens.CLI_MAX_AGE


async def test_issuing_forgets_the_users_expired_tokens(core: Core, admin: Actor) -> None:
    old = await _issue(core, admin)
    await _set(core, old, expires_at=utcnow() - timedelta(minutes=1))
    await _issue(core, admin)
    async with core.db.session() as session:
        hashes = set((await session.execute(select(AuthToken.token_hash))).scalars())
    assert tokens.token_hash(old) not in hashes and len(hashes) == 1


async def test_no_token_for_an_actor_without_an_account(core: Core) -> None:
    from core.auth import SYSTEM

    with pytest.raises(AuthenticationFailed):
        await tokens.issue(core, SYSTEM, TokenKind.CLI, IDLE)
