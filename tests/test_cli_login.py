"""`ggnet login` / `ggnet logout`: the real command, a real SQLite site, the token in $XDG_RUNTIME_DIR."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from core.errors import Invalid
from ggnet_tui.cli import token_file

from .cli import ADMIN_PW, VIEWER_PW, as_admin, ok, one_error, run_ggnet


def _db(env: dict[str, str]) -> sqlite3.Connection:
    return sqlite3.connect(Path(env["GGNET_DATA_DIR"]) / "ggnet.db")


def _actions(env: dict[str, str]) -> list[tuple[str, str]]:
    with _db(env) as conn:
        return [tuple(r) for r in conn.execute("SELECT actor, action FROM audit_events ORDER BY id")]


def _token_files(env: dict[str, str]) -> list[Path]:
    return sorted((Path(env["XDG_RUNTIME_DIR"]) / "ggnet").glob("login-*.json"))


def _login(env: dict[str, str], user: str = "admin", password: str = ADMIN_PW) -> Path:
    result = ok(run_ggnet(["login"], env, GGNET_USER=user, GGNET_PASSWORD=password))
    assert result.stdout.startswith(f"logged in as {user} (")
    assert "15 minutes without a command" in result.stdout
    (path,) = _token_files(env)
    return path


def test_after_login_commands_need_no_password(site: dict[str, str]) -> None:
    path = _login(site)
    directory = path.parent
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["user"] == "admin" and ADMIN_PW not in path.read_text()
    with _db(site) as conn:  # the database holds the token's sha256, never the token
        rows = conn.execute("SELECT token_hash, kind FROM auth_tokens").fetchall()
        dump = "\n".join(conn.iterdump())
    assert rows == [(hashlib.sha256(saved["token"].encode()).hexdigest(), "cli")]
    assert saved["token"] not in dump
    logins = _actions(site).count(("admin", "auth.login"))

    listed = ok(run_ggnet(["machine", "list", "--json"], site))  # no GGNET_USER, no GGNET_PASSWORD
    assert [m["name"] for m in json.loads(listed.stdout)] == ["pc01"]
    ok(run_ggnet(["machine", "add", "pc02", "--mac", "52:54:00:12:34:57"], site, GGNET_USER="Admin"))
    actions = _actions(site)
    assert actions.count(("admin", "auth.login")) == logins  # no password check per command
    assert actions[-1] == ("admin", "machine.create")
    assert ("admin", "auth.token.issue") in actions


def test_logout_ends_the_login(site: dict[str, str]) -> None:
    _login(site)
    assert ok(run_ggnet(["logout"], site)).stdout == "logged out admin\n"
    assert _token_files(site) == []
    one_error(run_ggnet(["machine", "list"], site), "run 'ggnet login'")
    assert _actions(site)[-1] == ("admin", "auth.logout")
    assert ok(run_ggnet(["logout"], site)).stdout == "not logged in\n"
    with _db(site) as conn:
        assert conn.execute("SELECT count(*) FROM auth_tokens WHERE revoked_at IS NULL").fetchone() == (0,)


def test_a_new_login_replaces_the_old_one(site: dict[str, str]) -> None:
    first = json.loads(_login(site).read_text())["token"]
    second = json.loads(_login(site, "vera", VIEWER_PW).read_text())["token"]
    assert first != second
    with _db(site) as conn:
        live = conn.execute("SELECT token_hash FROM auth_tokens WHERE revoked_at IS NULL").fetchall()
    assert live == [(hashlib.sha256(second.encode()).hexdigest(),)]
    assert _actions(site)[-1] == ("admin", "auth.logout")
    one_error(run_ggnet(["machine", "add", "pc02", "--mac", "52:54:00:12:34:57"], site), "viewer 'vera' may not")


def test_the_token_serves_only_its_own_user(site: dict[str, str]) -> None:
    _login(site)
    ok(run_ggnet(["machine", "list"], site, GGNET_USER="vera", GGNET_PASSWORD=VIEWER_PW))
    assert _actions(site)[-1] == ("vera", "auth.login")  # vera by her password, not admin's token
    one_error(run_ggnet(["machine", "list"], site, GGNET_USER="vera"), "password: is required")
    assert len(_token_files(site)) == 1  # admin's login is untouched


def test_a_disabled_account_ends_the_login(site: dict[str, str]) -> None:
    _login(site, "vera", VIEWER_PW)
    ok(as_admin(["user", "disable", "vera"], site))
    line = one_error(run_ggnet(["machine", "list"], site), "the account 'vera' is disabled")
    assert "ggnet login" not in line  # logging in again would not help
    assert _token_files(site) == []
    ok(as_admin(["user", "enable", "vera"], site))
    one_error(run_ggnet(["machine", "list"], site, GGNET_USER="vera"), "password: is required")


def test_a_changed_password_ends_the_login(site: dict[str, str]) -> None:
    _login(site, "vera", VIEWER_PW)
    ok(as_admin(["user", "passwd", "vera"], site, GGNET_NEW_PASSWORD="vera-new-pass-1"))
    one_error(
        run_ggnet(["machine", "list"], site),
        "the password of 'vera' has changed since this login; run 'ggnet login' again",
    )


def test_an_expired_login_is_refused_but_a_password_still_works(site: dict[str, str]) -> None:
    _login(site)
    with _db(site) as conn:
        conn.execute("UPDATE auth_tokens SET expires_at = '2000-01-01 00:00:00.000000'")
    one_error(run_ggnet(["machine", "list"], site), "the login of 'admin' has expired; run 'ggnet login' again")
    assert _token_files(site) == []
    _login(site)
    with _db(site) as conn:
        conn.execute("UPDATE auth_tokens SET expires_at = '2000-01-01 00:00:00.000000'")
    ok(as_admin(["machine", "list"], site))  # scripts with GGNET_PASSWORD carry on
    assert _actions(site)[-1] == ("admin", "auth.login")


def test_a_token_file_others_may_read_is_refused(site: dict[str, str]) -> None:
    path = _login(site)
    path.chmod(0o644)
    line = one_error(run_ggnet(["machine", "list"], site), "must be yours and private (mode 0600)")
    assert str(path) in line


def test_login_with_a_wrong_password_keeps_no_token(site: dict[str, str]) -> None:
    one_error(run_ggnet(["login"], site, GGNET_USER="admin", GGNET_PASSWORD="wrong-pass-1"), "wrong user name")
    assert _token_files(site) == []
    one_error(run_ggnet(["login"], site, GGNET_USER="admin"), "password: is required")


def test_without_a_private_runtime_directory_the_token_goes_to_tmp(site: dict[str, str], tmp_path: Path) -> None:
    shared = tmp_path / "shared-run"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)  # others may enter it: not a runtime directory to trust
    env = {**site, "XDG_RUNTIME_DIR": str(shared)}
    fallback = Path("/tmp") / f"ggnet-{os.geteuid()}"
    before = set(fallback.glob("login-*.json"))
    ok(run_ggnet(["login"], env, GGNET_USER="admin", GGNET_PASSWORD=ADMIN_PW))
    try:
        assert not (shared / "ggnet").exists()
        assert stat.S_IMODE(fallback.stat().st_mode) == 0o700
        (ours,) = set(fallback.glob("login-*.json")) - before
        assert stat.S_IMODE(ours.stat().st_mode) == 0o600
        ok(run_ggnet(["machine", "list"], env))
    finally:
        ok(run_ggnet(["logout"], env))
    assert not ours.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="optional: needs root to hand a directory to another user")
def test_a_token_directory_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    squatted = tmp_path / "ggnet-squatted"
    squatted.mkdir(mode=0o700)
    os.chown(squatted, 65534, 65534)
    with pytest.raises(Invalid, match="is not a directory of yours"):
        token_file._private_dir(squatted, create=True)
