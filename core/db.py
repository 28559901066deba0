"""Async engine, sessions and schema migration (SQLite by default, PostgreSQL for larger sites)."""

from __future__ import annotations

import asyncio
import os
import urllib.parse
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, inspect
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from . import files
from .errors import (
    BackendUnavailable,
    DatabaseBusy,
    DatabaseReadOnly,
    DiskFull,
    GgnetError,
    Invalid,
    SchemaTooNew,
)

if TYPE_CHECKING:  # alembic loads only to migrate (see SCHEMA_HEAD)
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

BUSY_SECONDS = 10.0  # how long a change waits for another process's SQLite write lock (GGNET_DB_BUSY_SECONDS)

# Work that gives way to something more urgent sharing its event loop (ggnet serve marks each API
# request: it gives way to the PCs' boot requests). Each of its sessions opens only after this
# returns, so such a request pauses between its steps, not only before it starts. A session opened
# inside another one never waits: the outer one may hold a lock that the urgent work needs.
give_way: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar("give_way", default=None)


@asynccontextmanager
async def _turn() -> AsyncIterator[None]:
    wait = give_way.get()
    if wait is None:
        yield
        return
    await wait()
    inside = give_way.set(None)
    try:
        yield
    finally:
        give_way.reset(inside)


def _sqlite_pragmas(busy_seconds: float) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy, not the driver, issues BEGIN (see _sqlite_begin)
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return on_connect


