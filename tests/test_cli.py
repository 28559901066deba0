"""The installed `ggnet` command, run as a subprocess the way scripts and operators run it.

Each run costs about a second (start-up plus a bcrypt check at the production cost), so the
cases here are few and each proves something the in-process tests cannot.
"""

from __future__ import annotations

import json
import os
import pty
import select
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cli import (
    ADMIN_PW,
    VIEWER_PW,
    as_admin,
    ggnet_env,
    ggnet_executable,
    ok,
    one_error,
    run_ggnet,
    sqlite_counts,
)
from .conftest import _pg_admin, _pg_url_for, require_pg


def _happy_path(env: dict[str, str]) -> None:
    first = ok(run_ggnet(["init", "--admin", "admin"], env, GGNET_NEW_PASSWORD=ADMIN_PW))
    assert "admin 'admin' created" in first.stdout
    added = ok(
        as_admin(
            ["machine", "add", "PC01", "--mac", "52-54-00-12-34-56", "--ip", "192.168.1.21", "--boot-mode", "uefi"], env
        )
    )
    assert added.stdout.strip() == "machine 'pc01' added (52:54:00:12:34:56)"
    listed = json.loads(ok(as_admin(["machine", "list", "--json"], env)).stdout)
    assert [(m["name"], m["mac"], m["ip"], m["boot_mode"]) for m in listed] == [
        ("pc01", "52:54:00:12:34:56", "192.168.1.21", "uefi")
    ]
    one_error(run_ggnet(["init", "--admin", "other"], env, GGNET_NEW_PASSWORD=ADMIN_PW), "already initialised")


def test_init_add_and_list_on_sqlite(tmp_path: Path) -> None:
    env = ggnet_env(tmp_path)
    _happy_path(env)
    renamed = ok(as_admin(["machine", "set", "pc01", "--name", "pc05", "--ip", "", "--json"], env))
    assert (json.loads(renamed.stdout)["name"], json.loads(renamed.stdout)["ip"]) == ("pc05", None)
    assert (tmp_path / "data" / "ggnet.db").is_file()
    assert (tmp_path / "data" / "ggnet.log").is_file()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """An empty PostgreSQL database: `ggnet init` must create the schema itself."""
    import asyncio

    require_pg()
    name = f"ggnet_cli_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    yield _pg_url_for(name)
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_init_add_and_list_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    env = ggnet_env(tmp_path, GGNET_DATABASE_URL=pg_url)
    _happy_path(env)
    assert not (tmp_path / "data" / "ggnet.db").exists()


@pytest.mark.parametrize(
    "args",
    [["machine", "list"], ["user", "list"], ["audit", "list"], ["user", "enable", "admin", "--local"]],
    ids=["machine-list", "user-list", "audit-list", "local-recovery"],
)
def test_a_command_without_a_database_says_so_and_creates_nothing(tmp_path: Path, args: list[str]) -> None:
    env = ggnet_env(tmp_path)
    result = as_admin(args, env)
    one_error(result, f"no ggnet database at {tmp_path / 'data' / 'ggnet.db'}: run ggnet init")
    assert "password" not in result.stderr
    assert not (tmp_path / "data").exists()  # no database, no log, not even the directory


def test_a_command_on_an_empty_postgresql_database_says_so(tmp_path: Path, pg_url: str) -> None:
    env = ggnet_env(tmp_path, GGNET_DATABASE_URL=pg_url)
    one_error(as_admin(["machine", "list"], env), "no ggnet database at postgresql")
    ok(run_ggnet(["init", "--admin", "admin"], env, GGNET_NEW_PASSWORD=ADMIN_PW))  # init still creates it
    ok(as_admin(["machine", "list"], env))


def test_viewer_is_refused_with_one_line_and_a_denied_event(site: dict[str, str]) -> None:
    before = sqlite_counts(site)
    refused = run_ggnet(
        ["machine", "add", "pc02", "--mac", "52:54:00:12:34:57"], site, GGNET_USER="vera", GGNET_PASSWORD=VIEWER_PW
    )
    one_error(refused, "permission denied: viewer 'vera' may not manage machines")
    after = sqlite_counts(site)
    assert after["machines"] == before["machines"]
    events = json.loads(
        ok(as_admin(["audit", "list", "--json", "--actor", "vera", "--action", "machine"], site)).stdout
    )
    assert [(e["action"], e["outcome"]) for e in events] == [("machine.create", "denied")]
    # the viewer may still read
    assert "pc01" in ok(run_ggnet(["machine", "list"], site, GGNET_USER="vera", GGNET_PASSWORD=VIEWER_PW)).stdout


