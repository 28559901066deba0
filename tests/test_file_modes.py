"""File modes of a real site, made through the installed `ggnet` under a careless umask: after
`init`, a CSV import, `boot render`, a failed login and the log's rotation, on SQLite and (data
directory and log) PostgreSQL; and a local user without root reads none of it but the boot files."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cli import ADMIN_PW, as_admin, ggnet_env, ggnet_executable, ok, run_ggnet
from .conftest import _pg_admin, _pg_url_for, require_pg


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def ggnet(args: list[str], env: dict[str, str], umask: int = 0o000, **more: str) -> subprocess.CompletedProcess[str]:
    """As an operator whose umask would leave everything world-readable (or -writable)."""
    return subprocess.run(
        [ggnet_executable(), *args],
        env={**env, "GGNET_USER": "admin", "GGNET_PASSWORD": ADMIN_PW, **more},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        umask=umask,
    )


def readable_by_nobody(path: Path) -> bool:
    """Whether a local user without root could read ``path`` (tried for real, as 'nobody')."""
    result = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat", str(path)],
        capture_output=True,
        timeout=30,
    )
    return result.returncode == 0


def log_events(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory every local user may pass through (pytest's own tmp directories are 0700,
    which would make "nobody cannot read it" prove nothing)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="ggnet-modes-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_modes_after_init_import_render_failed_login_and_rotation(open_tmp: Path) -> None:
    tmp_path = open_tmp
    env = ggnet_env(tmp_path, GGNET_BOOT_ADDRESS="192.168.1.2")
    data = tmp_path / "data"
    ok(ggnet(["init", "--admin", "admin"], env, GGNET_NEW_PASSWORD=ADMIN_PW))
    # the TFTP root lies inside the data directory (the default): others may pass through, not list
    assert mode(data) == 0o711
    assert {name: mode(data / name) for name in ("ggnet.db", "ggnet.log", "ggnet.reserve")} == dict.fromkeys(
        ("ggnet.db", "ggnet.log", "ggnet.reserve"), 0o600
    )

    csv = tmp_path / "lab.csv"
    csv.write_text("name,mac,ip,boot_mode\npc01,52:54:00:00:00:01,192.168.1.21,UEFI\n")
    holder = sqlite3.connect(data / "ggnet.db")  # keeps -wal and -shm in place while ggnet writes
    try:
        holder.execute("SELECT count(*) FROM machines").fetchone()
        ok(ggnet(["machine", "import", str(csv)], env))
        assert mode(data / "ggnet.db-wal") == 0o600 and mode(data / "ggnet.db-shm") == 0o600
    finally:
        holder.close()

    ok(ggnet(["boot", "render"], env))
    tftp = data / "tftp"
    assert mode(tftp) == 0o755 and mode(tftp / "boot.ipxe") == 0o644  # dnsmasq serves world-readable files
    assert mode(tftp / ".ggnet.lock") == 0o600

    failed = ggnet(["machine", "list"], env, GGNET_USER="my-password-typed-as-name", GGNET_PASSWORD="x" * 8)
    assert failed.returncode == 1
    assert mode(data / "ggnet.key") == 0o600

    if os.geteuid() == 0:
        for secret in ("ggnet.db", "ggnet.log", "ggnet.key"):
            assert not readable_by_nobody(data / secret), secret
        assert readable_by_nobody(tftp / "boot.ipxe")  # through the 0711 data directory

    # logrotate renames the log away: the next command starts a new one, 0600 again
    (data / "ggnet.log").rename(data / "ggnet.log.1")
    before = (data / "ggnet.log.1").read_text()
    ok(ggnet(["machine", "list"], env))
    assert mode(data / "ggnet.log") == 0o600
    assert (data / "ggnet.log.1").read_text() == before
    assert any(e["event"] == "audit" for e in log_events(data / "ggnet.log"))


def test_an_existing_too_open_install_is_tightened_at_start_and_the_log_says_so(tmp_path: Path) -> None:
    env = ggnet_env(tmp_path, GGNET_TFTP_ROOT=str(tmp_path / "tftp"))  # TFTP root elsewhere: 0700
    data = tmp_path / "data"
    ok(run_ggnet(["init", "--admin", "admin"], env, GGNET_NEW_PASSWORD=ADMIN_PW))
    (data / "images").mkdir()
    for path, wide in [
        (data, 0o755),
        (data / "images", 0o777),
        (data / "ggnet.db", 0o644),
        (data / "ggnet.log", 0o644),
    ]:
        path.chmod(wide)  # as an older ggnet left them under umask 022
    ok(as_admin(["machine", "list"], env))
    assert (mode(data), mode(data / "images"), mode(data / "ggnet.db"), mode(data / "ggnet.log")) == (
        0o700,
        0o700,
        0o600,
        0o600,
    )
    said = [e.get("detail", "") for e in log_events(data / "ggnet.log") if e["level"] == "warning"]
    for path, was, now in [
        (data, "0755", "0700"),
        (data / "images", "0777", "0700"),
        (data / "ggnet.db", "0644", "0600"),
        (data / "ggnet.log", "0644", "0600"),
    ]:
        assert f"mode of {path} changed from {was} to {now}" in said, said


@pytest.fixture
def pg_url() -> Iterator[str]:
    import asyncio

    require_pg()
    name = f"ggnet_modes_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    yield _pg_url_for(name)
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_modes_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    env = ggnet_env(tmp_path, GGNET_DATABASE_URL=pg_url, GGNET_TFTP_ROOT=str(tmp_path / "tftp"))
    data = tmp_path / "data"
    ok(ggnet(["init", "--admin", "admin"], env, GGNET_NEW_PASSWORD=ADMIN_PW))
    assert mode(data) == 0o700 and mode(data / "ggnet.log") == 0o600
    assert not (data / "ggnet.db").exists()
    (data / "ggnet.log").rename(data / "ggnet.log.1")
    ok(ggnet(["machine", "list"], env))
    assert mode(data / "ggnet.log") == 0o600