def _sqlite_begin(conn: Connection) -> None:
    # Writers take the write lock up front (BEGIN IMMEDIATE) so that the busy timeout
    # applies; a deferred transaction that later writes fails at once with "database is
    # locked" when another console wrote in between.
    immediate = conn.get_execution_options().get("sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def sqlite_file(url: str | URL) -> Path | None:
    """The database file of an SQLite URL (None for PostgreSQL and in-memory databases)."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    if parsed.database.startswith("file:"):
        return Path(urllib.parse.unquote(parsed.database[5:].partition("?")[0]))
    return Path(parsed.database)


def _prepare_sqlite_file(parsed: URL) -> URL:
    """Create the database file 0600 (never through a symlink at its name) before SQLite opens it;
    SQLite gives its -wal and -shm files the database's mode. On a read-only file system the file
    is opened read-only and immutable (SQLite could not create the -shm file a WAL database needs);
    reads work, writes say the database is read-only."""
    path = sqlite_file(parsed)
    if path is None or parsed.database.startswith("file:"):  # type: ignore[union-attr]
        return parsed
    try:
        if not path.parent.is_dir():
            files.private_dir(path.parent)
        fd, _note = files.open_private(path, os.O_RDONLY)
        os.close(fd)
        read_only = bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except (OSError, GgnetError) as exc:
        reason = exc.message if isinstance(exc, GgnetError) else (exc.strerror or str(exc)).lower()
        raise BackendUnavailable(f"cannot open the database file {path}: {reason}") from None
    if read_only and not os.path.exists(f"{path}-wal"):
        # immutable is exact here: nothing can change the file through a read-only mount
        uri = f"file:{urllib.parse.quote(str(path))}"
        return parsed.set(database=uri, query={"mode": "ro", "immutable": "1", "uri": "true"})
    return parsed


# hide_parameters: a database error's text would otherwise quote the statement's values
# (password hashes, CHAP secrets) into the log
def create_engine(url: str, busy_seconds: float = BUSY_SECONDS) -> AsyncEngine:
    parsed = _supported_url(url)
    if parsed.get_backend_name() == "sqlite":
        parsed = _prepare_sqlite_file(parsed)
        engine = create_async_engine(parsed, connect_args={"timeout": busy_seconds}, hide_parameters=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(busy_seconds))
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(parsed, pool_pre_ping=True, hide_parameters=True)


# the async drivers ggnet ships with; plain "sqlite://" and "postgresql://" mean these
_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}


def _supported_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise Invalid(
            "database_url",
            "must be a URL such as sqlite+aiosqlite:///path/ggnet.db or postgresql+asyncpg://user:password@host/ggnet",
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend not in _DRIVERS or driver not in ("", _DRIVERS[backend]):
        raise Invalid(
            "database_url",
            f"must use SQLite (sqlite+aiosqlite://) or PostgreSQL (postgresql+asyncpg://), not {parsed.drivername}",
        )
    return parsed.set(drivername=f"{backend}+{_DRIVERS[backend]}")


class Database:
    """One engine and its session factory."""

    def __init__(self, url: str, busy_seconds: float = BUSY_SECONDS) -> None:
        self.url = url
        self.busy_seconds = busy_seconds
        self.engine = create_engine(url, busy_seconds)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time. This process's writers queue here and each is woken the
        # moment the one before commits; left to SQLite's busy handler they would poll, sleeping up
        # to 100 ms between looks (the engine prepares 16 boots at once). One lock per event loop.
        self._writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def kind(self) -> str:
        return "PostgreSQL" if self.dialect == "postgresql" else "SQLite"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        try:
            async with _turn(), self.sessions() as session:
                yield session
        except DBAPIError as exc:
            raise self.failure(exc) or exc from None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error."""
        try:
            async with _turn(), self._write_turn(), self.sessions() as session, session.begin():
                await session.connection(execution_options={"sqlite_immediate": True})
                yield session
        except DBAPIError as exc:
            raise self.failure(exc) or exc from None

    @asynccontextmanager
    async def _write_turn(self) -> AsyncIterator[None]:
        if self.dialect != "sqlite":  # PostgreSQL locks rows, not the database
            yield
            return
        loop = asyncio.get_running_loop()
        lock = self._writers.get(loop)
        if lock is None:
            lock = self._writers[loop] = asyncio.Lock()
        try:
            async with asyncio.timeout(self.busy_seconds):
                await lock.acquire()
        except TimeoutError:
            holder = "another change in this process"
            raise database_busy(self.safe_url, sqlite_file(self.url), self.busy_seconds, holder) from None
        try:
            yield
        finally:
            lock.release()

    def failure(self, exc: DBAPIError) -> GgnetError | None:
        """The operating condition behind a database error as a typed error with a sentence
        (read-only, busy, disk full, cannot open); None for anything else (constraint
        violations stay as they are: the services turn them into conflicts)."""
        return database_failure(exc, self.safe_url, sqlite_file(self.url), self.busy_seconds)

    async def dispose(self) -> None:
        await self.engine.dispose()

    # --- schema -----------------------------------------------------------

    async def current_revision(self) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.run_sync(_current_revision)

    async def upgrade(self) -> None:
        """Bring the schema to the code's head; refuse a database newer than the code."""
        try:
            if await self.current_revision() == head_revision():
                return
            # two consoles starting at once on an old database: the second waits, then finds it done
            async with self.engine.connect() as conn:
                await conn.execution_options(sqlite_immediate=True)
                # SQLite alters a table by copying it and dropping the original; with foreign keys on,
                # that drop would cascade to (delete) the rows of every table that refers to it
                await conn.run_sync(_sqlite_foreign_keys, False)
                try:
                    async with conn.begin():
                        await conn.run_sync(_upgrade)
                finally:
                    await conn.run_sync(_sqlite_foreign_keys, True)
        except (SchemaTooNew, BackendUnavailable):
            raise
        except DBAPIError as exc:
            known = self.failure(exc)
            if isinstance(known, (DatabaseBusy, DiskFull)):
                raise known from None
            if isinstance(known, DatabaseReadOnly):
                raise DatabaseReadOnly(
                    f"the database {self.safe_url} is read-only and its schema is older than this ggnet: "
                    "upgrade it where it can be written"
                ) from None
            raise BackendUnavailable(f"cannot open the database {self.safe_url}: {_reason(exc)}") from None
        except OSError as exc:
            raise BackendUnavailable(f"cannot open the database {self.safe_url}: {_reason(exc)}") from None

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    async def ensure_current(self) -> None:
        """Refuse to run against a database whose schema is older or newer than the code."""
        if await self.current_revision() == head_revision():
            return
        async with self.engine.connect() as conn:
            await conn.run_sync(_check_revision, False)


def database_failure(
    exc: BaseException, where: str, path: Path | None = None, busy_seconds: float = BUSY_SECONDS
) -> GgnetError | None:
    """See Database.failure; ``where`` names the database, ``path`` is its file (SQLite)."""
    if isinstance(exc, IntegrityError):
        return None
    orig = getattr(exc, "orig", None) or exc
    name = str(getattr(orig, "sqlite_errorname", "") or "")
    code = str(getattr(orig, "sqlstate", "") or getattr(orig, "pgcode", "") or "")
    text = str(orig).lower()
    if name.startswith("SQLITE_READONLY") or code == "25006" or "readonly database" in text:
        return DatabaseReadOnly(
            f"the database {where} is read-only: ggnet can show its data but not change it "
            "(check the permissions and the file system of the database, or the database server)"
        )
    if name.startswith("SQLITE_BUSY") or name == "SQLITE_LOCKED" or code in ("55P03", "40P01", "40001"):
        return database_busy(where, path, busy_seconds if name.startswith("SQLITE_BUSY") else None)
    io_failure = name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN"))
    if name == "SQLITE_FULL" or code in ("53100", "53200") or (io_failure and path and files.disk_full(path)):
        return DiskFull(
            f"the disk holding the database {where} is full: free space there (for example remove image "
            "versions no one uses with ggnet image rm) and try again"
        )
    if io_failure or name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return BackendUnavailable(f"cannot use the database {where}: {_reason(exc)}")
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return BackendUnavailable(f"lost the connection to the database {where}: {_reason(exc)}")
    return None


def database_busy(where: str, path: Path | None, waited: float | None, holder: str = "another process") -> DatabaseBusy:
    wait = f" for over {waited:g} s" if waited is not None else ""
    return DatabaseBusy(
        f"the database {where} is busy: {holder} has held its write lock{wait}; try again"
        + (f" (fuser {path} names the processes that have it open)" if path else "")
    )


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return str(orig).splitlines()[0] if str(orig) else type(orig).__name__


# The newest migration, known without loading alembic (a third of a CLI command's start-up).
# tests/test_migrations.py fails until it equals alembic's head: a new migration updates it.
SCHEMA_HEAD = "0002"


def head_revision() -> str:
    return SCHEMA_HEAD


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    from alembic.config import Config

    import migrations

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config())