@pytest.mark.parametrize(
    "args",
    [
        ["machine", "add"],  # missing name
        ["machine", "add", "pc02"],  # missing --mac
        ["machine", "add", "pc02", "--mac", "52:54:00:00:00:02", "--boot-mode", "efi"],
        ["machine", "set", "pc01"],  # nothing to change
        ["machine", "frobnicate"],
        ["user", "add", "bob", "--role", "viewer", "--password", "in-argv-is-refused"],
        ["audit", "list", "--limit", "0"],
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    result = as_admin(args, ggnet_env(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "Usage:" in result.stderr
    assert "Traceback" not in result.stderr


TOO_LONG = "é" * 36 + "x"  # 37 characters, 73 bytes in UTF-8

# (arguments, phrase of the one error line, new password)
BAD_INPUTS = [
    (["machine", "add", "pc02", "--mac", "01:00:5e:00:00:01"], "mac: must be a unicast address", None),
    (
        ["machine", "add", "pc02", "--mac", "52:54:00:12:34:56"],
        "mac: 52:54:00:12:34:56 is already used by machine 'pc01'",
        None,
    ),
    (["machine", "add", "PC01", "--mac", "52:54:00:00:00:02"], "name: pc01 is already used by machine 'pc01'", None),
    (
        ["machine", "add", "pc-with-a-long-name", "--mac", "52:54:00:00:00:02"],
        "name: must be at most 15 characters",
        None,
    ),
    (["machine", "add", "x';DROP--", "--mac", "52:54:00:00:00:02"], "name: may contain only", None),
    (
        ["machine", "add", "pc02", "--mac", "52:54:00:00:00:02", "--ip", "192.168.1.255"],
        "ip: must be a host address",
        None,
    ),
    (["machine", "set", "pc01", "--mac", "ff:ff:ff:ff:ff:ff"], "mac: must not be the broadcast address", None),
    (["machine", "show", "pc99"], "no machine named 'pc99'", None),
    (["machine", "rm", "pc99"], "no machine named 'pc99'", None),
    (["machine", "import", "/nonexistent/lab.csv"], "file: /nonexistent/lab.csv does not exist", None),
    (
        ["user", "add", "bob", "--role", "viewer"],
        "password: must be at most 72 bytes in UTF-8 (bcrypt's limit), got 73",
        TOO_LONG,
    ),
    (["user", "add", "vera", "--role", "viewer"], "a user named 'vera' already exists", "long-enough-1"),
    (["user", "passwd", "vera"], "password: must be at least 8 bytes", "short"),
    (["user", "rm", "admin"], "cannot delete 'admin': it is the last active admin", None),
    (["user", "disable", "nobody"], "no user named 'nobody'", None),
]


@pytest.mark.parametrize(
    ("args", "phrase", "new_password"),
    BAD_INPUTS,
    ids=[f"{i}-{'-'.join(a[:2])}" for i, (a, _, _) in enumerate(BAD_INPUTS)],
)
def test_bad_input_exits_1_with_one_line_and_writes_nothing(
    site: dict[str, str], args: list[str], phrase: str, new_password: str | None
) -> None:
    before = sqlite_counts(site)
    extra = {"GGNET_NEW_PASSWORD": new_password} if new_password else {}
    one_error(as_admin(args, site, **extra), phrase)
    assert sqlite_counts(site) == before


def test_wrong_password_and_missing_credentials(site: dict[str, str]) -> None:
    one_error(
        run_ggnet(["machine", "list"], site, GGNET_USER="admin", GGNET_PASSWORD="wrong-pass"),
        "wrong user name or password",
    )
    one_error(
        run_ggnet(["machine", "list"], site), "user: is required: pass --user NAME, set GGNET_USER or run 'ggnet login'"
    )
    # no terminal to ask on: a clear error, never a hang
    one_error(run_ggnet(["machine", "list"], site, GGNET_USER="admin"), "password: is required: set GGNET_PASSWORD")
    one_error(
        as_admin(["user", "add", "bob", "--role", "viewer"], site), "password: is required: set GGNET_NEW_PASSWORD"
    )
    # --user overrides GGNET_USER
    listed = run_ggnet(
        ["--user", "vera", "machine", "list", "--json"], site, GGNET_USER="admin", GGNET_PASSWORD=VIEWER_PW
    )
    assert json.loads(ok(listed).stdout)[0]["chap_secret"] is None  # viewers never see secrets


def test_import_reports_every_bad_row_and_imports_nothing(site: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "lab.csv"
    bad.write_text(
        "name,mac,ip,boot_mode\n"
        "pc10,52:54:00:00:00:10,192.168.1.10,bios\n"
        "pc11,not-a-mac,,uefi\n"
        "pc12,52:54:00:00:00:12,,\n"
        "pc01,52:54:00:00:00:13,,\n"  # name taken in the database
        "pc14,52:54:00:00:00:10,,\n",  # MAC repeats line 2
        encoding="utf-8",
    )
    before = sqlite_counts(site)
    result = as_admin(["machine", "import", str(bad)], site)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: lab.csv line 3: mac: must be a MAC address such as 52:54:00:12:34:56 (colons, hyphens, dots or bare hex)",
        "error: lab.csv line 5: name: pc01 is already used by machine 'pc01'",
        "error: lab.csv line 6: mac: 52:54:00:00:00:10 repeats line 2",
        "error: nothing was imported",
    ]
    assert sqlite_counts(site) == before

    good = tmp_path / "good.csv"
    good.write_text("name,mac\npc20,5254.0000.0020\npc21,52-54-00-00-00-21\n", encoding="utf-8")
    assert ok(as_admin(["machine", "import", str(good)], site)).stdout.strip() == f"imported 2 machines from {good}"
    names = [m["name"] for m in json.loads(ok(as_admin(["machine", "list", "--json"], site)).stdout)]
    assert names == ["pc01", "pc20", "pc21"]


def test_console_without_subcommand_starts_with_no_users(tmp_path: Path) -> None:
    """`ggnet` alone opens the console (in a pseudo-terminal); on an empty site it must not crash."""
    env = ggnet_env(tmp_path, TERM="xterm-256color", COLUMNS="100", LINES="30")
    master, slave = pty.openpty()
    proc = subprocess.Popen([ggnet_executable()], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    output = b""
    try:
        deadline = time.monotonic() + 30
        drawn_at: float | None = None
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    output += os.read(master, 65536)
                except OSError:
                    break
                drawn_at = drawn_at or time.monotonic()
            if drawn_at and time.monotonic() - drawn_at > 3:
                break  # drawn, and still up a few seconds later (a live screen may keep redrawing)
        assert proc.poll() is None, output.decode(errors="replace")[-2000:]  # still running: it did not crash
        os.write(master, b"\x11")  # ctrl+q, Textual's quit key
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        while True:
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                break
            try:
                output += os.read(master, 65536)
            except OSError:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert output, "the console drew nothing"
    assert b"Traceback" not in output
    assert proc.returncode in (0, -9)


def _converse(args: list[str], env: dict[str, str], answers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """Run ggnet on a pseudo-terminal, answering each prompt; returns exit status and all output."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [ggnet_executable(), *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
    )
    os.close(slave)
    output = b""
    pending = list(answers)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                output += chunk
            if pending and pending[0][0] in output:
                os.write(master, pending.pop(0)[1])
                output += b"\n"  # keep later prompts distinct from the one just answered
            if proc.poll() is not None and not ready:
                break
        return proc.wait(timeout=10), output
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_new_password_prompt_does_not_echo(site: dict[str, str]) -> None:
    env = {**site, "GGNET_USER": "admin", "GGNET_PASSWORD": ADMIN_PW}
    typed = b"typed-at-the-prompt-1"
    status, output = _converse(
        ["user", "add", "bob", "--role", "viewer"],
        env,
        [(b"new password for bob:", typed + b"\n"), (b"again:", typed + b"\n")],
    )
    assert status == 0, output
    assert b"user 'bob' added as viewer" in output
    assert typed not in output  # not echoed
    ok(run_ggnet(["machine", "list"], site, GGNET_USER="bob", GGNET_PASSWORD=typed.decode()))
    status, output = _converse(
        ["user", "passwd", "bob"],
        env,
        [(b"new password for bob:", b"first-entry-1\n"), (b"again:", b"second-entry-2\n")],
    )
    assert status == 1 and b"error: password: the two entries differ" in output


@pytest.mark.skipif(os.geteuid() != 0, reason="break-glass recovery is for root")
def test_root_recovers_a_locked_admin_without_a_ggnet_login(site: dict[str, str]) -> None:
    """Even if someone keeps every admin locked, the server's root gets back in (and it is audited)."""
    db = sqlite3.connect(Path(site["GGNET_DATA_DIR"]) / "ggnet.db")
    db.execute(
        "UPDATE users SET failed_logins = 10, locked_until = '2999-01-01 00:00:00.000000' WHERE username = 'admin'"
    )
    db.commit()
    db.close()
    one_error(as_admin(["machine", "list"], site), "too many failed logins")
    ok(run_ggnet(["user", "enable", "admin", "--local"], site))
    ok(run_ggnet(["user", "passwd", "admin", "--local"], site, GGNET_NEW_PASSWORD="fresh-admin-pass"))
    events = json.loads(
        ok(
            run_ggnet(
                ["audit", "list", "--limit", "5", "--json"], site, GGNET_USER="admin", GGNET_PASSWORD="fresh-admin-pass"
            )
        ).stdout
    )
    assert [(e["actor"], e["action"]) for e in events[1:3]] == [
        ("root (local recovery)", "user.passwd"),
        ("root (local recovery)", "user.enable"),
    ]


def test_local_recovery_is_refused_to_anyone_but_root(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.auth import local_recovery_actor
    from core.errors import PermissionDenied

    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # the OS identity is the boundary here
    with pytest.raises(PermissionDenied, match="needs root"):
        local_recovery_actor()


# --- operating conditions: each one `error: <sentence>` (or success), never "unexpected" ---------------


def test_a_closed_stdout_ends_quietly(site: dict[str, str]) -> None:
    """`ggnet machine list | head -3`: the reader goes away; no traceback, no "unexpected"."""
    proc = subprocess.Popen(
        [ggnet_executable(), "machine", "list"],
        env={**site, "GGNET_USER": "admin", "GGNET_PASSWORD": ADMIN_PW},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before ggnet writes anything (it logs in first)
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert stderr == ""


def _mount_tmpfs(path: Path, size: str = "64m") -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True, timeout=30)


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Path]]:
    mounted: list[Path] = []
    yield mounted
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


READONLY_WORDS = "attempt to write a readonly database"


def test_a_database_on_a_read_only_file_system_can_be_read(
    site: dict[str, str], tmp_path: Path, mounts: list[Path]
) -> None:
    ro = tmp_path / "ro"
    _mount_tmpfs(ro)
    mounts.append(ro)
    subprocess.run(["cp", "-a", site["GGNET_DATA_DIR"], str(ro / "data")], check=True)
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True, timeout=30)
    env = {**site, "GGNET_DATA_DIR": str(ro / "data"), "GGNET_LOG_FILE": str(tmp_path / "ggnet.log")}
    assert "pc01" in ok(as_admin(["machine", "list"], env)).stdout
    assert "auth.login" in ok(as_admin(["audit", "list"], env)).stdout
    line = one_error(as_admin(["machine", "add", "pc02", "--mac", "52:54:00:00:00:02"], env), "is read-only")
    assert READONLY_WORDS not in line
    doctor = run_ggnet(["doctor"], env).stdout
    assert "is read-only" in next(row for row in doctor.splitlines() if " database " in row)
    assert "login not recorded" in (tmp_path / "ggnet.log").read_text()


def test_a_read_only_database_file_of_an_unprivileged_user_can_be_read(site: dict[str, str]) -> None:
    """What an operator without root sees when the database file is 0400: reads work, writes say why."""
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("running ggnet as another user needs root")
    base = Path(tempfile.mkdtemp(prefix="ggnet-ro-", dir="/tmp"))  # pytest's tmp is 0700: out of reach
    try:
        shutil.copytree(site["GGNET_DATA_DIR"], base / "data")
        (base / "home").mkdir()
        for path in (base, base / "home", base / "data", *(base / "data").iterdir()):
            os.chown(path, 65534, 65534)
        (base / "data" / "ggnet.db").chmod(0o400)
        env = {
            **ggnet_env(base),
            "XDG_CONFIG_HOME": str(base / "home"),
            "XDG_DATA_HOME": str(base / "home"),
            "GGNET_USER": "admin",
            "GGNET_PASSWORD": ADMIN_PW,
        }
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", ggnet_executable()]

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*as_nobody, *args], env=env, capture_output=True, text=True, timeout=60)

        assert "pc01" in ok(run("machine", "show", "pc01")).stdout
        line = one_error(run("machine", "rm", "pc01"), "is read-only: ggnet can show its data but not change it")
        assert READONLY_WORDS not in line
        assert "is read-only" in run("doctor").stdout
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_read_only_postgresql_database_can_be_read(tmp_path: Path, pg_url: str) -> None:
    env = ggnet_env(tmp_path, GGNET_DATABASE_URL=pg_url)
    ok(run_ggnet(["init", "--admin", "admin"], env, GGNET_NEW_PASSWORD=ADMIN_PW))
    ok(as_admin(["machine", "add", "pc01", "--mac", "52:54:00:00:00:01"], env))
    import asyncio

    name = pg_url.rpartition("/")[2]
    asyncio.run(_pg_admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
    assert "pc01" in ok(as_admin(["machine", "list"], env)).stdout
    line = one_error(as_admin(["machine", "rm", "pc01"], env), "is read-only")
    assert "unexpected" not in line


def test_a_locked_database_reads_and_says_busy(site: dict[str, str]) -> None:
    """Another process holds SQLite's write lock: reads still work (after the login's wait), a change
    says the database is busy, and the doctor does not say it "answers"."""
    site = {**site, "GGNET_DB_BUSY_SECONDS": "2"}  # the wait is the setting's, not ten seconds per command
    holder = sqlite3.connect(Path(site["GGNET_DATA_DIR"]) / "ggnet.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        doctor = run_ggnet(["doctor"], site).stdout
        row = next(line for line in doctor.splitlines() if " database " in line)
        assert "is busy: another process holds its write lock" in row and "answers" not in row
        assert "changes wait up to 2 s" in row
        assert "pc01" in ok(as_admin(["machine", "list"], site)).stdout
        local = run_ggnet(["user", "enable", "admin", "--local"], site)  # root, no login: straight to the write
        one_error(local, "is busy: another process has held its write lock for over 2 s; try again")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def _fill(directory: Path, name: str) -> None:
    """Write zeros until the file system says it is full."""
    with open(directory / name, "ab", buffering=0) as handle:
        for size in (1 << 20, 4096):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                pass


def test_a_full_disk_still_runs_the_commands_that_free_space(tmp_path: Path, mounts: list[Path]) -> None:
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "48m")
    mounts.append(disk)
    env = ggnet_env(disk)  # data directory, database and log on the small file system
    ok(run_ggnet(["init", "--admin", "admin"], env, GGNET_NEW_PASSWORD=ADMIN_PW))
    source = tmp_path / "disk.raw"
    source.write_bytes(os.urandom(12 << 20))
    ok(as_admin(["image", "import", str(source), "--name", "old"], env))
    _fill(disk, "fill")
    assert ok(as_admin(["machine", "list"], env)).stdout.strip() == "(none)"
    ok(as_admin(["image", "rm", "old"], env))  # frees 12 MiB
    assert not any((disk / "data" / "images").iterdir())
    _fill(disk, "fill-again")
    line = one_error(as_admin(["machine", "add", "pc01", "--mac", "52:54:00:00:00:01"], env), "is full")
    assert "unexpected" not in line and "mac" not in line
    log = (disk / "data" / "ggnet.log").read_text()
    assert "released its 8 MiB reserve" in log
