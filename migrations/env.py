"""Alembic environment. ggnet passes its own connection in ``config.attributes``;
the ``alembic`` command line uses GGNET_DATABASE_URL instead."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from alembic import context
from sqlalchemy.engine import Connection

from core.models import Base, UTCDateTime

target_metadata = Base.metadata


def _render_item(type_: str, obj: Any, _autogen_context: Any) -> str | Literal[False]:
    """Autogenerate writes the models' UTCDateTime as the column it is, so migrations never import core."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_with_own_engine() -> None:
    from core.config import load_settings
    from core.db import create_engine

    async def go() -> None:
        engine = create_engine(load_settings().database_url)
        async with engine.begin() as conn:
            await conn.run_sync(_run)
        await engine.dispose()

    asyncio.run(go())


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    _run_with_own_engine()
