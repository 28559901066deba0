"""SQLAlchemy 2 typed models. Enums are stored as strings; timestamps are UTC-aware."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# the enums live in core.enums (no SQLAlchemy there: the console imports them at start-up)
from .enums import (  # noqa: F401 - re-exported (see implicit_reexport in pyproject.toml): models.Role and friends are used everywhere
    CURRENT_BOOT_STATES,
    OPEN_BOOT_STATES,
    BootMode,
    BootState,
    Disk,
    EngineRequestKind,
    EngineRequestState,
    ImageKind,
    MachineStatus,
    Outcome,
    Role,
    StrEnum,
    TokenKind,
    WritebackPolicy,
    WritebackState,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Always hands back timezone-aware UTC datetimes, also on SQLite (which stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def enum_column(enum_cls: type[StrEnum], **kw: Any) -> Any:
    # plain VARCHAR: adding a value later needs no ALTER TYPE on PostgreSQL
    length = max(len(m.value) for m in enum_cls)
    return mapped_column(String(max(length, 16)), **kw)


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class PartialIndex(Index):
    """A unique index over the rows where ``where`` (SQL) holds, alike on SQLite and PostgreSQL.

    ``Index(..., postgresql_where=...)`` would load the PostgreSQL dialect to check the argument as
    the models are defined: about 20 ms of every command on SQLite, as long as the models' own
    import. Here the condition joins the index's dialect options, for both databases at once, when
    something first reads them (DDL, alembic), which has loaded its dialect anyway.
    tests/test_migrations.py checks the DDL on both and the conditions against the migrations."""

    def __init__(self, name: str, column: str, *, where: str) -> None:
        super().__init__(name, column, unique=True)
        self.where = where

    @cached_property
    def dialect_options(self) -> Any:
        options = super().dialect_options
        for dialect in ("sqlite", "postgresql"):
            options[dialect]["where"] = text(self.where)
        return options


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime()}


class Versioned:
    """Editable rows: a counter for stale-edit detection plus who changed them last."""

    row_version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(32))


class User(Versioned, Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(32), unique=True)
    password_hash: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = enum_column(Role)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    last_failed_at: Mapped[datetime | None]
    locked_until: Mapped[datetime | None]
    last_login_at: Mapped[datetime | None]
    password_changed_at: Mapped[datetime] = mapped_column(default=utcnow)

    __mapper_args__ = {"version_id_col": Versioned.row_version}


class Image(Versioned, Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = enum_column(ImageKind)
    description: Mapped[str] = mapped_column(Text, default="")
    # uefi-secure machines start this signed loader from the disk (sanboot --filename), e.g. \EFI\BOOT\shimx64.efi
    efi_loader: Mapped[str | None] = mapped_column(String(255))

    __mapper_args__ = {"version_id_col": Versioned.row_version}


class ImageVersion(Base):
    """Immutable once created, except for notes and the active flag."""

    __tablename__ = "image_versions"
    __table_args__ = (
        UniqueConstraint("image_id", "number"),
        # at most one active version per image
        PartialIndex("uq_image_versions_one_active", "image_id", where="is_active"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    file_name: Mapped[str] = mapped_column(String(128), unique=True)
    source_format: Mapped[str] = mapped_column(String(16))
    virtual_size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    notes: Mapped[str] = mapped_column(Text, default="")
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(32))


class Machine(Versioned, Base):
    __tablename__ = "machines"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(15), unique=True)  # stored lower case
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    ip: Mapped[str | None] = mapped_column(String(15), unique=True)
    boot_mode: Mapped[str] = enum_column(BootMode, default=BootMode.BIOS.value)
    initiator_iqn: Mapped[str] = mapped_column(String(223), unique=True)
    chap_username: Mapped[str] = mapped_column(String(64))
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="RESTRICT"), index=True)
    pinned_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("image_versions.id", ondelete="RESTRICT"), index=True
    )
    # the game disk: a second LUN of the machine's target, with its own writeback
    game_image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="RESTRICT"), index=True)
    game_pinned_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("image_versions.id", ondelete="RESTRICT"), index=True
    )
    boot_enabled: Mapped[bool] = mapped_column(Boolean, default=True)  # may it boot at all
    writeback_policy: Mapped[str] = enum_column(WritebackPolicy, default=WritebackPolicy.FRESH.value)
    notes: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (
        # at most one maintenance machine per image: its writeback becomes the image's next version
        PartialIndex("uq_machines_one_maintenance_per_image", "image_id", where="writeback_policy = 'maintenance'"),
    )
    __mapper_args__ = {"version_id_col": Versioned.row_version}


class Writeback(Base):
    """A machine's private copy-on-write disk, cloned from an image version (engine-owned)."""

    __tablename__ = "writebacks"

    id: Mapped[int] = mapped_column(primary_key=True)
    server: Mapped[str] = mapped_column(String(64), index=True)  # the boot server whose disk holds it
    machine_id: Mapped[int | None] = mapped_column(ForeignKey("machines.id", ondelete="SET NULL"), index=True)
    disk: Mapped[str] = enum_column(Disk)
    image_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("image_versions.id", ondelete="SET NULL"), index=True
    )
    file_name: Mapped[str] = mapped_column(String(128), unique=True)  # generated, never typed by anyone
    state: Mapped[str] = enum_column(WritebackState)
    retained: Mapped[bool] = mapped_column(Boolean, default=False)  # survives its boot (keep, maintenance)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    allocated_bytes: Mapped[int | None] = mapped_column(BigInteger)  # as last observed
    last_used_at: Mapped[datetime | None]  # the last logout from its target (idle discard counts from here)


