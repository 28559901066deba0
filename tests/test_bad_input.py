"""The bad-input table: what an operator mistypes and what an attacker tries, against users,
machines and CSV import, on SQLite and PostgreSQL. Each case gets its own specific error
(the field and a phrase of the rule) and leaves every table exactly as it was."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from core.auth import Actor
from core.context import Core
from core.errors import Conflict, GgnetError, Invalid, NotFound
from core.models import Base
from core.services import audit, machines, users
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


CSV_HEAD = "name,mac,ip,boot_mode\n"

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
