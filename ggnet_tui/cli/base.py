"""Shared pieces of the command line: per-invocation state, error handling, output.

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
from collections.abc import Awaitable, Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from core.errors import GgnetError, Invalid

NEW_PASSWORD_ENV = "GGNET_NEW_PASSWORD"


class State:
    """Per-invocation context: settings, core, and the logged-in actor once known."""

    def __init__(self, config_file: str | None, user: str | None) -> None:
        self.config_file = config_file
        self.user_option = user
        self._core: Any = None
        self._settings: Any = None

    @property
    def settings(self):  # type: ignore[no-untyped-def]
        if self._settings is None:
            from core.config import load_settings

            self._settings = load_settings(self.config_file)
        return self._settings

    @property
    def core(self):  # type: ignore[no-untyped-def]
        if self._core is None:
            from core.context import Core
            from core.log import configure_logging

            configure_logging(self.settings.log_file)
            self._core = Core.open(self.settings)
        return self._core

    async def open(self, create: bool = False) -> Any:
        """Core with an up-to-date schema (older databases are upgraded, newer refused). Only
        ``ggnet init`` (``create``) makes a new database: any other command refuses to run
        without one rather than create it empty and then fail the login."""
        if not create:
            await self._require_database()
        await self.core.db.upgrade()
        return self.core

    async def _require_database(self) -> None:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(self.settings.database_url)
        except ArgumentError:
            return  # Core.open names the setting and the rule
        if url.get_backend_name() == "sqlite":
            path = url.database
            if path and path != ":memory:" and not Path(path).exists():  # checked before anything is created
                raise GgnetError(f"no ggnet database at {path}: run ggnet init")
            return
        try:
            revision = await self.core.db.current_revision()
        except Exception:
            return  # an unreachable server: upgrade() says so in its own words
        if revision is None:
            raise GgnetError(f"no ggnet database at {self.core.db.safe_url}: run ggnet init")

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

    async def login_or_local(self, local: bool) -> Any:
        """``--local``: the server's root acts without a ggnet login (break-glass, audited)."""
        if not local:
            return await self.login()
        from core.auth import local_recovery_actor

        actor = local_recovery_actor()
        return await self.open(), actor

    async def login_or_system(self) -> Any:
        """Root on the boot server with no ggnet user named acts as the local system (audited as such):
        the engine's own commands (reconcile) must work at boot without a password."""
        if os.geteuid() == 0 and not (self.user_option or os.environ.get("GGNET_USER")):
            from core.auth import Actor
            from core.models import Role

            return await self.open(), Actor(user_id=None, username="root (local)", role=Role.ADMIN)
        return await self.login()

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
        except click.ClickException:  # usage errors raised inside a command: click prints them, exit 2
            raise
        except KeyboardInterrupt:
            fail("interrupted")
            sys.exit(130)
        except Exception as exc:  # an unexpected failure: logged with an id, no traceback on screen
            incident = uuid.uuid4().hex[:8]
            try:
                from core.log import get_logger

                state.core  # noqa: B018 - sets up the log file if the command failed before that
            except Exception:
                pass
            try:
                get_logger().exception("unexpected error", incident=incident)
            except Exception:
                pass
            fail(f"unexpected {type(exc).__name__} (incident {incident}); details are in the ggnet log")
            sys.exit(1)
        sys.exit(code or 0)

    return wrapper


def emit_json(data: Any) -> None:
    if isinstance(data, list):
        # one object per line: still one JSON document, easy to grep, and fast (indent= makes
        # json fall back to its pure-Python encoder, which dominated listing 10,000 machines)
        body = ",\n".join("  " + json.dumps(item, default=str) for item in data)
        click.echo(f"[\n{body}\n]" if data else "[]")
    else:
        click.echo(json.dumps(data, indent=2, default=str))


def table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=False)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)).rstrip())


def details(data: dict[str, Any]) -> None:
    width = max(len(k) for k in data)
    for key, value in data.items():
        click.echo(f"{key.ljust(width)}  {'' if value is None else value}")


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def read_text(path: Path, limit: int = 16 << 20) -> str:
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
