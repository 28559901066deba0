"""Audit completeness: every changing operation writes exactly one event naming actor and object,
with secrets redacted; logins, failures and logouts are audited; the trail filters and pages."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from core.auth import Actor
from core.context import Core
from core.errors import AuthenticationFailed, Conflict, Invalid
from core.log import REDACTED
from core.models import AuditEvent, Boot, Role, User
from core.services import audit, machines, users

from .conftest import PASSWORD, make_user
from .test_permissions import OPS, Ctx, Op

CHANGING = [op for op in OPS if op.changes]


async def all_events(core: Core) -> list[AuditEvent]:
    async with core.db.session() as session:
        return list((await session.execute(select(AuditEvent).order_by(AuditEvent.id))).scalars())


async def stored_secrets(core: Core) -> list[str]:
    """Every password hash and CHAP secret in the database right now."""
    async with core.db.session() as session:
        hashes = (await session.execute(select(User.password_hash))).scalars().all()
        chap = (await session.execute(select(Boot.chap_secret).where(Boot.chap_secret.is_not(None)))).scalars().all()
    return [*hashes, *chap]


@pytest.mark.parametrize("op", CHANGING, ids=[f"{op.action}-{i}" for i, op in enumerate(CHANGING)])
async def test_every_change_writes_exactly_one_event(core: Core, admin: Actor, op: Op) -> None:
    actor = admin if Role.OPERATOR not in op.allowed else await make_user(core, "oscar", Role.OPERATOR)
    ctx = Ctx()
    if op.prepare is not None:
        await op.prepare(core, admin, ctx)
    before = await all_events(core)
    await op.run(core, actor, ctx)
    after = await all_events(core)
    assert len(after) == len(before) + 1, [e.action for e in after[len(before) :]]
    event = after[-1]
    assert (event.actor, event.action, event.outcome, event.object_type) == (
        actor.username,
        op.action,
        "ok",
        op.object_type,
    )
    assert event.at.tzinfo is not None
    expected_name = op.object_name(ctx) if op.object_name else actor.username
    assert event.object_name == expected_name
    if op.action != "machine.import":
        assert event.object_id is not None
    assert event.before is not None or event.after is not None
    # secrets appear only as the redaction mark, before and after
    dumped = json.dumps([event.before, event.after])
    for secret in await stored_secrets(core):
        assert secret not in dumped
    for side in (event.before, event.after):
        for key in ("password_hash", "chap_secret"):
            if side is not None and key in side:
                assert side[key] == REDACTED


async def test_before_and_after_show_what_changed(core: Core, admin: Actor) -> None:
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:12:34:56")
    await machines.update_machine(core, admin, "pc01", ip="192.168.1.30")
    event = (await all_events(core))[-1]
    assert (event.before["ip"], event.after["ip"]) == (None, "192.168.1.30")
    assert event.before["mac"] == event.after["mac"] == "52:54:00:12:34:56"
    await machines.remove_machine(core, admin, "pc01")
    event = (await all_events(core))[-1]
    assert event.after is None and event.before["name"] == "pc01"


async def test_failed_changes_write_no_event(core: Core, admin: Actor) -> None:
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:12:34:56")
    count = len(await all_events(core))
    with pytest.raises(Conflict):
        await machines.add_machine(core, admin, name="pc02", mac="52:54:00:12:34:56")
    with pytest.raises(Invalid):
        await machines.add_machine(core, admin, name="pc02", mac="nope")
    with pytest.raises(Conflict):
        await users.remove_user(core, admin, "root-admin")
    assert len(await all_events(core)) == count


async def test_logins_failures_and_logout_are_audited(core: Core, admin: Actor) -> None:
    start = len(await all_events(core))
    actor = await users.login(core, "root-admin", PASSWORD)
    with pytest.raises(AuthenticationFailed):
        await users.login(core, "root-admin", "wrong-password")
    with pytest.raises(AuthenticationFailed):
        await users.login(core, "ghost", "wrong-password")
    await users.logout(core, actor)
    events = (await all_events(core))[start:]
    ghost = users.unknown_user_label(core, "ghost")  # an unknown name is never stored as typed
    assert [(e.action, e.actor, e.object_name, e.outcome) for e in events] == [
        ("auth.login", "root-admin", "root-admin", "ok"),
        ("auth.login", "root-admin", "root-admin", "failed"),
        ("auth.login", ghost, ghost, "failed"),
        ("auth.logout", "root-admin", "root-admin", "ok"),
    ]
    for event in events:
        assert "wrong-password" not in json.dumps([event.before, event.after, event.detail])


async def test_list_filters_and_pages(core: Core, admin: Actor) -> None:
    oscar = await make_user(core, "oscar", Role.OPERATOR)
    for i in range(5):
        await machines.add_machine(core, oscar, name=f"pc{i}", mac=f"52:54:00:00:00:1{i}")
    await machines.update_machine(core, admin, "pc0", notes="spare")
    page, total = await audit.list_events(core, admin, actor_name="OSCAR", action="machine", limit=2)
    assert total == 5
    assert [e.object_name for e in page] == ["pc4", "pc3"]  # newest first
    page, _ = await audit.list_events(core, admin, actor_name="oscar", action="machine", limit=2, offset=4)
    assert [e.object_name for e in page] == ["pc0"]
    updates, total = await audit.list_events(core, admin, action="machine.update")
    assert total == 1 and updates[0].actor == "root-admin"
    # "machine" is a family: it must not match an action that merely starts with the same letters
    _, total = await audit.list_events(core, admin, action="machin")
    assert total == 0
    _, total = await audit.list_events(core, admin, object_name="pc3")
    assert total == 1
    for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}):
        with pytest.raises(Invalid):
            await audit.list_events(core, admin, **bad)


async def test_viewer_may_read_the_trail(core: Core, admin: Actor) -> None:
    viewer = await make_user(core, "vera", Role.VIEWER)
    events, total = await audit.list_events(core, viewer, limit=1000)
    assert total == len(events) > 0
