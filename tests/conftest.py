"""Shared fixtures: isolated settings, a migrated database on SQLite and on PostgreSQL, users.

PostgreSQL comes from GGNET_TEST_PG_URL (scripts/test.sh starts Debian's cluster and sets it).
Without it the PostgreSQL variants are skipped, except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from core import auth
from core.auth import Actor
from core.config import Settings
from core.context import Core
from core.db import Database
from core.log import configure_logging
from core.models import Role
from tests import cli

auth.set_bcrypt_rounds(4)  # fast hashes in tests; verification honours the cost stored in each hash

PG_URL = os.environ.get("GGNET_TEST_PG_URL")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PASSWORD = "correct-horse-1"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No GGNET_* from the developer's shell; XDG directories inside the test's tmp dir; wake-on-LAN
    packets to the discard port on loopback (the default broadcasts on the LAN)."""
    for key in list(os.environ):
        if key.startswith("GGNET_") and key != "GGNET_TEST_PG_URL":
            monkeypatch.delenv(key)
    monkeypatch.setenv("GGNET_WOL_ADDRESS", "127.0.0.1:9")
    for var in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "xdg" / var.lower()))
    yield


def require_pg() -> str:
    if not PG_URL:
        if IN_CI:
            pytest.fail("PostgreSQL is required in CI: GGNET_TEST_PG_URL is not set (scripts/test.sh sets it)")
        pytest.skip("no PostgreSQL (set GGNET_TEST_PG_URL or run scripts/test.sh as root)")
    return PG_URL


async def _pg_admin(sql: str) -> None:
    import asyncpg

    url = require_pg().replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_url_for(database: str) -> str:
    base, _, _ = require_pg().rpartition("/")
    return f"{base}/{database}"


_templates: dict[str, object] = {}


async def _template(kind: str, tmp_root: Path) -> object:
    """One migrated database per run and kind, copied for every test (faster than migrating each time)."""
    if kind in _templates:
        return _templates[kind]
    if kind == "sqlite":
        path = tmp_root / "template.db"
        db = Database(f"sqlite+aiosqlite:///{path}")
        await db.upgrade()
        await db.dispose()
        _templates[kind] = path
    else:
        name = f"ggnet_tpl_{os.getpid()}"
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}"')
        await _pg_admin(f'CREATE DATABASE "{name}"')
        db = Database(_pg_url_for(name))
        await db.upgrade()
        await db.dispose()
        _templates[kind] = name
    return _templates[kind]


async def make_database_url(kind: str, tmp_path: Path, tmp_root: Path) -> tuple[str, str | None]:
    """A fresh, migrated database; returns its URL and (PostgreSQL) its name for clean-up."""
    template = await _template(kind, tmp_root)
    if kind == "sqlite":
        path = tmp_path / "ggnet.db"
        shutil.copy(template, path)  # type: ignore[arg-type]
        return f"sqlite+aiosqlite:///{path}", None
    name = f"ggnet_t_{uuid.uuid4().hex[:12]}"
    await _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return _pg_url_for(name), name


async def drop_pg_database(name: str) -> None:
    """Best-effort clean-up: a connection the test left behind (a second console's engine) is
    ended by FORCE; if PostgreSQL refuses that, retry plainly, then leave the database (it is
    harmless and uniquely named)."""
    for statement in (f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'DROP DATABASE IF EXISTS "{name}"'):
        try:
            await _pg_admin(statement)
            return
        except Exception:
            await asyncio.sleep(0.5)


@pytest.fixture(scope="session")
def template_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("templates")


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.pg)])
def db_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "pg":
        require_pg()
    return request.param


def make_settings(tmp_path: Path, database_url: str, **extra: object) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        log_file=tmp_path / "ggnet.log",
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
async def core(db_kind: str, tmp_path: Path, template_root: Path) -> AsyncIterator[Core]:
    """A Core on a fresh migrated database of each kind (SQLite, PostgreSQL)."""
    url, pg_name = await make_database_url(db_kind, tmp_path, template_root)
    settings = make_settings(tmp_path, url)
    configure_logging(settings.log_file)
    instance = Core.open(settings)
    yield instance
    await instance.close()
    if pg_name:
        await drop_pg_database(pg_name)


@pytest.fixture
async def sqlite_core(tmp_path: Path, template_root: Path) -> AsyncIterator[Core]:
    url, _ = await make_database_url("sqlite", tmp_path, template_root)
    settings = make_settings(tmp_path, url)
    configure_logging(settings.log_file)
    instance = Core.open(settings)
    yield instance
    await instance.close()


async def make_user(core: Core, username: str, role: Role | str) -> Actor:
    """Create an account straight through the services and log in as it."""
    from core.services import users

    if await users.count_users(core) == 0:
        await users.create_first_admin(core, "root-admin", PASSWORD)
    if username != "root-admin":
        admin = await users.login(core, "root-admin", PASSWORD)
        await users.add_user(core, admin, username, str(Role(role).value), PASSWORD)
    return await users.login(core, username, PASSWORD)


@pytest.fixture
async def admin(core: Core) -> Actor:
    return await make_user(core, "root-admin", Role.ADMIN)


@pytest.fixture
async def operator(core: Core, admin: Actor) -> Actor:
    return await make_user(core, "oscar", Role.OPERATOR)


@pytest.fixture
async def viewer(core: Core, admin: Actor) -> Actor:
    return await make_user(core, "vera", Role.VIEWER)


# In CI a skipped test is a missing install step, not a pass: the run fails unless the skip
# says it is optional (something this machine legitimately cannot show).
OPTIONAL_SKIP = "optional: "
_ci_skips: list[str] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Booting QEMU clients is slow by nature: -m 'not slow' leaves the e2e tests out too. A test
    given a PostgreSQL database by a fixture named pg_url is a pg test (db_kind marks its own)."""
    for item in items:
        if item.get_closest_marker("e2e") is not None:
            item.add_marker(pytest.mark.slow)
        if "pg_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pg)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if IN_CI and report.skipped:
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if "Skipped: " + OPTIONAL_SKIP not in reason and not reason.startswith(OPTIONAL_SKIP):
            _ci_skips.append(f"{report.nodeid}: {reason}")


# --- an initialised site for command-line tests ----------------------------------------


@pytest.fixture(scope="module")
def site_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per module through the CLI itself; each test gets a copy."""
    root = tmp_path_factory.mktemp("cli-site")
    env = cli.ggnet_env(root)
    cli.ok(cli.run_ggnet(["init", "--admin", "admin"], env, GGNET_NEW_PASSWORD=cli.ADMIN_PW))
    cli.ok(cli.as_admin(["user", "add", "vera", "--role", "viewer"], env, GGNET_NEW_PASSWORD=cli.VIEWER_PW))
    cli.ok(cli.as_admin(["machine", "add", "pc01", "--mac", "52:54:00:12:34:56"], env))
    return root / "data"


@pytest.fixture
def site(site_template: Path, tmp_path: Path) -> dict[str, str]:
    """An initialised SQLite site with admin 'admin', viewer 'vera' and machine pc01."""
    shutil.copytree(site_template, tmp_path / "data")
    return cli.ggnet_env(tmp_path)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _ci_skips:
        print("\nCI=true: these tests were skipped, which CI counts as failures:")
        for line in _ci_skips:
            print("  " + line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    template = _templates.get("pg")
    if template and PG_URL:
        try:
            asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)'))
        except Exception:
            pass
