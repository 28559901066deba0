"""The permission matrix: every core service operation x every role, on SQLite and PostgreSQL.

Allowed calls succeed; refused ones raise PermissionDenied and leave a ``denied`` audit event.
To cover a new service operation, add ONE row to OPS (and a ``prepare`` helper if it needs
something to exist first). tests/test_audit.py reuses the rows that change data.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select

from core import auth
from core.auth import Actor
from core.context import Core
from core.errors import PermissionDenied
from core.models import AuditEvent, Role
from core.services import audit, images, machines, users

from .conftest import PASSWORD, make_user

ALL = frozenset(Role)
OPERATORS = frozenset({Role.OPERATOR, Role.ADMIN})
ADMINS = frozenset({Role.ADMIN})
_serial = itertools.count(1)


class Ctx:
    """Names unique to one attempt, so every role acts on its own objects in the same database."""

    def __init__(self) -> None:
        self.n = next(_serial)
        self.machine = f"pc{self.n}"
        self.mac = f"52:54:00:aa:{self.n // 256:02x}:{self.n % 256:02x}"
        self.ip = f"10.{self.n // 200}.{self.n % 200 + 1}.7"
        self.user = f"user{self.n}"
        self.image = f"img{self.n}"
        self.csv = f"name,mac\nimp{self.n},52:54:00:bb:{self.n // 256:02x}:{self.n % 256:02x}\n"


Step = Callable[[Core, Actor, Ctx], Awaitable[Any]]


@dataclass(frozen=True)
class Op:
    action: str  # the audit action the service writes
    allowed: frozenset[Role]
    run: Step
    prepare: Step | None = None  # run as the admin before the attempt
    object_type: str | None = None  # for changing operations: what the audit event names
    object_name: Callable[[Ctx], str] | None = None

    @property
    def changes(self) -> bool:
        return self.object_type is not None

    def __str__(self) -> str:
        return self.action


async def a_machine(core: Core, admin: Actor, ctx: Ctx) -> None:
    await machines.add_machine(core, admin, name=ctx.machine, mac=ctx.mac)


async def a_user(core: Core, admin: Actor, ctx: Ctx) -> None:
    await users.add_user(core, admin, ctx.user, "viewer", PASSWORD)


async def a_second_admin(core: Core, admin: Actor, ctx: Ctx) -> None:
    await users.add_user(core, admin, ctx.user, "admin", PASSWORD)


async def a_disabled_user(core: Core, admin: Actor, ctx: Ctx) -> None:
    await a_user(core, admin, ctx)
    await users.disable_user(core, admin, ctx.user)


def a_disk(core: Core) -> str:
    """A small raw disk beside the data directory, for the image operations."""
    path = core.settings.data_dir.parent / "disk.raw"
    if not path.exists():
        path.write_bytes(b"ggnet".ljust(1 << 20, b"\0"))
    return str(path)


async def an_image(core: Core, admin: Actor, ctx: Ctx) -> None:
    await images.import_image(core, admin, a_disk(core), name=ctx.image)


async def an_image_with_spare_version(core: Core, admin: Actor, ctx: Ctx) -> None:
    await an_image(core, admin, ctx)
    await images.import_image(core, admin, a_disk(core), new_version_of=ctx.image, activate=False)


async def a_machine_and_image(core: Core, admin: Actor, ctx: Ctx) -> None:
    await a_machine(core, admin, ctx)
    await an_image(core, admin, ctx)


M, U = (lambda c: c.machine), (lambda c: c.user)
I, I1, I2 = (lambda c: c.image), (lambda c: f"{c.image} v1"), (lambda c: f"{c.image} v2")  # noqa: E741 - a column of the permission table

# fmt: off
OPS: list[Op] = [
    # reads
    Op("user.list",        ALL, lambda c, a, x: users.list_users(c, a)),
    Op("user.show",        ALL, lambda c, a, x: users.get_user(c, a, "root-admin")),
    Op("machine.list",     ALL, lambda c, a, x: machines.list_machines(c, a)),
    Op("machine.count",    ALL, lambda c, a, x: machines.count_machines(c, a)),
    Op("machine.show",     ALL, lambda c, a, x: machines.get_machine(c, a, x.machine), a_machine),
    Op("machine.check_csv", ALL, lambda c, a, x: machines.check_csv(c, a, x.csv)),
    Op("audit.list",       ALL, lambda c, a, x: audit.list_events(c, a, limit=5)),
    Op("image.list",       ALL, lambda c, a, x: images.list_images(c, a)),
    Op("image.show",       ALL, lambda c, a, x: images.get_image(c, a, x.image), an_image),
    Op("image.versions",   ALL, lambda c, a, x: images.list_versions(c, a, x.image), an_image),
    # changes: (action, roles, call, prepare, object type, object name)
    Op("machine.create",   OPERATORS, lambda c, a, x: machines.add_machine(c, a, name=x.machine, mac=x.mac), None, "machine", M),
    Op("machine.update",   OPERATORS, lambda c, a, x: machines.update_machine(c, a, x.machine, ip=x.ip, boot_mode="uefi"), a_machine, "machine", M),
    Op("machine.delete",   OPERATORS, lambda c, a, x: machines.remove_machine(c, a, x.machine), a_machine, "machine", M),
    Op("machine.import",   OPERATORS, lambda c, a, x: machines.import_csv(c, a, x.csv, source="lab.csv"), None, "machine", lambda x: "1 machines from lab.csv"),
    Op("image.import",     OPERATORS, lambda c, a, x: images.import_image(c, a, a_disk(c), name=x.image), None, "image", I1),
    Op("image.version.add", OPERATORS, lambda c, a, x: images.import_image(c, a, a_disk(c), new_version_of=x.image), an_image, "image", I2),
    Op("image.activate",   OPERATORS, lambda c, a, x: images.activate_version(c, a, x.image, 2), an_image_with_spare_version, "image", I2),
    Op("image.version.delete", OPERATORS, lambda c, a, x: images.remove_image(c, a, x.image, 2), an_image_with_spare_version, "image", I2),
    Op("image.delete",     OPERATORS, lambda c, a, x: images.remove_image(c, a, x.image), an_image, "image", I),
    Op("image.update",     OPERATORS, lambda c, a, x: images.set_efi_loader(c, a, x.image, "\\EFI\\BOOT\\shimx64.efi"), an_image, "image", I),
    Op("machine.assign_image", OPERATORS, lambda c, a, x: images.assign_image(c, a, x.machine, x.image, 1), a_machine_and_image, "machine", M),
    Op("user.create",      ADMINS, lambda c, a, x: users.add_user(c, a, x.user, "operator", PASSWORD), None, "user", U),
    Op("user.set_role",    ADMINS, lambda c, a, x: users.set_role(c, a, x.user, "operator"), a_user, "user", U),
    Op("user.disable",     ADMINS, lambda c, a, x: users.disable_user(c, a, x.user), a_user, "user", U),
    Op("user.enable",      ADMINS, lambda c, a, x: users.enable_user(c, a, x.user), a_disabled_user, "user", U),
    Op("user.passwd",      ADMINS, lambda c, a, x: users.set_password(c, a, x.user, "another-pass-9"), a_user, "user", U),
    Op("user.delete",      ADMINS, lambda c, a, x: users.remove_user(c, a, x.user), a_second_admin, "user", U),
    # changing one's own password needs no more than the right to log in
    Op("user.passwd",      ALL, lambda c, a, x: users.set_password(c, a, a.username, "my-new-pass-1"), None, "user", None),
]
# fmt: on


async def denied_events(core: Core, username: str) -> list[AuditEvent]:
    async with core.db.session() as session:
        query = select(AuditEvent).where(AuditEvent.actor == username, AuditEvent.outcome == "denied")
        return list((await session.execute(query.order_by(AuditEvent.id))).scalars())


async def audit_count(core: Core) -> int:
    async with core.db.session() as session:
        return int((await session.execute(select(func.count()).select_from(AuditEvent))).scalar_one())


@pytest.mark.parametrize("op", OPS, ids=[f"{op.action}-{i}" for i, op in enumerate(OPS)])
async def test_permission_matrix(core: Core, admin: Actor, op: Op) -> None:
    for role in (Role.VIEWER, Role.OPERATOR, Role.ADMIN):
        actor = admin if role == Role.ADMIN else await make_user(core, f"as-{role.value}", role)
        ctx = Ctx()
        if op.prepare is not None:
            await op.prepare(core, admin, ctx)
        before = await denied_events(core, actor.username)
        if role in op.allowed:
            await op.run(core, actor, ctx)
            assert await denied_events(core, actor.username) == before, f"{role.value} was refused {op}"
            continue
        with pytest.raises(PermissionDenied) as caught:
            await op.run(core, actor, ctx)
        assert f"{role.value} '{actor.username}' may not" in caught.value.message
        after = await denied_events(core, actor.username)
        assert len(after) == len(before) + 1, f"refusing {op} to {role.value} left no audit event"
        assert (after[-1].action, after[-1].outcome) == (op.action, "denied")
        assert "may not" in (after[-1].detail or "")


def test_every_permission_belongs_to_admins_and_viewers_only_read() -> None:
    assert auth.PERMISSIONS[Role.ADMIN] == frozenset(auth.Permission)
    assert auth.PERMISSIONS[Role.VIEWER] == {auth.Permission.READ}
    assert auth.Permission.READ_SECRETS in auth.PERMISSIONS[Role.OPERATOR]
    assert auth.Permission.MANAGE_USERS not in auth.PERMISSIONS[Role.OPERATOR]
    assert auth.Permission.MANAGE_SETTINGS not in auth.PERMISSIONS[Role.OPERATOR]


async def booted(core: Core, name: str) -> None:
    """A current boot with its CHAP secret, as the engine records one."""
    from sqlalchemy import select

    from core.models import Boot, Machine
    from core.services.machines import new_chap_secret

    async with core.db.transaction() as session:
        machine = (await session.execute(select(Machine).where(Machine.name == name))).scalar_one()
        session.add(
            Boot(
                server=core.settings.server_name,
                machine_id=machine.id,
                machine_name=name,
                mac=machine.mac,
                origin="pc",
                policy="fresh",
                state="ready",
                chap_secret=new_chap_secret(),
            )
        )


async def test_viewers_never_see_chap_secrets(core: Core, admin: Actor) -> None:
    viewer = await make_user(core, "vera", Role.VIEWER)
    operator = await make_user(core, "oscar", Role.OPERATOR)
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:12:34:56")
    await booted(core, "pc01")
    assert (await machines.get_machine(core, viewer, "pc01")).chap_secret is None
    assert [m.chap_secret for m in await machines.list_machines(core, viewer)] == [None]
    secret = (await machines.get_machine(core, operator, "pc01")).chap_secret
    assert secret is not None and len(secret) == 16
    # an operator demoted while their console is open stops seeing secrets at once
    await users.set_role(core, admin, "oscar", "viewer")
    assert (await machines.get_machine(core, operator, "pc01")).chap_secret is None
    assert [m.chap_secret for m in await machines.list_machines(core, operator)] == [None]


async def test_role_is_read_from_the_database_not_the_actor(core: Core, admin: Actor) -> None:
    """A console holding an old Actor cannot keep powers the account has lost."""
    oscar = await make_user(core, "oscar", Role.OPERATOR)
    await users.set_role(core, admin, "oscar", "viewer")
    with pytest.raises(PermissionDenied, match="viewer 'oscar' may not manage machines"):
        await machines.add_machine(core, oscar, name="pc01", mac="52:54:00:12:34:56")
    forged = Actor(oscar.user_id, "oscar", Role.ADMIN)
    with pytest.raises(PermissionDenied):
        await users.add_user(core, forged, "eve", "admin", PASSWORD)
    await users.remove_user(core, admin, "oscar")
    with pytest.raises(PermissionDenied, match="no longer exists"):
        await machines.list_machines(core, oscar)
    assert [e.action for e in await denied_events(core, "oscar")] == ["machine.create", "user.create", "read"]
