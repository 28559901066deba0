"""the boot engine: boots, writebacks, observations, engine status and requests, login tokens

Boot sessions and their targets become boots (the boot history) and writebacks: what the
engine (``ggnet serve``) converges. Machines get the intent the engine acts on (may boot,
writeback policy, a game image); the per-machine CHAP secret becomes per boot.

Live sessions are carried over as ready boots with their writebacks, so an upgrade does not
disturb booted clients. Rows that describe things on a host are given the server name from
GGNET_SERVER_NAME, else the host name (the same default as the settings).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 20:30:00
"""

import os
import socket
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TZ = sa.DateTime(timezone=True)


def _server_name() -> str:
    return (os.environ.get("GGNET_SERVER_NAME") or socket.gethostname() or "localhost").strip().lower()[:64]


def upgrade() -> None:
    op.create_table(
        "writebacks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("server", sa.String(length=64), nullable=False),
        sa.Column("machine_id", sa.Integer(), nullable=True),
        sa.Column("disk", sa.String(length=16), nullable=False),
        sa.Column("image_version_id", sa.Integer(), nullable=True),
        sa.Column("file_name", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("retained", sa.Boolean(), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("allocated_bytes", sa.BigInteger(), nullable=True),
        sa.Column("last_used_at", _TZ, nullable=True),
        sa.ForeignKeyConstraint(
            ["image_version_id"],
            ["image_versions.id"],
            name=op.f("fk_writebacks_image_version_id_image_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_writebacks_machine_id_machines"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_writebacks")),
        sa.UniqueConstraint("file_name", name=op.f("uq_writebacks_file_name")),
    )
    with op.batch_alter_table("writebacks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_writebacks_image_version_id"), ["image_version_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_writebacks_machine_id"), ["machine_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_writebacks_server"), ["server"], unique=False)

    op.create_table(
        "boots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("server", sa.String(length=64), nullable=False),
        sa.Column("machine_id", sa.Integer(), nullable=True),
        sa.Column("machine_name", sa.String(length=15), nullable=False),
        sa.Column("mac", sa.String(length=17), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("requested_at", _TZ, nullable=False),
        sa.Column("requested_by", sa.String(length=64), nullable=True),
        sa.Column("client_address", sa.String(length=45), nullable=True),
        sa.Column("policy", sa.String(length=16), nullable=False),
        sa.Column("image_version_id", sa.Integer(), nullable=True),
        sa.Column("game_version_id", sa.Integer(), nullable=True),
        sa.Column("system_writeback_id", sa.Integer(), nullable=True),
        sa.Column("game_writeback_id", sa.Integer(), nullable=True),
        sa.Column("target_iqn", sa.String(length=223), nullable=True),
        sa.Column("chap_secret", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("prepared_at", _TZ, nullable=True),
        sa.Column("prepare_ms", sa.Integer(), nullable=True),
        sa.Column("login_at", _TZ, nullable=True),
        sa.Column("login_address", sa.String(length=45), nullable=True),
        sa.Column("logout_at", _TZ, nullable=True),
        sa.Column("ended_at", _TZ, nullable=True),
        sa.Column("ended_by", sa.String(length=64), nullable=True),
        sa.Column("end_reason", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["game_version_id"],
            ["image_versions.id"],
            name=op.f("fk_boots_game_version_id_image_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["game_writeback_id"],
            ["writebacks.id"],
            name=op.f("fk_boots_game_writeback_id_writebacks"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["image_version_id"],
            ["image_versions.id"],
            name=op.f("fk_boots_image_version_id_image_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_boots_machine_id_machines"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["system_writeback_id"],
            ["writebacks.id"],
            name=op.f("fk_boots_system_writeback_id_writebacks"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_boots")),
    )
    with op.batch_alter_table("boots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_boots_image_version_id"), ["image_version_id"], unique=False)
        batch_op.create_index("ix_boots_machine_requested", ["machine_id", "requested_at"], unique=False)
        batch_op.create_index("ix_boots_server_state", ["server", "state"], unique=False)
        batch_op.create_index(
            "uq_boots_one_current",
            ["machine_id"],
            unique=True,
            sqlite_where=sa.text("state IN ('requested', 'preparing', 'ready')"),
            postgresql_where=sa.text("state IN ('requested', 'preparing', 'ready')"),
        )

    op.create_table(
        "machine_observations",
        sa.Column("machine_id", sa.Integer(), nullable=False),
        sa.Column("server", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("logged_in", sa.Boolean(), nullable=False),
        sa.Column("client_address", sa.String(length=45), nullable=True),
        sa.Column("target_present", sa.Boolean(), nullable=False),
        sa.Column("read_bytes", sa.BigInteger(), nullable=True),
        sa.Column("written_bytes", sa.BigInteger(), nullable=True),
        sa.Column("writeback_bytes", sa.BigInteger(), nullable=True),
        sa.Column("last_seen_at", _TZ, nullable=True),
        sa.Column("observed_at", _TZ, nullable=False),
        sa.ForeignKeyConstraint(
            ["machine_id"],
            ["machines.id"],
            name=op.f("fk_machine_observations_machine_id_machines"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("machine_id", name=op.f("pk_machine_observations")),
    )
    op.create_table(
        "discovered_macs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("server", sa.String(length=64), nullable=False),
        sa.Column("mac", sa.String(length=17), nullable=False),
        sa.Column("first_seen_at", _TZ, nullable=False),
        sa.Column("last_seen_at", _TZ, nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("last_address", sa.String(length=45), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_discovered_macs")),
        sa.UniqueConstraint("mac", name=op.f("uq_discovered_macs_mac")),
    )
    op.create_table(
        "engine_status",
        sa.Column("server", sa.String(length=64), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("mode", sa.String(length=16), nullable=True),
        sa.Column("started_at", _TZ, nullable=True),
        sa.Column("heartbeat_at", _TZ, nullable=True),
        sa.Column("last_pass_at", _TZ, nullable=True),
        sa.Column("last_pass_ms", sa.Integer(), nullable=True),
        sa.Column("last_pass_ok", sa.Boolean(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("backend", sa.String(length=8), nullable=True),
        sa.Column("backend_ok", sa.Boolean(), nullable=True),
        sa.Column("backend_detail", sa.Text(), nullable=True),
        sa.Column("free_bytes", sa.BigInteger(), nullable=True),
        sa.Column("passes", _BIG_ID, nullable=False),
        sa.Column("repaired_total", _BIG_ID, nullable=False),
        sa.Column("last_drift", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("server", name=op.f("pk_engine_status")),
    )
    op.create_table(
        "engine_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("server", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("machine_id", sa.Integer(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("requested_at", _TZ, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("done_at", _TZ, nullable=True),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_engine_requests_machine_id_machines"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_engine_requests")),
    )
    with op.batch_alter_table("engine_requests", schema=None) as batch_op:
        batch_op.create_index("ix_engine_requests_server_state", ["server", "state"], unique=False)

    op.create_table(
        "intent_signal",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", _BIG_ID, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_intent_signal")),
    )
    op.execute("INSERT INTO intent_signal (id, seq) VALUES (1, 0)")

    op.create_table(
        "auth_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("family", sa.String(length=32), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("expires_at", _TZ, nullable=False),
        sa.Column("used_at", _TZ, nullable=True),
        sa.Column("revoked_at", _TZ, nullable=True),
        sa.Column("client", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_auth_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_auth_tokens_token_hash")),
    )
    with op.batch_alter_table("auth_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_auth_tokens_family"), ["family"], unique=False)
        batch_op.create_index(batch_op.f("ix_auth_tokens_user_id"), ["user_id"], unique=False)

    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("efi_loader", sa.String(length=255), nullable=True))

    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("game_image_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("game_pinned_version_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("boot_enabled", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.add_column(sa.Column("writeback_policy", sa.String(length=16), nullable=False, server_default="fresh"))
    op.execute("UPDATE machines SET writeback_policy = 'keep' WHERE keep_writeback")

    _carry_over_sessions()

    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.alter_column("boot_enabled", server_default=None)
        batch_op.alter_column("writeback_policy", server_default=None)
        batch_op.drop_column("chap_secret")
        batch_op.drop_column("keep_writeback")
        batch_op.drop_column("last_seen_at")
        batch_op.create_foreign_key(
            batch_op.f("fk_machines_game_image_id_images"), "images", ["game_image_id"], ["id"], ondelete="RESTRICT"
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_machines_game_pinned_version_id_image_versions"),
            "image_versions",
            ["game_pinned_version_id"],
            ["id"],
            ondelete="RESTRICT",
        )
        batch_op.create_index(batch_op.f("ix_machines_game_image_id"), ["game_image_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_machines_game_pinned_version_id"), ["game_pinned_version_id"], unique=False
        )
        batch_op.create_index(
            "uq_machines_one_maintenance_per_image",
            ["image_id"],
            unique=True,
            sqlite_where=sa.text("writeback_policy = 'maintenance'"),
            postgresql_where=sa.text("writeback_policy = 'maintenance'"),
        )

    op.drop_table("targets")
    op.drop_table("boot_sessions")


_SESSION_STATE_TO_BOOT = {
    "starting": "ready",
    "active": "ready",
    "stopping": "ending",
    "stopped": "ended",
    "error": "failed",
}


def _carry_over_sessions() -> None:
    """Boot sessions become boots; their writeback files become writeback rows."""
    conn = op.get_bind()
    server = _server_name()
    rows = conn.execute(
        sa.text(
            "SELECT s.id, s.machine_id, s.image_version_id, s.kind, s.state, s.error, s.writeback_file,"
            " s.started_at, s.stopped_at, s.started_by, s.stopped_by, m.name, m.mac, m.chap_secret, t.iqn"
            " FROM boot_sessions s JOIN machines m ON m.id = s.machine_id"
            " LEFT JOIN targets t ON t.session_id = s.id ORDER BY s.id"
        )
    ).all()
    writebacks = sa.table(
        "writebacks",
        *(
            sa.column(c)
            for c in ("id", "server", "machine_id", "disk", "image_version_id", "file_name", "state", "retained")
        ),
        sa.column("created_at", _TZ),
    )
    boots = sa.table(
        "boots",
        *(
            sa.column(c)
            for c in [
                "server",
                "machine_id",
                "machine_name",
                "mac",
                "origin",
                "requested_by",
                "policy",
                "image_version_id",
                "system_writeback_id",
                "target_iqn",
                "chap_secret",
                "state",
                "error",
                "ended_by",
                "end_reason",
            ]
        ),
        *(sa.column(c, _TZ) for c in ("requested_at", "prepared_at", "ended_at")),
    )
    for row in rows:
        state = _SESSION_STATE_TO_BOOT.get(row.state, "ended")
        live = state in ("ready", "ending")
        policy = {"normal": "fresh"}.get(row.kind, "keep")  # a running maintenance session keeps its disk
        writeback_id = None
        if row.writeback_file:
            writeback_id = conn.execute(
                writebacks.insert()
                .values(
                    server=server,
                    machine_id=row.machine_id,
                    disk="system",
                    image_version_id=row.image_version_id,
                    file_name=row.writeback_file,
                    state="ready",
                    retained=row.kind != "normal" or not live,
                    created_at=_aware(row.started_at),
                )
                .returning(writebacks.c.id)
            ).scalar_one()
        conn.execute(
            boots.insert().values(
                server=server,
                machine_id=row.machine_id,
                machine_name=row.name,
                mac=row.mac,
                origin="operator",
                requested_by=row.started_by,
                requested_at=_aware(row.started_at),
                prepared_at=_aware(row.started_at) if live else None,
                policy=policy,
                image_version_id=row.image_version_id,
                system_writeback_id=writeback_id if live else None,
                target_iqn=row.iqn,
                chap_secret=row.chap_secret if live else None,
                state=state,
                error=row.error,
                ended_at=None if live else _aware(row.stopped_at or row.started_at),
                ended_by=row.stopped_by,
                end_reason=None if live else ("failed" if state == "failed" else "stopped"),
            )
        )
        if row.kind != "normal" and live:
            conn.execute(
                sa.text("UPDATE machines SET writeback_policy = 'keep' WHERE id = :id"), {"id": row.machine_id}
            )


def _aware(value: object) -> datetime | None:
    """SQLite hands back naive text or datetimes (stored as UTC); PostgreSQL aware datetimes."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def downgrade() -> None:
    """Back to sessions: the history is kept as stopped sessions; live boots are not carried back."""
    op.create_table(
        "boot_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("machine_id", sa.Integer(), nullable=False),
        sa.Column("image_version_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("writeback_file", sa.String(length=128), nullable=True),
        sa.Column("started_at", _TZ, nullable=False),
        sa.Column("stopped_at", _TZ, nullable=True),
        sa.Column("started_by", sa.String(length=32), nullable=True),
        sa.Column("stopped_by", sa.String(length=32), nullable=True),
        sa.Column("row_version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_version_id"],
            ["image_versions.id"],
            name=op.f("fk_boot_sessions_image_version_id_image_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_boot_sessions_machine_id_machines"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_boot_sessions")),
    )
    with op.batch_alter_table("boot_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_boot_sessions_image_version_id"), ["image_version_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_boot_sessions_machine_id"), ["machine_id"], unique=False)
        batch_op.create_index(
            "uq_boot_sessions_one_live",
            ["machine_id"],
            unique=True,
            sqlite_where=sa.text("state IN ('starting', 'active', 'stopping')"),
            postgresql_where=sa.text("state IN ('starting', 'active', 'stopping')"),
        )
    op.create_table(
        "targets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("machine_id", sa.Integer(), nullable=False),
        sa.Column("iqn", sa.String(length=223), nullable=False),
        sa.Column("backend", sa.String(length=8), nullable=False),
        sa.Column("lun", sa.Integer(), nullable=False),
        sa.Column("portal", sa.String(length=64), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_targets_machine_id_machines"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["session_id"], ["boot_sessions.id"], name=op.f("fk_targets_session_id_boot_sessions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_targets")),
        sa.UniqueConstraint("iqn", name=op.f("uq_targets_iqn")),
        sa.UniqueConstraint("machine_id", name=op.f("uq_targets_machine_id")),
        sa.UniqueConstraint("session_id", name=op.f("uq_targets_session_id")),
    )
    conn = op.get_bind()
    conn.execute(
        sa.text(
            "INSERT INTO boot_sessions (machine_id, image_version_id, kind, state, error, started_at, stopped_at,"
            " started_by, stopped_by, row_version)"
            " SELECT machine_id, image_version_id, CASE policy WHEN 'fresh' THEN 'normal' ELSE policy END,"
            " CASE state WHEN 'failed' THEN 'error' ELSE 'stopped' END, error, requested_at,"
            " COALESCE(ended_at, requested_at), requested_by, ended_by, 1 FROM boots WHERE machine_id IS NOT NULL"
        )
    )
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.drop_index("uq_machines_one_maintenance_per_image")
        batch_op.drop_index(batch_op.f("ix_machines_game_pinned_version_id"))
        batch_op.drop_index(batch_op.f("ix_machines_game_image_id"))
        batch_op.drop_constraint(batch_op.f("fk_machines_game_pinned_version_id_image_versions"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("fk_machines_game_image_id_images"), type_="foreignkey")
        batch_op.add_column(sa.Column("last_seen_at", _TZ, nullable=True))
        batch_op.add_column(sa.Column("keep_writeback", sa.Boolean(), nullable=False, server_default=sa.false()))
        # a new secret: the old per-machine one is gone with the boots that carried it
        batch_op.add_column(sa.Column("chap_secret", sa.String(length=64), nullable=False, server_default=""))
    for (machine_id,) in conn.execute(sa.text("SELECT id FROM machines")).all():
        conn.execute(
            sa.text("UPDATE machines SET chap_secret = :s WHERE id = :id"),
            {"s": uuid.uuid4().hex[:16], "id": machine_id},
        )
    conn.execute(sa.text("UPDATE machines SET keep_writeback = (writeback_policy <> 'fresh')"))
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.alter_column("keep_writeback", server_default=None)
        batch_op.alter_column("chap_secret", server_default=None)
        batch_op.drop_column("writeback_policy")
        batch_op.drop_column("boot_enabled")
        batch_op.drop_column("game_pinned_version_id")
        batch_op.drop_column("game_image_id")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("efi_loader")
    for table in (
        "auth_tokens",
        "intent_signal",
        "engine_requests",
        "engine_status",
        "discovered_macs",
        "machine_observations",
        "boots",
        "writebacks",
    ):
        op.drop_table(table)
