"""Login tokens: ``ggnet login`` for the command line, and what the HTTP API's tokens share with it
(``api_tokens.py``: the hash, the family revocation; ``users.revoke_tokens`` ends all of an account's).

A token is 32 random bytes, handed to its holder once; the database keeps only its sha256, so a copy
of the database logs nobody in. A token stands for its user while all of these hold, checked against
the database on every use (so the role is always the current one):

* it was not revoked (``ggnet logout``, or a refresh token's family revoked on reuse);
* it has not expired (``expires_at`` is still ahead);
* its user still exists (deleting a user deletes the tokens), is not disabled, and has not changed
  password since the token was issued (disabling an account or setting its password also revokes
  its tokens: ``users.revoke_tokens``).

Expiry of CLI tokens slides, like sudo's: a token expires after ``idle`` without use, and at the latest
``max_age`` after the login. A use moves ``expires_at`` forward and records ``used_at`` (the last use),
at most once per ``SLIDE_EVERY``, so a script's burst of commands writes once, not per command.
For the API's refresh tokens ``used_at`` means "rotated"; ``family`` groups the tokens of one login,
and ``revoke_family`` ends them all.

Issuing and revoking are audited (``auth.token.issue``, ``auth.logout``); a use is not, as a use of a
console's login is not. The password check that precedes an issue is ``users.login``'s, audited there.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..auth import Actor
from ..context import Core
from ..errors import AuthenticationFailed
from ..models import AuthToken, Role, TokenKind, User, utcnow
from .base import Operation

TOKEN_BYTES = 32
SLIDE_EVERY = timedelta(minutes=1)
CLI_MAX_AGE = timedelta(hours=12)  # a working day: then the password again, however busy the login

ENDED = "the login has ended (logged out, replaced by a newer login, or revoked)"


class LoginEnded(AuthenticationFailed):
    """The token is spent (revoked, expired, or older than the password): the holder must log in again.
    A disabled account is plain AuthenticationFailed: logging in again will not help."""


def token_hash(token: str) -> str:
    """What the database keeps of a token: its sha256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    token: str  # the secret itself: give it to the holder, never store or log it
    family: str
    expires_at: datetime


async def issue(
    core: Core,
    actor: Actor,
    kind: TokenKind,
    lifetime: timedelta,
    client: str | None = None,
    family: str | None = None,
) -> IssuedToken:
    """A new token for ``actor``, who has just proved who they are (``users.login``).
    Also forgets the user's tokens that have expired, so the table does not grow."""
    if actor.user_id is None:
        raise AuthenticationFailed(f"{actor.username} acts without a ggnet login and gets no token")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = utcnow()
    row = AuthToken(
        user_id=actor.user_id,
        kind=kind.value,
        token_hash=token_hash(token),
        family=family or secrets.token_hex(16),
        created_at=now,
        expires_at=now + lifetime,
        client=(client or "")[:255] or None,
    )
    async with core.db.transaction() as session:
        await session.execute(delete(AuthToken).where(AuthToken.user_id == actor.user_id, AuthToken.expires_at < now))
        session.add(row)
        Operation(session, actor, "auth.token.issue").audit(
            "user",
            actor.user_id,
            actor.username,
            detail=f"{kind.value} token for {row.client or 'an unnamed client'}, "
            f"expires {row.expires_at:%Y-%m-%d %H:%M} UTC unless used",
        )
    return IssuedToken(token, row.family, row.expires_at)


async def authenticate(
    core: Core,
    token: str,
    kind: TokenKind,
    idle: timedelta | None = None,
    max_age: timedelta = CLI_MAX_AGE,
) -> Actor:
    """The user ``token`` stands for, with their current role; AuthenticationFailed (LoginEnded) saying why not.
    With ``idle``, the use slides the expiry to ``idle`` from now (capped at ``max_age`` after issue)."""
    now = utcnow()
    async with core.db.session() as session:
        found = (
            await session.execute(
                select(AuthToken, User)
                .join(User, User.id == AuthToken.user_id)
                .where(AuthToken.token_hash == token_hash(token), AuthToken.kind == kind.value)
            )
        ).first()
    if found is None:
        raise LoginEnded(ENDED)
    row, user = found
    # the account's state first: it says best why a token that was also revoked stopped working
    if user.disabled:
        raise AuthenticationFailed(f"the account '{user.username}' is disabled; ask an admin to enable it")
    if user.password_changed_at > row.created_at:
        raise LoginEnded(f"the password of '{user.username}' has changed since this login")
    if row.revoked_at is not None:
        raise LoginEnded(ENDED)
    if row.expires_at <= now:
        raise LoginEnded(f"the login of '{user.username}' has expired")
    if idle is not None and (row.used_at is None or now - row.used_at >= SLIDE_EVERY):
        expires = min(now + idle, row.created_at + max_age)
        async with core.db.transaction() as session:
            await session.execute(
                update(AuthToken)
                .where(AuthToken.id == row.id, AuthToken.revoked_at.is_(None))
                .values(used_at=now, expires_at=expires)
            )
    return Actor(user.id, user.username, Role(user.role), logged_in_at=row.created_at)


async def revoke(core: Core, token: str) -> Actor | None:
    """End the login ``token`` belongs to (its whole family), audited as ``auth.logout``.
    Returns who was logged out, or None when the token was unknown or already ended."""
    async with core.db.transaction() as session:
        found = (
            await session.execute(
                select(AuthToken, User)
                .join(User, User.id == AuthToken.user_id)
                .where(AuthToken.token_hash == token_hash(token))
            )
        ).first()
        if found is None or found[0].revoked_at is not None:
            return None
        row, user = found
        await revoke_family(session, row.family)
        actor = Actor(user.id, user.username, Role(user.role), logged_in_at=row.created_at)
        Operation(session, actor, "auth.logout").audit(
            "user", user.id, user.username, detail=f"{row.kind} token for {row.client or 'an unnamed client'} revoked"
        )
        return actor


async def revoke_family(session: AsyncSession, family: str, now: datetime | None = None) -> None:
    """Revoke every live token of one login (``logout``; a refresh token used twice), in the caller's transaction."""
    await session.execute(
        update(AuthToken)
        .where(AuthToken.family == family, AuthToken.revoked_at.is_(None))
        .values(revoked_at=now or utcnow())
    )
