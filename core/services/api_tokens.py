"""The HTTP API's login tokens: a short-lived access token (a JWT signed with this server's key)
and an opaque refresh token (only its SHA-256 is stored, in ``auth_tokens`` with kind ``refresh``).

* Login goes through ``users.login``: the same throttling and lockout as every console, shared
  through the database, and the same audit event (with the client's address).
* Each refresh uses its token up and hands out a new one of the same *family*; presenting a used
  (or revoked) refresh token again means it was stolen or replayed: the whole family is revoked.
* Every request checks, with one indexed read, that the account still exists, is enabled, has
  the password it had at login, and that the token's family was not revoked (logout, reuse,
  account disabled or password changed: see ``users.revoke_tokens``).

The signing key is ``<data dir>/api-signing.key`` (mode 0600), made on first use.
"""

from __future__ import annotations

import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from sqlalchemy import exists, select

from ..auth import Actor
from ..config import Settings
from ..context import Core
from ..errors import AuthenticationFailed, BackendUnavailable
from ..log import get_logger
from ..models import AuthToken, Outcome, Role, TokenKind, User, utcnow
from . import users
from .base import Operation
from .tokens import revoke_family, token_hash  # shared with the CLI's login tokens

KEY_FILE = "api-signing.key"
ALGORITHM = "HS256"
ISSUER = "ggnet"
AUDIENCE = "ggnet-api"

EXPIRED = "the access token has expired; refresh it (POST /api/v1/auth/refresh) or log in again"
INVALID = "the access token is not valid; log in again"
ENDED = "this login has ended (logged out, account disabled or password changed); log in again"
REFRESH_INVALID = "the refresh token is not valid; log in again"


@dataclass(frozen=True)
class Tokens:
    access_token: str
    expires_in: int  # seconds
    refresh_token: str
    refresh_expires_in: int
    user: Actor


def signing_key(settings: Settings) -> bytes:
    """This server's key; created (0600) on first use. A key others could read is made private."""
    path = Path(settings.data_dir) / KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            get_logger().warning("the API signing key was readable by others; made private", path=str(path))
            path.chmod(0o600)
        key = path.read_bytes().strip()
        if len(key) < 32:
            raise BackendUnavailable(f"{path} is too short to be a signing key; remove it and restart") from None
        return key
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_hex(32).encode())
    return path.read_bytes().strip()


def _micros(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000)


def _access_token(settings: Settings, key: bytes, user: User, family: str, now: datetime) -> tuple[str, int]:
    lifetime = int(settings.api_token_minutes * 60)
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": str(user.id),
        "name": user.username,
        "fam": family,
        "pwc": _micros(user.password_changed_at),
        "srv": settings.server_name,
        "iat": now,
        "exp": now + timedelta(seconds=lifetime),
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM), lifetime


async def _issue(core: Core, key: bytes, user_id: int, family: str, client: str | None) -> Tokens:
    """A new refresh token of ``family`` and an access token, in the caller's (new) transaction."""
    settings = core.settings
    refresh = secrets.token_urlsafe(32)
    now = utcnow()
    refresh_lifetime = int(settings.api_refresh_days * 86400)
    async with core.db.transaction() as session:
        user = await session.get(User, user_id)
        if user is None:
            raise AuthenticationFailed(ENDED)
        session.add(
            AuthToken(
                user_id=user_id,
                kind=TokenKind.REFRESH.value,
                token_hash=token_hash(refresh),
                family=family,
                created_at=now,
                expires_at=now + timedelta(seconds=refresh_lifetime),
                client=client,
            )
        )
        access, lifetime = _access_token(settings, key, user, family, now)
        actor = Actor(user.id, user.username, Role(user.role), logged_in_at=now, client=client)
    return Tokens(access, lifetime, refresh, refresh_lifetime, actor)


async def login(core: Core, key: bytes, username: str, password: str, client: str | None) -> Tokens:
    """Check the password (throttled, audited), then hand out a new token family."""
    actor = await users.login(core, username, password, client=client)
    assert actor.user_id is not None
    return await _issue(core, key, actor.user_id, uuid.uuid4().hex, client)


async def refresh(core: Core, key: bytes, token: str, client: str | None) -> Tokens:
    """Use a refresh token up and hand out the next pair; a used one presented again revokes its family."""
    now = utcnow()
    reused: AuthToken | None = None
    async with core.db.transaction() as session:
        query = select(AuthToken).where(
            AuthToken.token_hash == token_hash(str(token)), AuthToken.kind == TokenKind.REFRESH.value
        )
        row = (await session.execute(query.with_for_update())).scalar_one_or_none()
        if row is None or row.expires_at <= now:
            raise AuthenticationFailed(REFRESH_INVALID)
        user = await session.get(User, row.user_id)
        if row.used_at is not None or row.revoked_at is not None:
            reused = row
            await revoke_family(session, row.family, now)
            if user is not None:
                Operation(session, Actor(user.id, user.username, Role(user.role), client=client), "auth.refresh").audit(
                    "user",
                    user.id,
                    user.username,
                    detail="a used refresh token was presented again: every token of that login is revoked",
                    outcome=Outcome.DENIED,
                )
        elif user is None or user.disabled or user.password_changed_at > row.created_at:
            await revoke_family(session, row.family, now)
            raise AuthenticationFailed(ENDED)
        else:
            row.used_at = now
            family, user_id = row.family, user.id
    if reused is not None:
        get_logger().warning("refresh token reused; its family is revoked", user_id=reused.user_id, client=client)
        raise AuthenticationFailed(REFRESH_INVALID)
    return await _issue(core, key, user_id, family, client)


@dataclass(frozen=True)
class Claims:
    user_id: int
    family: str
    password_changed: int  # microseconds since the epoch, as at login
    expires_at: datetime


def decode(key: bytes, token: str) -> Claims:
    try:
        data = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "fam", "pwc"]},
        )
        return Claims(
            int(data["sub"]), str(data["fam"]), int(data["pwc"]), datetime.fromtimestamp(int(data["exp"]), UTC)
        )
    except jwt.ExpiredSignatureError:
        raise AuthenticationFailed(EXPIRED) from None
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        raise AuthenticationFailed(INVALID) from None


async def authenticate(core: Core, key: bytes, token: str, client: str | None) -> tuple[Actor, Claims]:
    """The Actor an access token stands for, checked against the database (one indexed read)."""
    claims = decode(key, token)
    revoked = exists().where(AuthToken.family == claims.family, AuthToken.revoked_at.is_not(None))
    async with core.db.session() as session:
        row = (
            await session.execute(
                select(
                    User.username, User.role, User.disabled, User.password_changed_at, revoked.label("revoked")
                ).where(User.id == claims.user_id)
            )
        ).first()
    if row is None or row.disabled or row.revoked or _micros(row.password_changed_at) != claims.password_changed:
        raise AuthenticationFailed(ENDED)
    return Actor(claims.user_id, row.username, Role(row.role), client=client), claims


async def logout(core: Core, actor: Actor, family: str) -> None:
    """End this login: every token of its family stops working at once."""
    async with core.db.transaction() as session:
        await revoke_family(session, family)
        Operation(session, actor, "auth.logout").audit("user", actor.user_id, actor.username)
