"""Shared pieces of the command line: per-invocation state, error handling, output.

Exit status: 0 success; 1 refused, invalid, not found or denied (``error: <sentence>``
on stderr); 2 usage errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import getpass
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import wraps
from pathlib import Path
from typing import Any

import click

from core.errors import AuthenticationFailed, Fix, GgnetError, Invalid

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
            from core.context import Core, prepare_data_dir
            from core.log import configure_logging, get_logger

            settings = self.settings
            notes = prepare_data_dir(settings)  # before the log: it may live in the data directory
            configure_logging(settings.log_file)
            for note in notes:
                get_logger().warning("data directory", detail=note)
            self._core = Core.open(settings)
        return self._core

    async def open(self, create: bool = False) -> Any:
        """Core with an up-to-date schema (older databases are upgraded, newer refused). Only
        ``ggnet init`` (``create``) makes a new database: any other command refuses to run
        without one rather than create it empty and then fail the login."""
        if not create:
            await self._require_database()
        await self.core.db.upgrade()
        if not gc.isenabled():  # start-up is over (see main): what exists now stays, so leave it out of collections
            gc.freeze()
            gc.enable()
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
        """The acting user: by the token of ``ggnet login`` when there is one for this user, else by
        password (GGNET_PASSWORD or a prompt; each such login costs a bcrypt check)."""
        from core.services import users

        core = await self.open()
        username = self.user_option or core.settings.user
        by_token = await self._token_login(core, username)
        if isinstance(by_token, tuple):
            return by_token
        no_password = core.settings.password is None and not sys.stdin.isatty()
        if by_token is not None and (not username or no_password):
            raise by_token  # why the saved login no longer works (its file is gone now)
        if not username:
            raise Invalid("user", "is required: pass --user NAME, set GGNET_USER or run 'ggnet login'")
        password = self.password(username, "set GGNET_PASSWORD, run 'ggnet login', or run from a terminal to be asked")
        return core, await users.login(core, username, password)

    def password(self, username: str, how: str = "set GGNET_PASSWORD or run from a terminal to be asked") -> str:
        """GGNET_PASSWORD, else a prompt without echo on a terminal (never argv)."""
        password: str | None = self.core.settings.password
        if password is None:
            if not sys.stdin.isatty():
                raise Invalid("password", f"is required: {how}")
            password = getpass.getpass(f"password for {username}: ")
        return password

    async def _token_login(self, core: Any, username: str | None) -> tuple[Any, Any] | AuthenticationFailed | None:
        """(core, actor) by the saved token; else why the saved token no longer works, or None."""
        from core.models import TokenKind
        from core.services import tokens

        from . import token_file

        path = token_file.token_path(core.db.safe_url)
        saved = token_file.read(path)
        if saved is None or (username and username.strip().lower() != saved.user):
            return None
        idle = timedelta(minutes=core.settings.idle_lock_minutes) if core.settings.idle_lock_minutes > 0 else None
        try:
            return core, await tokens.authenticate(core, saved.token, TokenKind.CLI, idle=idle)
        except tokens.LoginEnded as exc:
            token_file.remove(path)
            return AuthenticationFailed(f"{exc.message}; run 'ggnet login' again")
        except AuthenticationFailed as exc:  # a disabled account: logging in again will not help
            token_file.remove(path)
            return exc

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


def fix_command(fix: Fix) -> str:
    """A core Fix as the command that does it."""
    machine = fix.machine or "NAME"
    return {
        "session.stop": f"ggnet session stop {machine}",
        "force": "use --force if you mean it",
        "machine.enable": f"ggnet machine set {machine} --enable",
        "machine.assign": f"ggnet machine set {machine} --image OTHER or --no-image",
        "machine.unpin": f"ggnet machine set {machine} --unpin, or --game-unpin",
        "maintenance.start": f"ggnet maintenance start {machine}",
        "maintenance.finish": f"ggnet maintenance apply|discard {machine}",
        "maintenance.discard": f"ggnet maintenance discard {machine}",
        "image.new_version": f"--new-version-of {fix.image}",
        "image.activate": f"ggnet image activate {fix.image} {fix.version}",
        "image.delete": f"ggnet image rm {fix.image}",
    }[fix.action]


def with_fix(message: str, fix: Fix | None) -> str:
    """Core's sentence with the command that resolves it, if any."""
    return f"{message} ({fix_command(fix)})" if fix is not None else message


