"""The bad-input table: what an operator mistypes and what an attacker tries, against users,
machines and CSV import, on SQLite and PostgreSQL. Each case gets its own specific error
(the field and a phrase of the rule) and leaves every table exactly as it was."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from core.auth import Actor
from core.config import load_settings
from core.context import Core
from core.errors import Conflict, GgnetError, Invalid, NotFound
from core.models import Base
from core.services import audit, boot, machines, users
from core.services.machines import CsvRowError, read_csv_file

from .conftest import PASSWORD, make_user

TOO_LONG_PW = "ü" * 36 + "!"  # 37 characters, 73 bytes: must be refused, never cut to 72
Call = Callable[[Core, Actor, Path], Awaitable[Any]]


@dataclass(frozen=True)
class Bad:
    id: str
    call: Call
    error: type[GgnetError]
    field: str | None  # the field Invalid must name (None for NotFound/Conflict)
    phrase: str


def add_user(username: Any = "bob", role: Any = "viewer", password: Any = PASSWORD) -> Call:
    return lambda c, a, _: users.add_user(c, a, username, role, password)


def add_machine(**fields: Any) -> Call:
    values = {"name": "pc09", "mac": "52:54:00:00:00:09", **fields}
    return lambda c, a, _: machines.add_machine(c, a, **values)


def update_machine(name: str = "pc01", /, **fields: Any) -> Call:
    return lambda c, a, _: machines.update_machine(c, a, name, **fields)


def import_csv(text: str) -> Call:
    return lambda c, a, _: machines.import_csv(c, a, text, source="lab.csv")


def import_file(data: bytes) -> Call:
    """The CLI reads the file; its text goes to the service."""

    async def go(core: Core, actor: Actor, tmp: Path) -> Any:
        path = tmp / "lab.csv"
        path.write_bytes(data)
        return await machines.import_csv(core, actor, read_csv_file(path), source="lab.csv")

    return go


def import_special(make: Callable[[Path], None]) -> Call:
    """A CSV "file" that is not a regular file (made by ``make`` at the path): refused at once."""

    async def go(core: Core, actor: Actor, tmp: Path) -> Any:
        path = tmp / "lab.csv"
        make(path)
        return await machines.import_csv(core, actor, await asyncio.to_thread(read_csv_file, path), source="lab.csv")

    return go


def _device(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod of a character device needs root")
    os.mknod(path, 0o666 | stat.S_IFCHR, os.stat("/dev/null").st_rdev)  # a copy of /dev/null


def settings_file(data: bytes, **environment: str) -> Call:
    """ggnet reading a settings file (--config) with ``environment`` set meanwhile."""

    async def go(_core: Core, _actor: Actor, tmp: Path) -> Any:
        path = tmp / "ggnet.toml"
        path.write_bytes(data)
        saved = {key: os.environ.get(key) for key in environment}
        os.environ.update(environment)
        try:
            return load_settings(path)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    return go


def dnsmasq_to(make: Callable[[Path], Path]) -> Call:
    """``ggnet boot dnsmasq -o PATH`` where ``make`` prepares PATH; what was there stays."""

    async def go(core: Core, actor: Actor, tmp: Path) -> Any:
        path = make(tmp)
        before = os.lstat(path) if os.path.lexists(path) else None
        try:
            return await boot.write_dnsmasq_config(core, actor, path, mode="proxy", subnet="192.168.1.0/24")
        finally:
            after = os.lstat(path) if os.path.lexists(path) else None
            assert (before and (before.st_ino, before.st_mode, before.st_rdev)) == (
                after and (after.st_ino, after.st_mode, after.st_rdev)
            ), "the output path was replaced"

    return go


def _node(tmp: Path) -> Path:
    _device(tmp / "dnsmasq.conf")
    return tmp / "dnsmasq.conf"


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "dnsmasq.conf")
    return tmp / "dnsmasq.conf"


def _link(tmp: Path) -> Path:
    (tmp / "victim").write_text("keep me\n")
    (tmp / "dnsmasq.conf").symlink_to(tmp / "victim")
    return tmp / "dnsmasq.conf"


CSV_HEAD = "name,mac,ip,boot_mode\n"
MAX_OFFSET = 2**63 - 1

# fmt: off
CASES = [
    # --- users -------------------------------------------------------------------------------
    Bad("user-empty-name",       add_user(""), Invalid, "username", "must not be empty"),
    Bad("user-name-too-long",    add_user("b" * 33), Invalid, "username", "at most 32 characters"),
    Bad("user-name-huge",        add_user("b" * 100_000), Invalid, "username", "at most 32 characters"),
    Bad("user-name-sql",         add_user("bob'; DROP TABLE users;--"), Invalid, "username", "must start with a letter"),
    Bad("user-name-nul",         add_user("bo\x00b"), Invalid, "username", "must start with a letter"),
    Bad("user-name-lookalike",   add_user("аdmin"), Invalid, "username", "ASCII"),  # Cyrillic а
    Bad("user-name-not-text",    add_user(42), Invalid, "username", "must be text"),
    Bad("user-role-unknown",     add_user(role="root"), Invalid, "role", "admin, operator or viewer"),
    Bad("user-pw-short",         add_user(password="1234567"), Invalid, "password", "at least 8 bytes"),
    Bad("user-pw-73-bytes",      add_user(password=TOO_LONG_PW), Invalid, "password", "at most 72 bytes in UTF-8 (bcrypt's limit), got 73"),
    Bad("user-pw-nul",           add_user(password="abcd\x00efgh"), Invalid, "password", "NUL"),
    Bad("user-duplicate-case",   add_user("VERA"), Conflict, None, "a user named 'vera' already exists"),
    Bad("user-role-change-bad",  lambda c, a, _: users.set_role(c, a, "vera", "superuser"), Invalid, "role", "admin, operator or viewer"),
    Bad("user-passwd-short",     lambda c, a, _: users.set_password(c, a, "vera", "short"), Invalid, "password", "at least 8 bytes"),
    Bad("user-passwd-unknown",   lambda c, a, _: users.set_password(c, a, "nobody", PASSWORD), NotFound, None, "no user named 'nobody'"),
    Bad("user-show-nul",         lambda c, a, _: users.get_user(c, a, "ve\x00ra"), NotFound, None, "no user named 've\\x00ra'"),
    Bad("user-rm-last-admin",    lambda c, a, _: users.remove_user(c, a, "root-admin"), Conflict, None, "it is the last active admin"),
    # --- machines ----------------------------------------------------------------------------
    Bad("machine-empty-name",    add_machine(name=""), Invalid, "name", "must not be empty"),
    Bad("machine-name-16",       add_machine(name="abcdefghijklmnop"), Invalid, "name", "at most 15 characters"),
    Bad("machine-name-huge",     add_machine(name="p" * 1_000_000), Invalid, "name", "at most 15 characters"),
    Bad("machine-name-digits",   add_machine(name="1234"), Invalid, "name", "must not be all digits"),
    Bad("machine-name-under",    add_machine(name="pc_09"), Invalid, "name", "only letters, digits and hyphens"),
    Bad("machine-name-sql",      add_machine(name="a'or'1'='1"), Invalid, "name", "only letters, digits and hyphens"),
    Bad("machine-name-nul",      add_machine(name="pc\x0009"), Invalid, "name", "only letters, digits and hyphens"),
    Bad("machine-name-lookalike", add_machine(name="рс09"), Invalid, "name", "ASCII"),  # Cyrillic р, с
    Bad("machine-name-taken",    add_machine(name="PC01"), Conflict, None, "name: pc01 is already used by machine 'pc01'"),
    Bad("machine-mac-garbage",   add_machine(mac="52:54:00:00:09"), Invalid, "mac", "must be a MAC address"),
    Bad("machine-mac-multicast", add_machine(mac="01:00:5e:7f:ff:fa"), Invalid, "mac", "multicast"),
    Bad("machine-mac-broadcast", add_machine(mac="FF-FF-FF-FF-FF-FF"), Invalid, "mac", "broadcast"),
    Bad("machine-mac-zero",      add_machine(mac="0000.0000.0000"), Invalid, "mac", "all-zero"),
    Bad("machine-mac-taken",     add_machine(mac="5254.0012.3456"), Conflict, None, "mac: 52:54:00:12:34:56 is already used by machine 'pc01'"),
    Bad("machine-ip-garbage",    add_machine(ip="192.168.1.999"), Invalid, "ip", "must be an IPv4 address"),
    Bad("machine-ip-loopback",   add_machine(ip="127.0.0.5"), Invalid, "ip", "loopback"),
    Bad("machine-ip-multicast",  add_machine(ip="224.0.0.251"), Invalid, "ip", "multicast"),
    Bad("machine-ip-taken",      add_machine(ip="192.168.1.10"), Conflict, None, "ip: 192.168.1.10 is already used by machine 'pc01'"),
    Bad("machine-boot-mode",     add_machine(boot_mode="efi"), Invalid, "boot_mode", "must be one of bios, uefi or uefi-secure"),
    Bad("machine-iqn",           add_machine(initiator_iqn="iqn.2024-01.ggnet"), Invalid, "initiator_iqn", "iqn.YYYY-MM.reversed.domain"),
    Bad("machine-notes-nul",     add_machine(notes="spare\x00"), Invalid, "notes", "NUL"),
    Bad("machine-notes-huge",    add_machine(notes="n" * 5000), Invalid, "notes", "at most 2000 characters"),
    Bad("machine-unknown-field", add_machine(colour="red"), Invalid, "colour", "is not a known field"),
    Bad("machine-set-unknown",   update_machine("pc99", ip="192.168.1.50"), NotFound, None, "no machine named 'pc99'"),
    Bad("machine-set-mac",       update_machine(mac="ff:ff:ff:ff:ff:ff"), Invalid, "mac", "broadcast"),
    Bad("machine-set-rename-taken", update_machine("pc02", name="pc01"), Conflict, None, "name: pc01 is already used by machine 'pc01'"),
    Bad("machine-rm-nul",        lambda c, a, _: machines.remove_machine(c, a, "pc01\x00"), NotFound, None, "no machine named"),
    Bad("audit-filter-nul",      lambda c, a, _: audit.list_events(c, a, actor_name="x\x00"), Invalid, "actor", "NUL"),
    # --- CSV import --------------------------------------------------------------------------
    Bad("csv-empty",             import_csv(""), CsvRowError, "lab.csv line 1", "the file is empty"),
    Bad("csv-blank-lines",       import_csv("\n\n  \n"), CsvRowError, "lab.csv line 1", "the file is empty"),
    Bad("csv-wrong-header",      import_csv("host,mac\npc09,52:54:00:00:00:09\n"), CsvRowError, "lab.csv line 1", "header must name the columns"),
    Bad("csv-no-header",         import_csv("pc09,52:54:00:00:00:09\n"), CsvRowError, "lab.csv line 1", "header must name the columns"),
    Bad("csv-header-twice",      import_csv("name,mac,mac\n"), CsvRowError, "lab.csv line 1", "each once"),
    Bad("csv-injection-name",    import_csv(CSV_HEAD + "=cmd|calc,52:54:00:00:00:09,,\n"), CsvRowError, "lab.csv line 2", "name: may contain only"),
    Bad("csv-injection-ip",      import_csv(CSV_HEAD + "pc09,52:54:00:00:00:09,@SUM(1+1),\n"), CsvRowError, "lab.csv line 2", "ip: must be an IPv4 address"),
    Bad("csv-injection-mode",    import_csv(CSV_HEAD + "pc09,52:54:00:00:00:09,,+uefi\n"), CsvRowError, "lab.csv line 2", "boot_mode: must be one of"),
    Bad("csv-duplicate-rows",    import_csv(CSV_HEAD + "pc09,52:54:00:00:00:09,,\npc09,52:54:00:00:00:09,,\n"), CsvRowError, "lab.csv line 3", "name: pc09 repeats line 2"),
    Bad("csv-duplicate-mac",     import_csv(CSV_HEAD + "pc09,52:54:00:00:00:09,,\npc10,5254.0000.0009,,\n"), CsvRowError, "lab.csv line 3", "mac: 52:54:00:00:00:09 repeats line 2"),
    Bad("csv-clash-database",    import_csv(CSV_HEAD + "pc09,52:54:00:00:00:09,,\npc10,52:54:00:12:34:56,,\n"), CsvRowError, "lab.csv line 3", "mac: 52:54:00:12:34:56 is already used by machine 'pc01'"),
    Bad("csv-field-count",       import_csv(CSV_HEAD + "pc09,52:54:00:00:00:09\n"), CsvRowError, "lab.csv line 2", "has 2 fields, the header has 4"),
    Bad("csv-nul",               import_csv(CSV_HEAD + "pc\x0009,52:54:00:00:00:09,,\n"), CsvRowError, "lab.csv line 2", "name:"),
    Bad("csv-blank-name",        import_csv(CSV_HEAD + ",52:54:00:00:00:09,,\n"), CsvRowError, "lab.csv line 2", "name: must not be empty"),
    Bad("csv-too-many-rows",     import_csv("name,mac\n" + "".join(f"p{i},52:54:00:01:{i // 256:02x}:{i % 256:02x}\n" for i in range(10_001))),
        CsvRowError, "lab.csv line 10002", "too many rows: at most 10000"),
    Bad("csv-not-utf8",          import_file("name,mac\nPC-Café,52:54:00:00:00:09\n".encode("latin-1")), Invalid, "file", "is not UTF-8 text"),
    Bad("csv-binary",            import_file(b"\x89PNG\r\n\x1a\n\x00\x00"), Invalid, "file", "is not UTF-8 text"),
    Bad("csv-header-only",       import_csv(CSV_HEAD), CsvRowError, "lab.csv line 1", "the file has a header but no machines"),
    Bad("csv-header-only-blanks", import_csv("\n" + CSV_HEAD + "\n\n"), CsvRowError, "lab.csv line 2", "has a header but no machines"),
    Bad("csv-not-a-csv",         import_csv("FOO_SECRET=topsecret\x00HOME=/root\n"), CsvRowError, "lab.csv line 1", "column 1 is not one of them"),
    Bad("csv-dev-zero",          import_special(lambda p: p.symlink_to("/dev/zero")), Invalid, "file", "is a character device, not a regular file"),
    Bad("csv-device-node",       import_special(_device), Invalid, "file", "is a character device, not a regular file"),
    Bad("csv-fifo",              import_special(os.mkfifo), Invalid, "file", "is a FIFO (named pipe), not a regular file"),
    Bad("csv-directory",         import_special(lambda p: p.mkdir()), Invalid, "file", "is a directory, not a regular file"),
    Bad("csv-too-big",           import_special(lambda p: p.write_bytes(b"\n" * (machines.CSV_MAX_BYTES + 1))), Invalid, "file", "is larger than 4 MiB"),
    # --- settings file -------------------------------------------------------------------------
    Bad("config-binary",         settings_file(b"\x89PNG\r\n\x1a\n\x00\xff"), Invalid, "config", "is not UTF-8 text"),
    Bad("config-utf16",          settings_file('user = "x"\n'.encode("utf-16")), Invalid, "config", "is not UTF-8 text"),
    Bad("config-port-true",      settings_file(b"tgt_control_port = true\n"), Invalid, "config", "tgt_control_port: must be a whole number"),
    Bad("config-port-range",     settings_file(b"tgt_control_port = 70000\n"), Invalid, "config", "between 0 and 65535, got 70000"),
    Bad("config-port-fraction",  settings_file(b"tgt_control_port = 3260.0\n"), Invalid, "config", "tgt_control_port: must be a whole number"),
    Bad("config-bad-under-env",  settings_file(b'target_backend = "iet"\n', GGNET_TARGET_BACKEND="lio"), Invalid, "config", "bad setting in"),
    Bad("config-keys-not-json",  settings_file(b"", GGNET_KEYS="notjson"), Invalid, "config", "GGNET_KEYS must be JSON"),
    Bad("config-env-port-true",  settings_file(b"", GGNET_TGT_CONTROL_PORT="true"), Invalid, "config", "tgt_control_port: must be a whole number"),
    # --- audit ----------------------------------------------------------------------------------
    Bad("audit-offset-overflow", lambda c, a, _: audit.list_events(c, a, offset=MAX_OFFSET + 1), Invalid, "offset", f"between 0 and {MAX_OFFSET}"),
    # --- output paths ---------------------------------------------------------------------------
    Bad("dnsmasq-to-device",     dnsmasq_to(_node), Invalid, "output", "is a character device; ggnet writes only to a regular file"),
    Bad("dnsmasq-to-fifo",       dnsmasq_to(_fifo), Invalid, "output", "is a FIFO (named pipe); ggnet writes only"),
    Bad("dnsmasq-to-symlink",    dnsmasq_to(_link), Invalid, "output", "is a symbolic link; ggnet writes only"),
    Bad("dnsmasq-to-directory",  dnsmasq_to(lambda t: t), Invalid, "output", "is a directory; ggnet writes only"),
    Bad("dnsmasq-no-parent",     dnsmasq_to(lambda t: t / "etc" / "dnsmasq.d" / "ggnet.conf"), Invalid, "output", "does not exist; create it first"),
]
# fmt: on


async def row_counts(core: Core) -> dict[str, int]:
    async with core.db.session() as session:
        return {
            name: int((await session.execute(select(func.count()).select_from(table))).scalar_one())
            for name, table in Base.metadata.tables.items()
        }


@pytest.fixture
async def site(core: Core, admin: Actor) -> Actor:
    await make_user(core, "vera", "viewer")
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:12:34:56", ip="192.168.1.10")
    await machines.add_machine(core, admin, name="pc02", mac="52:54:00:12:34:57")
    return admin


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_bad_input(core: Core, site: Actor, case: Bad, tmp_path: Path) -> None:
    before = await row_counts(core)
    with pytest.raises(GgnetError) as caught:
        await case.call(core, site, tmp_path)
    error = caught.value
    assert type(error) is case.error, f"{type(error).__name__}: {error}"
    if case.field is not None:
        assert isinstance(error, Invalid)
        assert case.field in error.errors, error.errors
        assert case.phrase in error.errors[case.field], error.errors
    assert case.phrase in error.message
    assert "\n" not in error.message and "\x00" not in error.message
    assert "topsecret" not in error.message  # a file's content is never quoted back
    assert len(error.message) < 2000
    assert await row_counts(core) == before


async def test_csv_reports_every_bad_row_at_once(core: Core, site: Actor) -> None:
    text = (
        CSV_HEAD
        + "pc10,52:54:00:00:00:10,,\n"  # good
        + "pc11,52:54:00:00:00:1g,,\n"  # bad MAC
        + "pc12,52:54:00:00:00:12,10.0.0.0,\n"  # network address
        + "PC01,52:54:00:00:00:13,,\n"  # taken in the database
        + "pc10,52:54:00:00:00:14,,\n"  # repeats line 2
    )
    before = await row_counts(core)
    with pytest.raises(CsvRowError) as caught:
        await machines.import_csv(core, site, text, source="lab.csv")
    assert [line for line, _ in caught.value.rows] == [3, 4, 5, 6]
    assert await row_counts(core) == before
    with pytest.raises(CsvRowError) as checked:  # the dry run finds the same rows
        await machines.check_csv(core, site, text, source="lab.csv")
    assert checked.value.rows == caught.value.rows


# --- the same through the installed `ggnet`: one `error: <sentence>`, exit 1, nothing changed ------


@dataclass(frozen=True)
class BadRun:
    id: str
    args: list[str | bytes]
    phrase: str
    env: dict[str, str | bytes] = field(default_factory=dict)
    prepare: Callable[[Path], None] | None = None  # makes files in the test's directory first


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_bytes(data)  # type: ignore[func-returns-value]


# fmt: off
CLI_CASES = [
    BadRun("argv-name-not-utf8",    ["machine", "add", b"pc\xff", "--mac", "52:54:00:00:00:09"], "argument 3 is not valid UTF-8 text"),
    BadRun("argv-show-not-utf8",    ["machine", "show", b"\xff\xfe"], "argument 3 is not valid UTF-8 text"),
    BadRun("argv-mac-not-utf8",     ["machine", "add", "pc09", "--mac", b"52:54:00:00:00:\xe9"], "argument 5 is not valid UTF-8 text"),
    BadRun("argv-config-not-utf8",  ["--config", b"/tmp/\xff.toml", "machine", "list"], "argument 2 is not valid UTF-8 text"),
    BadRun("argv-csv-not-utf8",     ["machine", "import", b"/tmp/lab-\xe9.csv"], "argument 3 is not valid UTF-8 text"),
    BadRun("argv-audit-not-utf8",   ["audit", "list", "--actor", b"\x80"], "argument 4 is not valid UTF-8 text"),
    BadRun("argv-user-not-utf8",    ["--user", b"adm\xefn", "machine", "list"], "argument 2 is not valid UTF-8 text"),
    BadRun("env-user-not-utf8",     ["machine", "list"], "GGNET_USER is not valid UTF-8 text", {"GGNET_USER": b"ad\xffmin"}),
    BadRun("env-password-not-utf8", ["machine", "list"], "GGNET_PASSWORD is not valid UTF-8 text", {"GGNET_PASSWORD": b"pw\xff-\xfe-pw"}),
    BadRun("env-data-dir-not-utf8", ["machine", "list"], "GGNET_DATA_DIR is not valid UTF-8 text", {"GGNET_DATA_DIR": b"/tmp/\xff"}),
    BadRun("env-portal-not-utf8",   ["machine", "list"], "GGNET_PORTAL is not valid UTF-8 text", {"GGNET_PORTAL": b"10.0.0.1:32\xb2"}),
    BadRun("env-home-not-utf8",     ["machine", "list"], "HOME is not valid UTF-8 text", {"HOME": b"/home/\xe9"}),
    BadRun("env-new-pw-not-utf8",   ["user", "add", "bob", "--role", "viewer"], "GGNET_NEW_PASSWORD is not valid UTF-8", {"GGNET_NEW_PASSWORD": b"\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9"}),
    BadRun("config-binary",         ["--config", "bin.toml", "machine", "list"], "bin.toml is not UTF-8 text", prepare=_write("bin.toml", b"\x89PNG\r\n\x1a\n\x00\xff")),
    BadRun("config-utf16",          ["--config", "u16.toml", "machine", "list"], "u16.toml is not UTF-8 text", prepare=_write("u16.toml", 'user = "x"\n'.encode("utf-16"))),
    BadRun("config-fifo",           ["--config", "fifo.toml", "machine", "list"], "is a FIFO (named pipe), not a regular file", prepare=lambda t: os.mkfifo(t / "fifo.toml")),
    BadRun("env-keys-not-json",     ["machine", "list"], "GGNET_KEYS must be JSON", {"GGNET_KEYS": "notjson"}),
    BadRun("env-port-true",         ["machine", "list"], "tgt_control_port: must be a whole number", {"GGNET_TGT_CONTROL_PORT": "true"}),
    BadRun("audit-offset-overflow", ["audit", "list", "--offset", "9223372036854775808"], "offset: must be between 0 and 9223372036854775807"),
    BadRun("log-is-a-device",       ["machine", "list"], "log_file: /dev/full is a character device, not a regular file", {"GGNET_LOG_FILE": "/dev/full"}),
    BadRun("log-is-a-directory",    ["machine", "list"], "log_file: cannot write", {"GGNET_LOG_FILE": "/tmp"}),
    BadRun("log-under-a-file",      ["machine", "list"], "log_file: cannot write", {"GGNET_LOG_FILE": "/etc/hostname/ggnet.log"}),
    BadRun("csv-dev-zero",          ["machine", "import", "/dev/zero"], "file: /dev/zero is a character device, not a regular file"),
    BadRun("csv-fifo",              ["machine", "import", "lab.csv"], "file: lab.csv is a FIFO (named pipe), not a regular file", prepare=lambda t: os.mkfifo(t / "lab.csv")),
    BadRun("csv-directory",         ["machine", "import", "."], "is a directory, not a regular file"),
    BadRun("csv-header-only",       ["machine", "import", "h.csv"], "h.csv line 1: the file has a header but no machines", prepare=_write("h.csv", b"name,mac\n")),
    BadRun("csv-environ",           ["machine", "import", "/proc/self/environ"], "column 1 is not one of them", {"SOME_SECRET": "topsecret"}),
    BadRun("dnsmasq-to-device",     ["boot", "dnsmasq", "--mode", "proxy", "--subnet", "192.168.1.0/24", "-o", "node"], "output: node is a character device", prepare=lambda t: _device(t / "node")),
    BadRun("dnsmasq-no-parent",     ["boot", "dnsmasq", "--mode", "proxy", "--subnet", "192.168.1.0/24", "-o", "etc/ggnet.conf"], "output: the directory etc does not exist"),
]
# fmt: on


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_bad_input_through_the_command_line(site_template: Path, tmp_path: Path, case: BadRun) -> None:
    import shutil
    import subprocess

    from .cli import ADMIN_PW, ggnet_env, ggnet_executable, one_error, sqlite_counts

    shutil.copytree(site_template, tmp_path / "data")
    site = ggnet_env(tmp_path)
    env: dict[str, Any] = {**site, "GGNET_USER": "admin", "GGNET_PASSWORD": ADMIN_PW, **case.env}
    if case.prepare is not None:
        case.prepare(tmp_path)
    before = sqlite_counts(site)
    result = subprocess.run(
        [ggnet_executable(), *case.args],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=60,
    )
    if result.stderr.endswith("error: nothing was imported\n"):  # a CSV's bad rows, then this
        result.stderr = result.stderr.removesuffix("error: nothing was imported\n")
    line = one_error(result, case.phrase)
    assert "unexpected" not in line and "topsecret" not in result.stderr + result.stdout
    assert sqlite_counts(site) == before


async def test_boot_mode_is_case_insensitive_everywhere(core: Core, site: Actor) -> None:
    """In a CSV file too, as in the forms and the CLI: UEFI, Uefi-Secure and bios all count."""
    names = await machines.import_csv(
        core, site, "name,mac,boot_mode\npc10,52:54:00:00:00:10,UEFI\npc11,52:54:00:00:00:11, Uefi-Secure \n"
    )
    assert names == ["pc10", "pc11"]
    assert [(m.name, m.boot_mode) for m in await machines.list_machines(core, site) if m.name in names] == [
        ("pc10", "uefi"),
        ("pc11", "uefi-secure"),
    ]
    changed = await machines.update_machine(core, site, "pc10", boot_mode="BIOS")
    assert changed.boot_mode == "bios"
