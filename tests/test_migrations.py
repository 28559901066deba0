"""Schema migrations: models and migration head agree; old databases are upgraded; newer ones refused."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateIndex

from core.context import Core
from core.db import SCHEMA_HEAD, Database, _script, head_revision
from core.errors import SchemaTooNew
from core.models import Base, PartialIndex

from .cli import ggnet_env, run_ggnet
from .conftest import _pg_admin, _pg_url_for


def _diff(connection) -> list:  # type: ignore[no-untyped-def]
    context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
    return compare_metadata(context, Base.metadata)


def test_schema_head_is_alembics_head() -> None:
    """Commands compare the database with SCHEMA_HEAD without loading alembic: it must be the newest migration."""
    newest = _script().get_current_head()
    assert newest == SCHEMA_HEAD, f"set SCHEMA_HEAD = {newest!r} in core/db.py (a migration was added)"


async def test_models_and_migration_head_agree(core: Core) -> None:
    async with core.db.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []
        assert await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision()) == head_revision()


PARTIAL_INDEXES = [
    index for table in Base.metadata.sorted_tables for index in table.indexes if isinstance(index, PartialIndex)
]


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()], ids=["sqlite", "pg"])
def test_partial_indexes_are_partial_on_both_databases(dialect) -> None:  # type: ignore[no-untyped-def]
    """The models hand their partial indexes' condition to the dialect late (see PartialIndex): the DDL has it."""
    assert len(PARTIAL_INDEXES) == 3
    for index in PARTIAL_INDEXES:
        assert str(CreateIndex(index).compile(dialect=dialect)).endswith(f" WHERE {index.where}")


async def test_partial_indexes_match_the_migrations(core: Core) -> None:
    """compare_metadata does not compare an index's condition: the migrated database has each model's."""

    def conditions(connection) -> dict[str, str]:  # type: ignore[no-untyped-def]
        found = {}
        for index in PARTIAL_INDEXES:
            reflected = {ix["name"]: ix for ix in inspect(connection).get_indexes(index.table.name)}  # type: ignore[union-attr]
            options = reflected[index.name].get("dialect_options", {})
            found[index.name] = str(options.get(f"{connection.dialect.name}_where", ""))
        return found

    async with core.db.engine.connect() as conn:
        found = await conn.run_sync(conditions)
    for index in PARTIAL_INDEXES:
        if core.db.dialect == "sqlite":  # SQLite keeps the condition as written; PostgreSQL rewrites it
            assert found[index.name] == index.where
        else:
            assert found[index.name], index.name


@pytest.fixture
async def empty_url(db_kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """A database with no tables at all, as a new site starts."""
    if db_kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'new.db'}"
        return
    name = f"ggnet_e_{uuid.uuid4().hex[:12]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    yield _pg_url_for(name)
    await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tables(connection) -> set[str]:  # type: ignore[no-untyped-def]
    return set(inspect(connection).get_table_names())


async def test_empty_database_is_upgraded_to_head(empty_url: str) -> None:
    db = Database(empty_url)
    try:
        assert await db.current_revision() is None
        await db.upgrade()
        assert await db.current_revision() == head_revision()
        async with db.engine.connect() as conn:
            assert set(Base.metadata.tables) <= await conn.run_sync(_tables)
        await db.upgrade()  # a second start changes nothing
        assert await db.current_revision() == head_revision()
    finally:
        await db.dispose()


async def test_database_at_base_is_upgraded(empty_url: str) -> None:
    """Downgrade to base (every migration's downgrade runs), then a start brings it back to head."""
    from alembic import command

    from core.db import _alembic_config

    db = Database(empty_url)
    try:
        await db.upgrade()
        async with db.engine.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(_alembic_config(c), "base"))
        async with db.engine.connect() as conn:
            assert not (await conn.run_sync(_tables)) & set(Base.metadata.tables)
        await db.upgrade()
        assert await db.current_revision() == head_revision()
    finally:
        await db.dispose()


async def test_newer_database_is_refused(core: Core) -> None:
    async with core.db.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'ffff0000beef'"))
    with pytest.raises(SchemaTooNew) as caught:
        await core.db.upgrade()
    assert "newer than this ggnet" in caught.value.message
    assert "ffff0000beef" in caught.value.message
    async with core.db.engine.connect() as conn:  # and nothing was touched
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
    assert version == "ffff0000beef"


def test_cli_refuses_a_newer_database(tmp_path: Path) -> None:
    env = ggnet_env(tmp_path)
    assert run_ggnet(["init", "--admin", "admin"], env, GGNET_NEW_PASSWORD="admin-pass-1").returncode == 0
    db_file = Path(env["GGNET_DATA_DIR"]) / "ggnet.db"
    with sqlite3.connect(db_file) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffff0000beef'")
    result = run_ggnet(["machine", "list"], env)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: the database schema (revision ffff0000beef) is newer than this ggnet (head {head_revision()}); "
        "upgrade ggnet before using this database"
    ]
