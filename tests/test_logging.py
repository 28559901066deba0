"""The log file: JSON lines with the actor and operation bound, and never a password or a CHAP
secret, also when something unexpected fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select, text

from core.auth import Actor
from core.context import Core
from core.errors import AuthenticationFailed, PermissionDenied
from core.log import get_logger
from core.models import Role
from core.services import machines, users

from .cli import ggnet_env, run_ggnet
from .conftest import PASSWORD, make_user

LOGIN_PW = "login-secret-1"
NEW_USER_PW = "new-user-secret-2"
CHANGED_PW = "changed-secret-3"


def log_lines(core: Core) -> list[dict]:
    path = Path(core.settings.log_file)
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]  # every line must be JSON


def assert_absent(core: Core, *secrets: str) -> None:
    text_ = Path(core.settings.log_file).read_text(encoding="utf-8")
    for secret in secrets:
        assert secret not in text_, f"{secret!r} reached the log"


async def test_secrets_never_reach_the_log(core: Core, admin: Actor) -> None:
    await users.set_password(core, admin, "root-admin", LOGIN_PW)
    actor = await users.login(core, "root-admin", LOGIN_PW)
    with pytest.raises(AuthenticationFailed):
        await users.login(core, "root-admin", LOGIN_PW + "-typo")
    with pytest.raises(AuthenticationFailed):
        await users.login(core, "nobody", LOGIN_PW + "-other")
    await users.add_user(core, actor, "oscar", "operator", NEW_USER_PW)
    await users.set_password(core, actor, "oscar", CHANGED_PW)
    operator = await users.login(core, "oscar", CHANGED_PW)
    await machines.add_machine(core, operator, name="pc01", mac="52:54:00:12:34:56")
    await machines.import_csv(core, operator, "name,mac\npc02,52:54:00:12:34:57\n")
    await _booted(core)  # each boot gets its own CHAP secret
    chap_secrets = [m.chap_secret for m in await machines.list_machines(core, operator)]
    secret = chap_secrets[0]
    assert all(chap_secrets) and len(set(chap_secrets)) == 2
    hashes = await _password_hashes(core)

    # an unexpected failure while secrets sit in local variables: the traceback is logged
    # (that is the point of the incident id) but without the values of locals
    def fails_holding_secrets(password: str, chap_secret: str) -> None:
        raise RuntimeError("something broke")

    try:
        fails_holding_secrets(LOGIN_PW, secret)
    except RuntimeError:
        get_logger().exception("unexpected error", incident="t1")
    # and a careless call that passes secrets by name is redacted
    get_logger().info("careless", password=LOGIN_PW, chap_secret=secret, new_password=NEW_USER_PW)

    lines = log_lines(core)
    assert any("RuntimeError: something broke" in line.get("exception", "") for line in lines)
    careless = next(line for line in lines if line["event"] == "careless")
    assert careless["password"] == careless["chap_secret"] == careless["new_password"] == "***"
    assert_absent(core, LOGIN_PW, NEW_USER_PW, CHANGED_PW, PASSWORD, *chap_secrets, *hashes)


async def _booted(core: Core) -> None:
    """A current boot for every machine, as the engine records one (with a new secret each)."""
    from core.models import Boot, Machine
    from core.services.machines import new_chap_secret

    async with core.db.transaction() as session:
        for machine in (await session.execute(select(Machine))).scalars():
            session.add(
                Boot(
                    server=core.settings.server_name,
                    machine_id=machine.id,
                    machine_name=machine.name,
                    mac=machine.mac,
                    origin="pc",
                    policy="fresh",
                    state="ready",
                    chap_secret=new_chap_secret(),
                )
            )


async def _password_hashes(core: Core) -> list[str]:
    async with core.db.session() as session:
        return list((await session.execute(text("SELECT password_hash FROM users"))).scalars())


async def test_lines_are_json_with_actor_and_operation(core: Core, admin: Actor) -> None:
    oscar = await make_user(core, "oscar", Role.OPERATOR)
    await machines.add_machine(core, oscar, name="pc01", mac="52:54:00:12:34:56")
    viewer = await make_user(core, "vera", Role.VIEWER)
    with pytest.raises(PermissionDenied):
        await machines.remove_machine(core, viewer, "pc01")
    lines = log_lines(core)
    assert lines and all({"event", "level", "timestamp"} <= set(line) for line in lines)
    created = [line for line in lines if line.get("operation") == "machine.create"]
    assert created and created[-1]["actor"] == "oscar" and created[-1]["object_name"] == "pc01"
    denied = [line for line in lines if line["event"] == "permission denied"]
    assert denied[-1]["actor"] == "vera" and denied[-1]["operation"] == "machine.delete"
    # the binding ends with the operation: later lines do not inherit it
    get_logger().info("afterwards")
    assert "actor" not in log_lines(core)[-1]


def _break_password_changes(core: Core) -> list[str]:
    """A database trigger that makes changing a password fail unexpectedly (a real database
    error, not a mock), while logins (which also update the users table) still work."""
    if core.db.dialect == "sqlite":
        return ["CREATE TRIGGER boom BEFORE UPDATE OF password_hash ON users BEGIN SELECT * FROM no_such_table; END"]
    return [
        "CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER boom BEFORE UPDATE OF password_hash ON users FOR EACH ROW EXECUTE FUNCTION boom()",
    ]


async def test_unexpected_failure_in_the_cli_logs_an_incident_without_secrets(
    core: Core, admin: Actor, tmp_path: Path
) -> None:
    await users.set_password(core, admin, "root-admin", LOGIN_PW)
    await users.add_user(core, admin, "vera", "viewer", NEW_USER_PW)
    async with core.db.engine.begin() as conn:
        for statement in _break_password_changes(core):
            await conn.execute(text(statement))
    env = ggnet_env(tmp_path, GGNET_DATABASE_URL=core.settings.database_url, GGNET_LOG_FILE=str(core.settings.log_file))
    result = run_ggnet(
        ["user", "passwd", "vera"], env, GGNET_USER="root-admin", GGNET_PASSWORD=LOGIN_PW, GGNET_NEW_PASSWORD=CHANGED_PW
    )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: unexpected ") and "details are in the ggnet log" in line
    incident = line.split("(incident ")[1].split(")")[0]
    logged = [entry for entry in log_lines(core) if entry.get("incident") == incident]
    assert logged and "Traceback" in logged[0]["exception"]
    assert "hidden due to hide_parameters" in logged[0]["exception"]  # no statement values quoted
    assert_absent(core, LOGIN_PW, NEW_USER_PW, CHANGED_PW, "$2b$")
