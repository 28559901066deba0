"""`ggnet login` and `ggnet logout`: a short-lived login token, so commands stop asking for (and
paying bcrypt for) the password. Where the token is kept: token_file.py; what makes it valid:
core/services/tokens.py."""

from __future__ import annotations

import getpass
import socket
from datetime import timedelta

import click

from .base import State, run


def _client() -> str:
    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (containers)
        who = "?"
    return f"{who}@{socket.gethostname()}"


@click.command()
@run
async def login(state: State) -> None:
    """Log in once (GGNET_PASSWORD or a prompt); then commands run as that user without a password.

    The login ends after GGNET_IDLE_LOCK_MINUTES (15) without a command, 12 hours after it began,
    at 'ggnet logout', or when the account is disabled or its password changes."""
    from core.models import TokenKind
    from core.services import tokens, users

    from . import token_file

    core = await state.open()
    path = token_file.token_path(core.db.safe_url, create_dir=True)
    username = state.user_option or core.settings.user
    if not username:
        raise click.UsageError("name the user: --user NAME or GGNET_USER")
    actor = await users.login(core, username, state.password(username))
    idle_minutes = core.settings.idle_lock_minutes
    lifetime = timedelta(minutes=idle_minutes) if idle_minutes > 0 else tokens.CLI_MAX_AGE
    issued = await tokens.issue(core, actor, TokenKind.CLI, lifetime, client=_client())
    previous = token_file.read(path)
    token_file.write(path, token_file.SavedLogin(actor.username, issued.token))
    if previous is not None:  # one login per OS user and site: the one it replaces ends now
        await tokens.revoke(core, previous.token)
    how_long = f"after {idle_minutes:g} minutes without a command" if idle_minutes > 0 else "in 12 hours"
    click.echo(f"logged in as {actor.username} ({actor.role.value}); the login ends {how_long}, or at 'ggnet logout'")


@click.command()
@run
async def logout(state: State) -> None:
    """End the login of 'ggnet login' (the token is revoked in the database, and its file removed)."""
    from core.services import tokens

    from . import token_file

    core = await state.open()
    path = token_file.token_path(core.db.safe_url)
    saved = token_file.read(path)
    ended = await tokens.revoke(core, saved.token) if saved is not None else None
    token_file.remove(path)
    click.echo(f"logged out {ended.username}" if ended is not None else "not logged in")