class Boot(Base):
    """One boot of a machine: the boot history, and the engine's unit of work."""

    __tablename__ = "boots"
    __table_args__ = (
        # one current boot per machine, enforced by the database (two boot requests racing)
        PartialIndex("uq_boots_one_current", "machine_id", where="state IN ('requested', 'preparing', 'ready')"),
        Index("ix_boots_server_state", "server", "state"),
        Index("ix_boots_machine_requested", "machine_id", "requested_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    server: Mapped[str] = mapped_column(String(64))
    machine_id: Mapped[int | None] = mapped_column(ForeignKey("machines.id", ondelete="SET NULL"))
    machine_name: Mapped[str] = mapped_column(String(15))  # history outlives a deleted or renamed machine
    mac: Mapped[str] = mapped_column(String(17))
    origin: Mapped[str] = mapped_column(String(16))  # "pc" (its boot request) or "operator" (prepared ahead)
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    requested_by: Mapped[str | None] = mapped_column(String(64))
    client_address: Mapped[str | None] = mapped_column(String(45))  # who asked for the script
    policy: Mapped[str] = enum_column(WritebackPolicy)
    image_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("image_versions.id", ondelete="SET NULL"), index=True
    )
    game_version_id: Mapped[int | None] = mapped_column(ForeignKey("image_versions.id", ondelete="SET NULL"))
    system_writeback_id: Mapped[int | None] = mapped_column(ForeignKey("writebacks.id", ondelete="SET NULL"))
    game_writeback_id: Mapped[int | None] = mapped_column(ForeignKey("writebacks.id", ondelete="SET NULL"))
    target_iqn: Mapped[str | None] = mapped_column(String(223))
    # this boot's CHAP secret, stored in clear: the sanboot script carries it (and the OS reuses it from the iBFT)
    chap_secret: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = enum_column(BootState)
    error: Mapped[str | None] = mapped_column(Text)
    prepared_at: Mapped[datetime | None]
    prepare_ms: Mapped[int | None] = mapped_column(Integer)
    login_at: Mapped[datetime | None]
    login_address: Mapped[str | None] = mapped_column(String(45))
    logout_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    ended_by: Mapped[str | None] = mapped_column(String(64))
    end_reason: Mapped[str | None] = mapped_column(String(32))  # superseded, offline, reset, idle, ...


class MachineObservation(Base):
    """What the engine last saw of a machine (screens read this, not the target stack)."""

    __tablename__ = "machine_observations"

    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id", ondelete="CASCADE"), primary_key=True)
    server: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = enum_column(MachineStatus)
    detail: Mapped[str | None] = mapped_column(Text)
    logged_in: Mapped[bool] = mapped_column(Boolean, default=False)
    client_address: Mapped[str | None] = mapped_column(String(45))
    target_present: Mapped[bool] = mapped_column(Boolean, default=False)
    read_bytes: Mapped[int | None] = mapped_column(BigInteger)  # through its target, as the stack counts
    written_bytes: Mapped[int | None] = mapped_column(BigInteger)
    writeback_bytes: Mapped[int | None] = mapped_column(BigInteger)  # allocated on disk, all its writebacks
    last_seen_at: Mapped[datetime | None]  # last time it was logged in (or answered the liveness probe)
    observed_at: Mapped[datetime] = mapped_column(default=utcnow)


class DiscoveredMac(Base):
    """A MAC that asked to boot but belongs to no machine: for the operator to adopt."""

    __tablename__ = "discovered_macs"

    id: Mapped[int] = mapped_column(primary_key=True)
    server: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    requests: Mapped[int] = mapped_column(Integer, default=1)
    last_address: Mapped[str | None] = mapped_column(String(45))


class EngineStatus(Base):
    """One row per boot server: who runs its engine and how its last pass went."""

    __tablename__ = "engine_status"

    server: Mapped[str] = mapped_column(String(64), primary_key=True)
    pid: Mapped[int | None] = mapped_column(Integer)
    mode: Mapped[str | None] = mapped_column(String(16))  # "serve", "embedded" (a console), "once" (a CLI pass)
    started_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    last_pass_at: Mapped[datetime | None]
    last_pass_ms: Mapped[int | None] = mapped_column(Integer)
    last_pass_ok: Mapped[bool | None] = mapped_column(Boolean)
    last_error: Mapped[str | None] = mapped_column(Text)
    backend: Mapped[str | None] = mapped_column(String(8))
    backend_ok: Mapped[bool | None] = mapped_column(Boolean)
    backend_detail: Mapped[str | None] = mapped_column(Text)
    free_bytes: Mapped[int | None] = mapped_column(BigInteger)
    passes: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), default=0)
    repaired_total: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), default=0)
    last_drift: Mapped[list[Any] | None] = mapped_column(JSON)


