"""Accounts and login on SQLite and PostgreSQL: throttling, locks, passwords, the last-admin guard."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from core import auth
from core.auth import Actor
from core.context import Core
from core.errors import AccountLocked, AuthenticationFailed, Conflict, PermissionDenied
from core.models import AuditEvent, Role, User, utcnow
from core.services import users

from .conftest import PASSWORD, make_user


async def _user(core: Core, name: str) -> User:
    async with core.db.session() as session:
        return (await session.execute(select(User).where(User.username == name))).scalar_one()


async def _set(core: Core, name: str, **values: Any) -> None:
    async with core.db.transaction() as session:
        await session.execute(update(User).where(User.username == name).values(**values))


async def _events(core: Core, action: str) -> list[AuditEvent]:
    async with core.db.session() as session:
        query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        return list((await session.execute(query)).scalars())


async def test_login_success_records_last_login_and_audits(core: Core, admin: Actor) -> None:
    await make_user(core, "oscar", Role.OPERATOR)
    before = utcnow()
    actor = await users.login(core, "  OSCAR ", PASSWORD)
    assert (actor.username, actor.role) == ("oscar", Role.OPERATOR)
    row = await _user(core, "oscar")
    assert row.last_login_at is not None and row.last_login_at >= before
    assert row.last_login_at.tzinfo is not None
    last = (await _events(core, "auth.login"))[-1]
    assert (last.actor, last.object_name, last.object_id, last.outcome) == ("oscar", "oscar", row.id, "ok")


async def test_wrong_password_is_recorded_and_audited(core: Core, admin: Actor) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        await users.login(core, "root-admin", "not-the-password")
    assert caught.value.message == users.BAD_CREDENTIALS
    row = await _user(core, "root-admin")
    assert row.failed_logins == 1
    assert row.last_failed_at is not None
    last = (await _events(core, "auth.login"))[-1]
    assert (last.object_name, last.outcome, last.detail) == ("root-admin", "failed", users.BAD_CREDENTIALS)
    await users.login(core, "root-admin", PASSWORD)  # success resets the count
    assert (await _user(core, "root-admin")).failed_logins == 0


class _SpyContext:
    """Wraps the real passlib context and records which hashes were verified against."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.checked: list[str] = []

    def verify(self, secret: str, hash: str) -> bool:
        self.checked.append(hash)
        return self.real.verify(secret, hash)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_unknown_user_costs_a_real_bcrypt_check(
    core: Core, admin: Actor, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _SpyContext(auth._context)
    monkeypatch.setattr(auth, "_context", spy)
    for password in ("whatever-pass", "x" * 100, "nul\x00byte-pass"):
        with pytest.raises(AuthenticationFailed) as caught:
            await users.login(core, "nobody", password)
        assert caught.value.message == users.BAD_CREDENTIALS  # same sentence as a wrong password
    assert spy.checked == [auth._DUMMY_HASH] * 3
    # the dummy is a real bcrypt hash at the same cost as stored ones, so it takes as long
    stored = (await _user(core, "root-admin")).password_hash
    assert auth._DUMMY_HASH[:7] == stored[:7]
    # a password bcrypt cannot take still costs one check against the user's own hash
    spy.checked.clear()
    with pytest.raises(AuthenticationFailed):
        await users.login(core, "root-admin", "x" * 100)
    assert len(spy.checked) == 1
    failed = [e for e in await _events(core, "auth.login") if e.outcome == "failed"]
    unknown = users.unknown_user_label(core, "nobody")  # never the typed name: it may be a password
    assert [e.object_name for e in failed] == [unknown, unknown, unknown, "root-admin"]


async def test_repeated_failures_are_throttled(core: Core, admin: Actor) -> None:
    for _ in range(auth.FREE_FAILURES):
        with pytest.raises(AuthenticationFailed) as caught:
            await users.login(core, "root-admin", "bad-password")
        assert not isinstance(caught.value, AccountLocked)
    # the next attempt comes too soon: refused even with the right password, and not counted
    with pytest.raises(AccountLocked) as caught:
        await users.login(core, "root-admin", PASSWORD)
    assert 0 < caught.value.retry_after_seconds <= 2
    assert "try again in" in caught.value.message
    assert (await _user(core, "root-admin")).failed_logins == auth.FREE_FAILURES
    assert (await _events(core, "auth.login"))[-1].outcome == "denied"
    # once the wait is over the right password works (the clock is moved, not slept)
    await _set(core, "root-admin", last_failed_at=utcnow() - timedelta(seconds=3))
    await users.login(core, "root-admin", PASSWORD)
    assert (await _user(core, "root-admin")).failed_logins == 0


def test_throttle_schedule() -> None:
    now = utcnow()
    assert auth.throttle_wait(auth.FREE_FAILURES - 1, now, now) == 0
    waits = [auth.throttle_wait(n, now, now) for n in range(auth.FREE_FAILURES, auth.FREE_FAILURES + 8)]
    assert waits == [2, 4, 8, 16, 32, 60, 60, 60]
    assert auth.throttle_wait(auth.FREE_FAILURES, now - timedelta(seconds=2), now) == 0


async def _lock(core: Core, name: str) -> None:
    """Bring the account to the brink, then fail once more."""
    await _set(core, name, failed_logins=auth.LOCK_AFTER - 1, last_failed_at=utcnow() - timedelta(hours=1))
    with pytest.raises(AuthenticationFailed):
        await users.login(core, name, "bad-password")


async def test_lock_after_many_failures_and_its_expiry(core: Core, admin: Actor) -> None:
    await make_user(core, "oscar", Role.OPERATOR)
    await _lock(core, "oscar")
    row = await _user(core, "oscar")
    assert row.locked_until is not None
    assert (
        timedelta(seconds=auth.LOCK_SECONDS - 5) < row.locked_until - utcnow() <= timedelta(seconds=auth.LOCK_SECONDS)
    )
    with pytest.raises(AccountLocked) as caught:
        await users.login(core, "oscar", PASSWORD)
    assert caught.value.retry_after_seconds > auth.LOCK_SECONDS - 10
    # the lock ends by itself
    past = utcnow() - timedelta(seconds=1)
    await _set(core, "oscar", locked_until=past, last_failed_at=past - timedelta(seconds=auth.MAX_DELAY))
    await users.login(core, "oscar", PASSWORD)
    row = await _user(core, "oscar")
    assert (row.failed_logins, row.locked_until) == (0, None)


async def test_user_enable_lifts_a_lock(core: Core, admin: Actor) -> None:
    await make_user(core, "oscar", Role.OPERATOR)
    await _lock(core, "oscar")
    enabled = await users.enable_user(core, admin, "oscar")
    assert (enabled.failed_logins, enabled.locked_until) == (0, None)
    await users.login(core, "oscar", PASSWORD)


async def test_password_change(core: Core, admin: Actor) -> None:
    vera = await make_user(core, "vera", Role.VIEWER)
    # a viewer may change their own password ...
    await users.set_password(core, vera, "vera", "vera-new-pass")
    with pytest.raises(AuthenticationFailed):
        await users.login(core, "vera", PASSWORD)
    vera = await users.login(core, "vera", "vera-new-pass")
    # ... but nobody else's
    with pytest.raises(PermissionDenied):
        await users.set_password(core, vera, "root-admin", "hijacked-pass")
    # an admin resets anyone's; consoles opened before the change are logged out
    await users.set_password(core, admin, "vera", "  reset by admin  ")
    assert await users.still_valid(core, vera) is None
    await users.login(core, "vera", "  reset by admin  ")  # spaces are kept, never stripped
    with pytest.raises(AuthenticationFailed):
        await users.login(core, "vera", "reset by admin")


async def test_disable_and_enable(core: Core, admin: Actor) -> None:
    oscar = await make_user(core, "oscar", Role.OPERATOR)
    disabled = await users.disable_user(core, admin, "oscar")
    assert disabled.disabled
    assert await users.still_valid(core, oscar) is None
    with pytest.raises(AuthenticationFailed, match="disabled"):
        await users.login(core, "oscar", PASSWORD)
    with pytest.raises(PermissionDenied, match="disabled"):  # a console that missed the check is refused too
        await users.list_users(core, oscar)
    await users.enable_user(core, admin, "oscar")
    assert await users.still_valid(core, await users.login(core, "oscar", PASSWORD)) is not None


async def test_still_valid_follows_role_changes_and_deletion(core: Core, admin: Actor) -> None:
    await make_user(core, "root2", Role.ADMIN)
    oscar = await make_user(core, "oscar", Role.OPERATOR)
    assert await users.still_valid(core, oscar) == oscar
    await users.set_role(core, admin, "oscar", "viewer")
    now = await users.still_valid(core, oscar)
    assert now is not None and now.role == Role.VIEWER
    await users.remove_user(core, admin, "oscar")
    assert await users.still_valid(core, oscar) is None
    assert await users.still_valid(core, auth.SYSTEM) == auth.SYSTEM


async def test_last_active_admin_cannot_be_demoted_disabled_or_deleted(core: Core, admin: Actor) -> None:
    for attempt, verb in (
        (users.set_role(core, admin, "root-admin", "operator"), "demote"),
        (users.disable_user(core, admin, "root-admin"), "disable"),
        (users.remove_user(core, admin, "root-admin"), "delete"),
    ):
        with pytest.raises(Conflict, match=f"cannot {verb} 'root-admin': it is the last active admin"):
            await attempt
    # a disabled second admin does not count
    await make_user(core, "root2", Role.ADMIN)
    await users.disable_user(core, admin, "root2")
    with pytest.raises(Conflict, match="last active admin"):
        await users.set_role(core, admin, "root-admin", "viewer")
    # an active one does
    await users.enable_user(core, admin, "root2")
    await users.set_role(core, admin, "root-admin", "operator")
    assert (await _user(core, "root-admin")).role == "operator"


async def test_user_names_are_unique_without_regard_to_case(core: Core, admin: Actor) -> None:
    await users.add_user(core, admin, "Bob", "viewer", PASSWORD)
    with pytest.raises(Conflict, match="a user named 'bob' already exists"):
        await users.add_user(core, admin, "BOB", "operator", PASSWORD)
    assert [u.username for u in await users.list_users(core, admin)] == ["bob", "root-admin"]


async def test_first_admin_only_while_there_are_no_users(core: Core) -> None:
    assert await users.count_users(core) == 0
    created = await users.create_first_admin(core, "Alice", PASSWORD)
    assert (created.username, created.role) == ("alice", "admin")
    with pytest.raises(Conflict, match="already initialised"):
        await users.create_first_admin(core, "mallory", PASSWORD)
    assert await users.count_users(core) == 1


async def test_logout_is_audited(core: Core, admin: Actor) -> None:
    await users.logout(core, admin)
    (event,) = await _events(core, "auth.logout")
    assert (event.actor, event.object_type, event.object_id, event.outcome) == (
        "root-admin",
        "user",
        admin.user_id,
        "ok",
    )


@pytest.mark.parametrize("name", ["\x00" * 100, "ad\x00min", "аdmin", "x" * 10_000, "admin'--", ""])
async def test_login_with_impossible_names_is_a_plain_failure(core: Core, admin: Actor, name: str) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        await users.login(core, name, PASSWORD)
    assert caught.value.message == users.BAD_CREDENTIALS
    last = (await _events(core, "auth.login"))[-1]
    assert last.outcome == "failed" and len(last.object_name) <= 64 and "\x00" not in last.object_name


async def test_an_unknown_name_reaches_audit_and_log_only_as_a_keyed_hash(core: Core, admin: Actor) -> None:
    """Keys arriving in a burst can put the password into the user field: a name that matches no
    account is never stored as typed (viewers read the audit trail)."""
    import os
    import stat

    from core import files

    files.private_dir(core.settings.data_dir)
    typed = "Correct-Horse-Battery-9"
    with pytest.raises(AuthenticationFailed):
        await users.login(core, typed, "whatever-it-was")
    label = users.unknown_user_label(core, typed.lower())
    assert label.startswith("unknown user #") and len(label) == len("unknown user #") + 12
    events = await _events(core, "auth.login")
    assert (events[-1].actor, events[-1].object_name, events[-1].outcome) == (label, label, "failed")
    stored = repr([(e.actor, e.object_name, e.detail, e.before, e.after) for e in events])
    assert typed.lower() not in stored.lower()
    assert core.settings.log_file is not None and typed.lower() not in core.settings.log_file.read_text().lower()
    # the same name gets the same label (repeated attempts stay visible), another name another one;
    # the key lives 0600 in the data directory, so every console labels alike
    assert users.unknown_user_label(core, "someone-else") != label
    second = Core.open(core.settings)
    try:
        assert users.unknown_user_label(second, typed.lower()) == label
    finally:
        await second.close()
    key = core.settings.data_dir / users.NAME_KEY_FILE
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
