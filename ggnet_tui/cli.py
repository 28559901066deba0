"""The `ggnet` command line. It parses arguments, calls core services and prints results.

Exit status: 0 success; 1 refused, invalid, not found or denied (``error: <sentence>``
on stderr); 2 usage errors.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import sys
import uuid
from functools import wraps
from pathlib import Path
from typing import Any, Awaitable, Callable

import click

from core.errors import GgnetError, Invalid

NEW_PASSWORD_ENV = "GGNET_NEW_PASSWORD"


class State:
    """Per-invocation context: settings, core, and the logged-in actor once known."""

    def __init__(self, config_file: str | None, user: str | None) -> None:
        self.config_file = config_file
        self.user_option = user
        self._core: Any = None

    @property
    def settings(self):  # type: ignore[no-untyped-def]
        return self.core.settings

    @property
    def core(self):  # type: ignore[no-untyped-def]
        if self._core is None:
            from core.config import load_settings
            from core.context import Core
            from core.log import configure_logging

            settings = load_settings(self.config_file)
            configure_logging(settings.log_file)
            self._core = Core.open(settings)
        return self._core

    async def open(self) -> Any:
        """Core with an up-to-date schema (older databases are upgraded, newer refused)."""
        await self.core.db.upgrade()
        return self.core

    async def login(self) -> Any:
        from core.services import users

        core = await self.open()
        username = self.user_option or core.settings.user
        if not username:
            raise Invalid("user", "is required: pass --user NAME or set GGNET_USER")
        password = core.settings.password
        if password is None:
            if not sys.stdin.isatty():
                raise Invalid("password", "is required: set GGNET_PASSWORD or run from a terminal to be asked")
            password = getpass.getpass(f"password for {username}: ")
        return core, await users.login(core, username, password)

    async def close(self) -> None:
        if self._core is not None:
            await self._core.close()


def new_password(prompt_for: str) -> str:
    """A new user's password: GGNET_NEW_PASSWORD or a prompt without echo (never argv)."""
    value = os.environ.get(NEW_PASSWORD_ENV)
    if value is not None:
        return value
    if not sys.stdin.isatty():
        raise Invalid("password", f"is required: set {NEW_PASSWORD_ENV} or run from a terminal to be asked")
    first = getpass.getpass(f"new password for {prompt_for}: ")
    if getpass.getpass("again: ") != first:
        raise Invalid("password", "the two entries differ")
    return first


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)


def run(func: Callable[..., Awaitable[int | None]]) -> Callable[..., None]:
    """Run an async command; turn domain errors into ``error:`` lines and exit status 1."""

    @wraps(func)
    @click.pass_obj
    def wrapper(state: State, *args: Any, **kwargs: Any) -> None:
        async def go() -> int | None:
            try:
                return await func(state, *args, **kwargs)
            finally:
                await state.close()

        try:
            code = asyncio.run(go())
        except GgnetError as exc:
            from core.services.machines import CsvRowError

            if isinstance(exc, CsvRowError):
                for line, reason in exc.rows:
                    fail(f"{exc.source} line {line}: {reason}")
                fail("nothing was imported")
            else:
                fail(exc.message)
            sys.exit(1)
        except KeyboardInterrupt:
            fail("interrupted")
            sys.exit(130)
        except Exception as exc:  # an unexpected failure: logged with an id, no traceback on screen
            incident = uuid.uuid4().hex[:8]
            try:
                from core.log import get_logger

                get_logger().exception("unexpected error", incident=incident)
            except Exception:
                pass
            fail(f"unexpected {type(exc).__name__} (incident {incident}); details are in the ggnet log")
            sys.exit(1)
        sys.exit(code or 0)

    return wrapper


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def details(data: dict[str, Any]) -> None:
    width = max(len(k) for k in data)
    for key, value in data.items():
        click.echo(f"{key.ljust(width)}  {'' if value is None else value}")


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", metavar="FILE", help="TOML settings file (default: GGNET_CONFIG).")
@click.option("--user", "-u", metavar="NAME", help="Act as this ggnet user (default: GGNET_USER).")
@click.version_option(package_name="ggnet")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, user: str | None) -> None:
    """ggnet: the operator console of a diskless-boot server. Without a command, opens the console."""
    ctx.obj = State(config_file, user)
    if ctx.invoked_subcommand is None:
        from .app import run_console

        sys.exit(run_console(ctx.obj))


# --- init -------------------------------------------------------------------


@main.command()
@click.option("--admin", "admin", required=True, metavar="NAME", help="Name of the first admin.")
@run
async def init(state: State, admin: str) -> None:
    """Create or upgrade the database and the first admin (only while there are no users)."""
    from core.services import users

    core = await state.open()
    if await users.count_users(core):
        raise GgnetError("ggnet is already initialised: users exist; ask an admin to add you with 'ggnet user add'")
    user = await users.create_first_admin(core, admin, new_password(admin))
    click.echo(f"initialised {core.db.kind} database at {core.db.safe_url}; admin '{user.username}' created")


# --- users ------------------------------------------------------------------


@main.group()
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


@user.command("passwd")
@click.argument("name")
@run
async def user_passwd(state: State, name: str) -> None:
    """Set a password (admins: anyone's; others: their own)."""
    from core.services import users

    core, actor = await state.login()
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
@run
async def user_enable(state: State, name: str) -> None:
    """Enable an account (also lifts a login lock)."""
    from core.services import users

    core, actor = await state.login()
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