class EngineRequest(Base):
    """Work an operator asked the engine to do that is not a boot (a pass now, a maintenance apply)."""

    __tablename__ = "engine_requests"
    __table_args__ = (Index("ix_engine_requests_server_state", "server", "state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    server: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = enum_column(EngineRequestKind)
    machine_id: Mapped[int | None] = mapped_column(ForeignKey("machines.id", ondelete="SET NULL"))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    requested_by: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    state: Mapped[str] = enum_column(EngineRequestState)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    done_at: Mapped[datetime | None]


class IntentSignal(Base):
    """A counter every change of desired state bumps, so the engine notices within a second (SQLite);
    PostgreSQL also gets a NOTIFY."""

    __tablename__ = "intent_signal"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), default=0)


class AuthToken(Base):
    """A login token: the CLI's (``ggnet login``) or the HTTP API's refresh token. Only its hash is stored."""

    __tablename__ = "auth_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = enum_column(TokenKind)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the token
    family: Mapped[str] = mapped_column(String(32), index=True)  # refresh rotation: reuse revokes the family
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]  # a refresh token is used once (rotated)
    revoked_at: Mapped[datetime | None]
    client: Mapped[str | None] = mapped_column(String(255))  # address or OS user, for the audit trail


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_at", "at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    object_type: Mapped[str | None] = mapped_column(String(32))
    object_id: Mapped[int | None] = mapped_column(BigInteger)
    object_name: Mapped[str | None] = mapped_column(String(255))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    outcome: Mapped[str] = enum_column(Outcome)
    detail: Mapped[str | None] = mapped_column(Text)
