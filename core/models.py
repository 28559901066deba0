"""SQLAlchemy 2 typed models. Enums are stored as strings; timestamps are UTC-aware."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
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


class StrEnum(str, enum.Enum):
    def __str__(self) -> str:
        return self.value


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


class BootMode(StrEnum):
    BIOS = "bios"
    UEFI = "uefi"
    UEFI_SECURE = "uefi-secure"


class ImageKind(StrEnum):
    SYSTEM = "system"
    GAME = "game"


class SessionKind(StrEnum):
    NORMAL = "normal"
    KEEP = "keep"
    MAINTENANCE = "maintenance"


class SessionState(StrEnum):
    STARTING = "starting"
    ACTIVE = "active"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"


LIVE_SESSION_STATES = (SessionState.STARTING, SessionState.ACTIVE, SessionState.STOPPING)


class Outcome(StrEnum):
    OK = "ok"
    DENIED = "denied"
    FAILED = "failed"


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

    __mapper_args__ = {"version_id_col": Versioned.row_version}  # type: ignore[dict-item]


class Image(Versioned, Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = enum_column(ImageKind)
    description: Mapped[str] = mapped_column(Text, default="")

    __mapper_args__ = {"version_id_col": Versioned.row_version}  # type: ignore[dict-item]


class ImageVersion(Base):
    """Immutable once created, except for notes and the active flag."""

    __tablename__ = "image_versions"
    __table_args__ = (
        UniqueConstraint("image_id", "number"),
        # at most one active version per image
        Index(
            "uq_image_versions_one_active",
            "image_id",
            unique=True,
            sqlite_where=text("is_active"),
            postgresql_where=text("is_active"),
        ),
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
    # stored in clear: it is written into the machine's iPXE script
    chap_secret: Mapped[str] = mapped_column(String(64))
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="RESTRICT"), index=True)
    pinned_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("image_versions.id", ondelete="RESTRICT"), index=True
    )
    keep_writeback: Mapped[bool] = mapped_column(Boolean, default=False)
    notes: Mapped[str] = mapped_column(Text, default="")
    last_seen_at: Mapped[datetime | None]

    __mapper_args__ = {"version_id_col": Versioned.row_version}  # type: ignore[dict-item]


class BootSession(Base):
    """One boot lifecycle of a machine."""

    __tablename__ = "boot_sessions"
    __table_args__ = (
        # one live session per machine, enforced by the database (two consoles racing)
        Index(
            "uq_boot_sessions_one_live",
            "machine_id",
            unique=True,
            sqlite_where=text("state IN ('starting', 'active', 'stopping')"),
            postgresql_where=text("state IN ('starting', 'active', 'stopping')"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id", ondelete="CASCADE"), index=True)
    image_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("image_versions.id", ondelete="SET NULL"), index=True
    )
    kind: Mapped[str] = enum_column(SessionKind)
    state: Mapped[str] = enum_column(SessionState)
    error: Mapped[str | None] = mapped_column(Text)
    writeback_file: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None]
    started_by: Mapped[str | None] = mapped_column(String(32))
    stopped_by: Mapped[str | None] = mapped_column(String(32))
    row_version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)

    __mapper_args__ = {"version_id_col": row_version}


class Target(Base):
    """The iSCSI target a live session should have (desired state)."""

    __tablename__ = "targets"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("boot_sessions.id", ondelete="CASCADE"), unique=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id", ondelete="CASCADE"), unique=True)
    iqn: Mapped[str] = mapped_column(String(223), unique=True)
    backend: Mapped[str] = mapped_column(String(8))
    lun: Mapped[int] = mapped_column(Integer)
    portal: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


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