# --- machines ---------------------------------------------------------------


@main.group()
def machine() -> None:
    """Register and edit client PCs."""


MACHINE_COLUMNS = ["name", "mac", "ip", "boot_mode", "image", "pinned_version"]
BOOT_MODES = click.Choice(["bios", "uefi", "uefi-secure"])


@machine.command("add")
@click.argument("name")
@click.option("--mac", required=True, help="MAC address in any common notation.")
@click.option("--ip", default=None, help="IPv4 address (optional).")
@click.option("--boot-mode", type=BOOT_MODES, default="bios", show_default=True)
@click.option("--initiator-iqn", default=None, help="Initiator IQN (default: generated from the name).")
@json_option
@run
async def machine_add(state: State, name: str, mac: str, ip: str | None, boot_mode: str,
                      initiator_iqn: str | None, as_json: bool) -> None:
    from core.services import machines

    core, actor = await state.login()
    fields: dict[str, Any] = {"name": name, "mac": mac, "boot_mode": boot_mode}
    if ip is not None:
        fields["ip"] = ip
    if initiator_iqn is not None:
        fields["initiator_iqn"] = initiator_iqn
    created = await machines.add_machine(core, actor, **fields)
    emit_json(created.to_json()) if as_json else click.echo(f"machine '{created.name}' added ({created.mac})")


@machine.command("list")
@json_option
@run
async def machine_list(state: State, as_json: bool) -> None:
    from core.services import machines

    core, actor = await state.login()
    rows = [m.to_json() for m in await machines.list_machines(core, actor)]
    emit_json(rows) if as_json else table(rows, MACHINE_COLUMNS)


@machine.command("show")
@click.argument("name")
@json_option
@run
async def machine_show(state: State, name: str, as_json: bool) -> None:
    from core.services import machines

    core, actor = await state.login()
    data = (await machines.get_machine(core, actor, name)).to_json()
    emit_json(data) if as_json else details(data)


@machine.command("set")
@click.argument("name")
@click.option("--name", "new_name", default=None, help="Rename the machine.")
@click.option("--mac", default=None)
@click.option("--ip", default=None, help="IPv4 address; an empty string clears it.")
@click.option("--boot-mode", type=BOOT_MODES, default=None)
@click.option("--initiator-iqn", default=None)
@click.option("--keep-writeback/--discard-writeback", default=None,
              help="Keep the machine's writeback across reboots, or discard it each time.")
@json_option
@run
async def machine_set(state: State, name: str, new_name: str | None, mac: str | None, ip: str | None,
                      boot_mode: str | None, initiator_iqn: str | None, keep_writeback: bool | None,
                      as_json: bool) -> None:
    """Change a machine; only the options given are changed."""
    from core.services import machines

    options = {"name": new_name, "mac": mac, "boot_mode": boot_mode, "initiator_iqn": initiator_iqn,
               "keep_writeback": keep_writeback}
    fields: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if ip is not None:
        fields["ip"] = ip.strip() or None
    if not fields:
        raise click.UsageError("nothing to change: give at least one option")
    core, actor = await state.login()
    changed = await machines.update_machine(core, actor, name, **fields)
    emit_json(changed.to_json()) if as_json else click.echo(f"machine '{changed.name}' changed")


@machine.command("rm")
@click.argument("name")
@run
async def machine_rm(state: State, name: str) -> None:
    from core.services import machines

    core, actor = await state.login()
    await machines.remove_machine(core, actor, name)
    click.echo(f"machine '{name.strip().lower()}' removed")


@machine.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@run
async def machine_import(state: State, file: Path) -> None:
    """Add machines from a CSV file with a header (name,mac[,ip][,boot_mode]); all or nothing."""
    from core.services import machines

    text = _read_text(file)
    core, actor = await state.login()
    names = await machines.import_csv(core, actor, text, source=file.name)
    click.echo(f"imported {len(names)} machines from {file}")


def _read_text(path: Path, limit: int = 16 << 20) -> str:
    try:
        if path.stat().st_size > limit:
            raise Invalid("file", f"{path} is larger than {limit >> 20} MiB")
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise Invalid("file", f"{path} does not exist") from None
    except UnicodeDecodeError:
        raise Invalid("file", f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise Invalid("file", f"cannot read {path}: {exc.strerror}") from None


# --- audit ------------------------------------------------------------------


@main.group()
def audit() -> None:
    """Read the audit trail."""


@audit.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--actor", "actor_name", default=None, help="Only events by this user.")
@click.option("--action", default=None, help="Only this action or family (e.g. machine, machine.create).")
@click.option("--object", "object_name", default=None, help="Only events whose object name contains this.")
@json_option
@run
async def audit_list(state: State, limit: int, offset: int, actor_name: str | None, action: str | None,
                     object_name: str | None, as_json: bool) -> None:
    from core.services import audit as audit_service

    core, actor = await state.login()
    events, total = await audit_service.list_events(
        core, actor, limit=limit, offset=offset, actor_name=actor_name, action=action, object_name=object_name
    )
    rows = [e.to_json() for e in events]
    if as_json:
        emit_json(rows)
    else:
        table(rows, ["at", "actor", "action", "object_type", "object_name", "outcome", "detail"])
        click.echo(f"({len(rows)} of {total})")
