"""Roles, the one permission table, and password hashing (bcrypt through the passlib API).

Login throttling (per account, stored in the database so every console and the CLI share it):

* the first ``FREE_FAILURES`` failed attempts cost nothing but the bcrypt check;
* after that each attempt must wait ``2 ** (failures - FREE_FAILURES + 1)`` seconds after
  the previous failure (2, 4, 8 ... capped at ``MAX_DELAY``); an attempt inside the wait
  is refused without checking the password, so guessing gets no faster by hammering;
* at ``LOCK_AFTER`` consecutive failures the account is locked for ``LOCK_SECONDS``.
  The lock always expires by itself and any admin can lift it at once with
  ``ggnet user enable NAME``. A successful login resets the count.

So guessing is held to a few tries per quarter hour per account. Someone who keeps guessing
(one wrong try after each lock ends re-locks it) can keep an account locked, even every admin
account; so there is always a way back that no guessing can block: the boot server's own root
(``sudo ggnet user enable NAME --local`` / ``user passwd NAME --local``) acts without a ggnet
login, audited as ``root (local recovery)``. ggnet has no network login of its own, so anyone
who can try passwords already has a shell on the server; the lock slows them down, root stops them.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from .enums import Permission, Role

if TYPE_CHECKING:
    from passlib.context import CryptContext

FREE_FAILURES = 3
MAX_DELAY = 60
LOCK_AFTER = 10
LOCK_SECONDS = 15 * 60

BCRYPT_ROUNDS = 12
_rounds = BCRYPT_ROUNDS
_context: CryptContext | None = None
# Verified against when the user does not exist, so an unknown name costs the same time.
# A literal (same cost factor) rather than hashed at import: that would slow every start.
_DUMMY_HASH = "$2b$12$/bKDTr8DTX/DcMJJUgFyRecjNBZIu6/ArMJl3If0oDdUW7K7npyaq"


def _crypt() -> CryptContext:
    """passlib loads with the first password check, not with every command (a login token needs none)."""
    global _context
    if _context is None:
        from passlib.context import CryptContext

        _context = CryptContext(schemes=["bcrypt"], bcrypt__rounds=_rounds)
    return _context


def set_bcrypt_rounds(rounds: int) -> None:
    """Tests lower the cost factor; production keeps 12."""
    global _context, _rounds, _DUMMY_HASH
    _rounds, _context = rounds, None
    _DUMMY_HASH = _crypt().hash("not-a-real-password-ggnet")


def hash_password(password: str) -> str:
    hashed: str = _crypt().hash(password)
    return hashed


def _bcrypt_accepts(password: str) -> bool:
    return "\x00" not in password and len(password.encode("utf-8")) <= 72


def verify_password(password: str, password_hash: str | None) -> bool:
    """Constant work whether or not the user exists, and whatever the password is.

    bcrypt refuses NUL bytes and more than 72 bytes at once; such a password can never
    match, but it is still put through one bcrypt check so that it costs the same time.
    """
    acceptable = _bcrypt_accepts(password)
    candidate = password if acceptable else "never-matches-anything"
    try:
        ok = _crypt().verify(candidate, password_hash or _DUMMY_HASH)
    except (ValueError, TypeError):  # a damaged hash in the database
        return False
    return ok and acceptable and password_hash is not None


def secrets_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def throttle_wait(failures: int, last_failed_at: datetime | None, now: datetime) -> int:
    """Seconds the account must still wait before the next attempt (0 = may try now)."""
    if failures < FREE_FAILURES or last_failed_at is None:
        return 0
    delay = min(2 ** (failures - FREE_FAILURES + 1), MAX_DELAY)
    remaining = (last_failed_at + timedelta(seconds=delay) - now).total_seconds()
    return max(0, int(remaining + 0.999))


_VIEWER = frozenset({Permission.READ})
_OPERATOR = _VIEWER | {
    Permission.READ_SECRETS,
    Permission.MANAGE_MACHINES,
    Permission.MANAGE_IMAGES,
    Permission.MANAGE_SESSIONS,
    Permission.MANAGE_TARGETS,
    Permission.WAKE_MACHINES,
}
_ADMIN = _OPERATOR | {Permission.MANAGE_USERS, Permission.MANAGE_SETTINGS}

PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: _VIEWER,
    Role.OPERATOR: frozenset(_OPERATOR),
    Role.ADMIN: frozenset(_ADMIN),
}


def allowed(role: str | Role, permission: Permission) -> bool:
    return permission in PERMISSIONS[Role(role)]


@dataclass(frozen=True)
class Actor:
    """Who is acting. Services re-read the role from the database on every call."""

    user_id: int | None
    username: str
    role: Role
    logged_in_at: datetime | None = None
    # where the request came from (the HTTP API's client address): audit events say so
    client: str | None = None

    def can(self, permission: Permission) -> bool:
        return allowed(self.role, permission)


# used by ggnet itself (reconcile at boot, init) where no person is acting
SYSTEM = Actor(user_id=None, username="system", role=Role.ADMIN)


LOCAL_RECOVERY = "root (local recovery)"


def local_recovery_actor() -> Actor:
    """Break-glass: the server's root may lift locks and reset passwords without a ggnet login.
    Root can read the database file (or its URL's credentials) anyway, so this grants nothing new."""
    from .errors import PermissionDenied

    if os.geteuid() != 0:
        raise PermissionDenied("local recovery (--local) needs root on the boot server: run it with sudo")
    return Actor(user_id=None, username=LOCAL_RECOVERY, role=Role.ADMIN)