def explain(exc: BaseException, state: State | None = None) -> str | None:
    """A sentence for a condition of the operating system, the database or the encoding of some
    input that reached the command line; None for a real bug."""
    from sqlalchemy.exc import DBAPIError

    from core.files import os_error_sentence

    if isinstance(exc, DBAPIError):
        from core.db import database_failure

        db = getattr(getattr(state, "_core", None), "db", None)
        known = db.failure(exc) if db is not None else database_failure(exc, "of ggnet")
        return known.message if known is not None else None
    if isinstance(exc, OSError):
        return os_error_sentence(exc)
    if isinstance(exc, UnicodeError):
        return "some text is not valid UTF-8; ggnet reads arguments, settings and files as UTF-8"
    if isinstance(exc, OverflowError):
        return "a number is too large"
    return None


def _quiet_broken_pipe() -> None:
    """stdout's reader went away (``ggnet machine list | head -3``): stop quietly. What is left in
    the buffer goes to /dev/null, so that Python's exit does not complain about it either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def run(func: Callable[..., Awaitable[int | None]]) -> Callable[..., None]:
    """Run an async command: the one exception boundary of the command line. Domain errors and
    every operating-system, database or encoding condition become ``error: <sentence>`` and exit
    status 1; only a real bug is "unexpected" (logged with an incident id, no traceback shown)."""

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
            sys.stdout.flush()
        except GgnetError as exc:
            from core.services.machines import CsvRowError

            if isinstance(exc, CsvRowError):
                for line, reason in exc.rows:
                    fail(f"{exc.source} line {line}: {reason}")
                fail("nothing was imported")
            else:
                fail(with_fix(exc.message, exc.fix))
            sys.exit(1)
        except click.ClickException:  # usage errors raised inside a command: click prints them, exit 2
            raise
        except KeyboardInterrupt:
            fail("interrupted")
            sys.exit(130)
        except BrokenPipeError:
            _quiet_broken_pipe()
            sys.exit(1)
        except Exception as exc:
            sentence = explain(exc, state)
            if sentence is not None:
                _log_failure(state, exc, sentence)
                fail(sentence)
                sys.exit(1)
            incident = uuid.uuid4().hex[:8]
            _log_failure(state, exc, "unexpected error", incident=incident)
            fail(f"unexpected {type(exc).__name__} (incident {incident}); details are in the ggnet log")
            sys.exit(1)
        sys.exit(code or 0)

    return wrapper


def _log_failure(state: State, exc: BaseException, event: str, **fields: Any) -> None:
    """Best effort: the failure may be that the log cannot be written."""
    from core.log import get_logger

    with contextlib.suppress(Exception):
        if state._core is None:
            state.core  # noqa: B018 - sets up the log file if the command failed before that
    with contextlib.suppress(Exception):
        get_logger().error(event, exc_info=exc, **fields)


def not_utf8(args: list[str], environ: Any) -> str | None:
    """Which argument or setting variable is not valid UTF-8 (Python keeps such bytes as lone
    surrogates, which no database and no file name check can take); None when all are."""

    def bad(text: str) -> bool:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False

    for number, arg in enumerate(args, start=1):
        if bad(arg):
            return f"argument {number} is not valid UTF-8 text; ggnet takes names, paths and values in UTF-8"
    for key, value in environ.items():
        if (key.startswith("GGNET_") or key in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME")) and bad(value):
            return f"the environment variable {key} is not valid UTF-8 text"
    return None


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