_VERSION_TABLE = "alembic_version"  # alembic's default, which migrations/env.py keeps


def _current_revision(connection: Connection) -> str | None:
    """The revision alembic recorded (None: an empty database), with one SELECT and without alembic.
    Only on a connection of its own: a failed SELECT ends its transaction."""
    try:
        rows = connection.exec_driver_sql(f"SELECT version_num FROM {_VERSION_TABLE}").scalars().all()
    except DBAPIError:
        connection.rollback()  # PostgreSQL refuses further statements in a failed transaction
        if inspect(connection).has_table(_VERSION_TABLE):
            raise
        return None
    # several rows (branches) never match the head, so the caller takes alembic's path, which explains
    return ",".join(sorted(rows)) if rows else None


def _alembic_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _check_revision(connection: Connection, allow_older: bool) -> None:
    current = _alembic_revision(connection)
    script = _script()
    head = script.get_current_head()
    if current == head:
        return
    known = {rev.revision for rev in script.walk_revisions()}
    if current is not None and current not in known:
        raise SchemaTooNew(
            f"the database schema (revision {current}) is newer than this ggnet (head {head}); "
            "upgrade ggnet before using this database"
        )
    if not allow_older:
        raise SchemaTooNew(
            f"the database schema (revision {current or 'none'}) is older than this ggnet (head {head}); "
            "run 'ggnet init' or start the console to upgrade it"
        )


def _sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    """Switch SQLite's foreign key enforcement (only possible outside a transaction)."""
    if connection.dialect.name == "sqlite":
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
        cursor.close()


def _upgrade(connection: Connection) -> None:
    from alembic import command

    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(4747001)")  # held until commit
    _check_revision(connection, True)
    command.upgrade(_alembic_config(connection), "head")
    if connection.dialect.name == "sqlite":
        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
        if broken:
            raise BackendUnavailable(f"the schema upgrade left {len(broken)} rows with broken references; not applied")
