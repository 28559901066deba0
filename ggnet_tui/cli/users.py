"""`ggnet init` and `ggnet user ...`."""

from __future__ import annotations

import click

from core.errors import GgnetError

from .base import State, details, emit_json, json_option, new_password, run, table

# --- init -------------------------------------------------------------------


@click.command()
@click.option("--admin", "admin", required=True, metavar="NAME", help="Name of the first admin.")
@run
async def init(state: State, admin: str) -> None:
    """Create or upgrade the database and the first admin (only while there are no users)."""
    from core.services import users

    core = await state.open(create=True)
    if await users.count_users(core):
        raise GgnetError("ggnet is already initialised: users exist; ask an admin to add you with 'ggnet user add'")
    user = await users.create_first_admin(core, admin, new_password(admin))
    click.echo(f"initialised {core.db.kind} database at {core.db.safe_url}; admin '{user.username}' created")


# --- users ------------------------------------------------------------------


@click.group()
def user() -> None:
    """Manage ggnet accounts (admins only)."""


USER_COLUMNS = ["username", "role", "disabled", "last_login_at", "failed_logins", "locked_until"]


@user.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(["admin", "operator", "viewer"]))
@run
async def user_add(state: State, name: str, role: str) -> None:
    """Add an account; the password comes from GGNET_NEW_PASSWORD or a prompt."""
    from core.services import users

    core, actor = await state.login()
    created = await users.add_user(core, actor, name, role, new_password(name))
    click.echo(f"user '{created.username}' added as {created.role}")


@user.command("list")
@json_option
@run
async def user_list(state: State, as_json: bool) -> None:
    from core.services import users

    core, actor = await state.login()
    rows = [u.to_json() for u in await users.list_users(core, actor)]
    emit_json(rows) if as_json else table(rows, USER_COLUMNS)


@user.command("show")
@click.argument("name")
@json_option
@run
async def user_show(state: State, name: str, as_json: bool) -> None:
    from core.services import users

    core, actor = await state.login()
    data = (await users.get_user(core, actor, name)).to_json()
    emit_json(data) if as_json else details(data)


local_option = click.option(
    "--local", is_flag=True, help="Break-glass: as root on the boot server, without a ggnet login (audited)."
)


@user.command("passwd")
@click.argument("name")
@local_option
@run
async def user_passwd(state: State, name: str, local: bool) -> None:
    """Set a password (admins: anyone's; others: their own)."""
    from core.services import users

    core, actor = await state.login_or_local(local)
    changed = await users.set_password(core, actor, name, new_password(name))
    click.echo(f"password of '{changed.username}' changed")


@user.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice(["admin", "operator", "viewer"]))
@run
async def user_role(state: State, name: str, role: str) -> None:
    """Change an account's role."""
    from core.services import users

    core, actor = await state.login()
    changed = await users.set_role(core, actor, name, role)
    click.echo(f"user '{changed.username}' is now {changed.role}")


@user.command("disable")
@click.argument("name")
@run
async def user_disable(state: State, name: str) -> None:
    from core.services import users

    core, actor = await state.login()
    changed = await users.disable_user(core, actor, name)
    click.echo(f"user '{changed.username}' disabled")


@user.command("enable")
@click.argument("name")
@local_option
@run
async def user_enable(state: State, name: str, local: bool) -> None:
    """Enable an account (also lifts a login lock)."""
    from core.services import users

    core, actor = await state.login_or_local(local)
    changed = await users.enable_user(core, actor, name)
    click.echo(f"user '{changed.username}' enabled")


@user.command("rm")
@click.argument("name")
@run
async def user_rm(state: State, name: str) -> None:
    from core.services import users

    core, actor = await state.login()
    await users.remove_user(core, actor, name)
    click.echo(f"user '{name.strip().lower()}' removed")
