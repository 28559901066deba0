"""Where ``ggnet login`` keeps its token: a file only its OS user can read, one per database.

The directory is ``$XDG_RUNTIME_DIR/ggnet`` (the per-user 0700 tmpfs that systemd-logind empties when
the user's last session ends) when that exists and belongs to us; otherwise ``/tmp/ggnet-<uid>``
(``sudo``, cron and ``su`` often have no runtime directory), created 0700 and refused when someone
else owns it or others may enter it. The data directory is not used: root's is shared by every
admin who uses sudo, and a token must stay with one OS user.

The file (mode 0600, written atomically) holds the ggnet user name and the token; the database
decides whether the token is still good (core.services.tokens). Its name is a hash of the database
URL, so logins to two sites do not mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from core.errors import Invalid


@dataclass(frozen=True)
class SavedLogin:
    user: str
    token: str


def _private_dir(path: Path, create: bool) -> bool:
    """Whether ``path`` is a directory of ours that nobody else may enter (made so when ``create``)."""
    if create:
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
    try:
        info = path.lstat()  # not stat: a symlink planted in /tmp must not lead us elsewhere
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        if create:
            raise Invalid("login", f"{path} is not a directory of yours; remove it, then run 'ggnet login' again")
        return False
    if info.st_mode & 0o077:
        if not create:
            return False
        path.chmod(0o700)
    return True


def token_dir(create: bool = False) -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and _private_dir(Path(runtime), create=False):
        directory = Path(runtime) / "ggnet"
    else:
        directory = Path("/tmp") / f"ggnet-{os.geteuid()}"
    _private_dir(directory, create)
    return directory


def token_path(database_url: str, create_dir: bool = False) -> Path:
    key = hashlib.sha256(database_url.encode("utf-8")).hexdigest()[:16]
    return token_dir(create_dir) / f"login-{key}.json"


def read(path: Path) -> SavedLogin | None:
    """The saved login, or None when there is none (or it is unreadable garbage, which logout removes)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise Invalid("login", f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise Invalid("login", f"{path} must be yours and private (mode 0600); remove it and run 'ggnet login'")
        raw = handle.read(4096)
    try:
        data = json.loads(raw)
        return SavedLogin(str(data["user"]), str(data["token"]))
    except (ValueError, KeyError, TypeError):
        return None


def write(path: Path, login: SavedLogin) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"user": login.user, "token": login.token}, handle)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
