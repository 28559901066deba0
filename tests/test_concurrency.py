"""Two consoles at once, for real: separate Core instances (engines, connection pools) on one
database, racing with asyncio.gather. On SQLite this exercises WAL, the busy timeout and
BEGIN IMMEDIATE; on PostgreSQL the unique indexes, row versions and locks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from core.auth import Actor
from core.context import Core
from core.db import Database, head_revision
from core.errors import AccountLocked, AuthenticationFailed, Conflict, DatabaseBusy, PermissionDenied, StaleEdit
from core.models import AuditEvent, Machine, Role, User, utcnow
from core.services import machines, users

from .conftest import PASSWORD, make_user
from .test_migrations import empty_url  # noqa: F401 - a fixture

ROUNDS = 5


@pytest.fixture
async def other(core: Core) -> AsyncIterator[Core]:
    """A second console: its own engine on the same database."""
    second = Core.open(core.settings)
    for console in (core, second):  # connected beforehand, so neither gets a head start
        async with console.db.session() as session:
            await session.execute(select(1))
    yield second
    await second.close()


def outcomes(results: list[Any]) -> tuple[list[Any], list[BaseException]]:
    ok = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, BaseException)]
    return ok, failed


async def test_same_mac_added_twice_at_once(core: Core, other: Core, admin: Actor) -> None:
    oscar = await make_user(core, "oscar", Role.OPERATOR)
    for i in range(ROUNDS):
        mac = f"52:54:00:00:01:{i:02x}"
        results = await asyncio.gather(
            machines.add_machine(core, admin, name=f"a{i}", mac=mac),
            machines.add_machine(other, oscar, name=f"b{i}", mac=mac.upper()),
            return_exceptions=True,
        )
        ok, failed = outcomes(results)
        assert len(ok) == 1, results
        assert len(failed) == 1 and isinstance(failed[0], Conflict), results
        assert "mac" in failed[0].message.lower() or "MAC" in failed[0].message
    async with core.db.session() as session:
        assert (await session.execute(select(func.count()).select_from(Machine))).scalar_one() == ROUNDS


async def test_insert_waits_for_an_uncommitted_clash(core: Core, other: Core, admin: Actor) -> None:
    """The second console passes its clash check while the first has not committed yet:
    the database (unique index on PostgreSQL, write lock on SQLite) still lets only one in."""
    adding: asyncio.Task[Any] | None = None
    async with other.db.transaction() as session:
        session.add(
            Machine(
                name="first",
                mac="52:54:00:00:02:01",
                initiator_iqn="iqn.2024-01.lan.ggnet:first",
                chap_username="first",
                updated_by="test",
            )
        )
        await session.flush()
        adding = asyncio.create_task(machines.add_machine(core, admin, name="second", mac="52:54:00:00:02:01"))
        await asyncio.sleep(0.3)  # let it reach the database and wait there (the result does not depend on it)
        assert not adding.done()
    with pytest.raises(Conflict):
        await adding


async def test_two_edits_of_one_machine_at_once(core: Core, other: Core, admin: Actor) -> None:
    oscar = await make_user(core, "oscar", Role.OPERATOR)
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:12:34:56")
    for i in range(ROUNDS):
        version = (await machines.get_machine(core, admin, "pc01")).row_version
        results = await asyncio.gather(
            machines.update_machine(core, admin, "pc01", expected_version=version, notes=f"admin {i}"),
            machines.update_machine(other, oscar, "pc01", expected_version=version, notes=f"oscar {i}"),
            return_exceptions=True,
        )
        ok, failed = outcomes(results)
        assert len(ok) == 1, results
        assert len(failed) == 1 and isinstance(failed[0], StaleEdit), results
        assert "changed by" in failed[0].message and failed[0].message.endswith("reload")
        now = await machines.get_machine(core, admin, "pc01")
        assert now.row_version == version + 1
        assert now.notes == ok[0].notes  # the winner's edit, not a mix


async def test_stale_edit_names_who_and_when(core: Core, admin: Actor) -> None:
    oscar = await make_user(core, "oscar", Role.OPERATOR)
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:12:34:56")
    seen = await machines.get_machine(core, admin, "pc01")  # both operators open the same form
    saved = await machines.update_machine(core, oscar, "pc01", expected_version=seen.row_version, ip="192.168.1.5")
    with pytest.raises(StaleEdit) as caught:
        await machines.update_machine(core, admin, "pc01", expected_version=seen.row_version, ip="192.168.1.6")
    when = saved.updated_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert caught.value.message == f"machine 'pc01' was changed by oscar at {when}; reload"
    assert (await machines.get_machine(core, admin, "pc01")).ip == "192.168.1.5"


async def test_two_first_admins_at_once(core: Core, other: Core) -> None:
    results = await asyncio.gather(
        users.create_first_admin(core, "alice", PASSWORD),
        users.create_first_admin(other, "bob", PASSWORD),
        return_exceptions=True,
    )
    ok, failed = outcomes(results)
    assert len(ok) == 1 and len(failed) == 1 and isinstance(failed[0], Conflict), results
    assert await users.count_users(core) == 1


async def test_two_admins_disabling_each_other_at_once(core: Core, other: Core, admin: Actor) -> None:
    """The last-admin guard must hold when two admins act at the same moment."""
    second = await make_user(core, "root2", Role.ADMIN)
    results = await asyncio.gather(
        users.disable_user(core, admin, "root2"),
        users.disable_user(other, second, "root-admin"),
        return_exceptions=True,
    )
    async with core.db.session() as session:
        active = (
            await session.execute(
                select(func.count()).select_from(User).where(User.role == "admin", User.disabled.is_(False))
            )
        ).scalar_one()
    assert active >= 1, results
    ok, failed = outcomes(results)
    assert len(ok) == 1, results
    # the loser is refused either as the last admin's guard or, when it ran second, as disabled itself
    assert isinstance(failed[0], (Conflict, PermissionDenied)), results
    assert "last active admin" in failed[0].message or "is disabled" in failed[0].message


async def test_two_consoles_upgrading_a_new_database_at_once(empty_url: str) -> None:  # noqa: F811
    first, second = Database(empty_url), Database(empty_url)
    try:
        results = await asyncio.gather(first.upgrade(), second.upgrade(), return_exceptions=True)
        assert results == [None, None]
        assert await first.current_revision() == await second.current_revision() == head_revision()
    finally:
        await first.dispose()
        await second.dispose()


async def test_import_racing_an_uncommitted_clash_imports_nothing(core: Core, other: Core, admin: Actor) -> None:
    from core.services.machines import CsvRowError

    csv = "name,mac\npc10,52:54:00:00:03:10\npc11,52:54:00:00:03:11\n"
    async with other.db.transaction() as session:
        session.add(
            Machine(
                name="first",
                mac="52:54:00:00:03:11",
                initiator_iqn="iqn.2024-01.lan.ggnet:first",
                chap_username="first",
                updated_by="test",
            )
        )
        await session.flush()
        importing = asyncio.create_task(machines.import_csv(core, admin, csv))
        await asyncio.sleep(0.3)  # let it reach the database and wait there (the result does not depend on it)
    # PostgreSQL: the bulk INSERT hits the unique index (Conflict); SQLite: the import waited for
    # the write lock and then found the clash (a bad row)
    with pytest.raises((Conflict, CsvRowError)):
        await importing
    assert [m.name for m in await machines.list_machines(core, admin)] == ["first"]


# --- one user, many commands at once ----------------------------------------------------------


async def test_twenty_commands_of_one_user_at_once_all_succeed(core: Core, admin: Actor, tmp_path: Path) -> None:
    """Twenty scripts and consoles of one user: every login updates the same row. None may fail
    (PostgreSQL used to answer 11 of 12 with "unexpected StaleDataError")."""
    from .cli import ggnet_env, ggnet_executable

    await make_user(core, "oscar", Role.OPERATOR)
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:12:34:56")
    env = {
        **ggnet_env(tmp_path),
        "GGNET_DATABASE_URL": core.settings.database_url,
        "GGNET_USER": "oscar",
        "GGNET_PASSWORD": PASSWORD,
    }
    procs = [
        await asyncio.create_subprocess_exec(
            ggnet_executable(),
            "machine",
            "list",
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(20)
    ]
    results = await asyncio.gather(*(p.communicate() for p in procs))
    failures = [(p.returncode, err.decode()) for p, (_out, err) in zip(procs, results, strict=True) if p.returncode]
    assert failures == []
    assert all(b"pc01" in out for out, _err in results)
    async with core.db.session() as session:
        logins = (
            await session.execute(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == "auth.login", AuditEvent.actor == "oscar", AuditEvent.outcome == "ok")
            )
        ).scalar_one()
        oscar = (await session.execute(select(User).where(User.username == "oscar"))).scalar_one()
    assert logins == 21  # make_user's own login and the twenty
    assert oscar.row_version == 1  # logging in is not an edit of the account


async def _guess_at_once(consoles: list[Core], name: str, count: int) -> list[Any]:
    return await asyncio.gather(
        *(users.login(consoles[i % len(consoles)], name, f"wrong-guess-{i}") for i in range(count)),
        return_exceptions=True,
    )


async def test_ninety_wrong_guesses_at_once_are_all_counted_and_audited(
    core: Core, admin: Actor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core import auth

    # throttling off for this test: each guess must then be counted (none may be lost)
    monkeypatch.setattr(auth, "FREE_FAILURES", 1000)
    monkeypatch.setattr(auth, "LOCK_AFTER", 1000)
    consoles = [core, *(Core.open(core.settings) for _ in range(5))]
    try:
        results = await _guess_at_once(consoles, "root-admin", 90)
    finally:
        for console in consoles[1:]:
            await console.close()
    assert all(isinstance(r, AuthenticationFailed) and r.message == users.BAD_CREDENTIALS for r in results), results
    async with core.db.session() as session:
        row = (await session.execute(select(User).where(User.username == "root-admin"))).scalar_one()
        failed = (
            await session.execute(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == "auth.login", AuditEvent.outcome == "failed")
            )
        ).scalar_one()
    assert (row.failed_logins, failed, row.row_version) == (90, 90, 1)


async def test_a_burst_of_guesses_locks_the_account_and_loses_no_event(core: Core, admin: Actor) -> None:
    """With the real throttle: every attempt is audited (failed or refused), the counter equals the
    failures audited, the account ends locked, and a right password in the burst does not get in."""
    from core import auth

    consoles = [core, *(Core.open(core.settings) for _ in range(5))]
    try:
        results = await _guess_at_once(consoles, "root-admin", 60)
        late = await asyncio.gather(users.login(core, "root-admin", PASSWORD), return_exceptions=True)
    finally:
        for console in consoles[1:]:
            await console.close()
    assert all(isinstance(r, AuthenticationFailed) for r in results)
    assert isinstance(late[0], AccountLocked)
    async with core.db.session() as session:
        row = (await session.execute(select(User).where(User.username == "root-admin"))).scalar_one()
        outcomes = (
            await session.execute(
                select(AuditEvent.outcome, func.count())
                .where(AuditEvent.action == "auth.login", AuditEvent.id > 2)
                .group_by(AuditEvent.outcome)
            )
        ).all()
    counted = dict(outcomes)
    assert counted.get("failed", 0) + counted.get("denied", 0) == 61
    assert row.failed_logins == counted["failed"] >= auth.FREE_FAILURES
    assert row.locked_until is not None or auth.throttle_wait(row.failed_logins, row.last_failed_at, utcnow()) > 0


async def test_a_login_never_conflicts_with_an_admins_edit(core: Core, other: Core, admin: Actor) -> None:
    """Logging in writes the counters without touching row_version: an admin's form opened before
    stays valid, and both land."""
    oscar = await make_user(core, "oscar", Role.OPERATOR)
    seen = (await users.get_user(core, admin, "oscar")).row_version
    for _ in range(2):  # within the free failures: no wait before the right password
        with pytest.raises(AuthenticationFailed):
            await users.login(other, "oscar", "not-the-password")
    await users.login(other, "oscar", PASSWORD)
    changed = await users.set_role(core, admin, "oscar", "viewer", expected_version=seen)
    assert (changed.role, changed.row_version) == ("viewer", seen + 1)
    assert oscar.user_id is not None


async def test_writers_of_one_process_take_turns_and_one_held_too_long_is_refused(tmp_path: Path) -> None:
    """SQLite: this process's write transactions queue for the write lock in order (woken when the
    one before commits, not by SQLite's polling); one that waits longer than GGNET_DB_BUSY_SECONDS
    is refused with the busy sentence, and the lock is free again afterwards."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}", busy_seconds=0.3)
    order: list[str] = []
    holding, release = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with database.transaction():
            order.append("first in")
            holding.set()
            await release.wait()
            order.append("first out")

    async def second() -> None:
        await holding.wait()
        async with database.transaction():
            order.append("second in")

    try:
        held = asyncio.create_task(first())
        await holding.wait()
        with pytest.raises(DatabaseBusy, match="another change in this process has held its write lock for over 0.3 s"):
            async with database.transaction():
                pass
        waiting = asyncio.create_task(second())
        await asyncio.sleep(0.1)
        assert order == ["first in"]  # the second waits for the first
        release.set()
        await asyncio.wait_for(asyncio.gather(held, waiting), 5)
        assert order == ["first in", "first out", "second in"]
        async with database.transaction():  # free again
            pass
    finally:
        await database.dispose()
