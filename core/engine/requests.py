"""Operators' requests the engine carries out: a pass now (``ggnet reconcile``), and a maintenance
writeback applied as its image's next version. Each is idempotent, so a request left pending by
an engine that died is carried out again by the next one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ..auth import Actor
from ..errors import Conflict, GgnetError, NotFound
from ..files import private_dir
from ..models import (
    CURRENT_BOOT_STATES,
    Boot,
    EngineRequest,
    EngineRequestKind,
    EngineRequestState,
    ImageVersion,
    Machine,
    Role,
    User,
    WritebackState,
    utcnow,
)
from ..models import Writeback as WritebackRow
from . import disks

if TYPE_CHECKING:
    from .engine import Engine


async def carry_out(engine: Engine, request: EngineRequest) -> None:
    result: dict[str, Any] | None = None
    error: str | None = None
    try:
        if request.kind == EngineRequestKind.PASS.value:
            # an operator asked: every target's CHAP secret is checked now (a login each, about 1 ms),
            # not only those whose periodic check is due, so a changed secret is found at once
            report = await engine.run_pass(dry_run=bool(request.params.get("dry_run")), probe_chap=True)
            result = report.to_json()
        elif request.kind == EngineRequestKind.APPLY.value:
            result = await _apply(engine, request)
        else:
            error = f"unknown request kind {request.kind!r}"
    except (GgnetError, OSError) as exc:
        error = exc.message if isinstance(exc, GgnetError) else str(exc)
    async with engine.core.db.transaction() as session:
        row = await session.get(EngineRequest, request.id)
        if row is not None and row.state == EngineRequestState.PENDING.value:
            row.state = EngineRequestState.FAILED.value if error else EngineRequestState.DONE.value
            row.result, row.error, row.done_at = result, error, utcnow()


async def _requester(engine: Engine, username: str) -> Actor:
    async with engine.core.db.session() as session:
        user = (await session.execute(select(User).where(User.username == username))).scalar_one_or_none()
    if user is None:
        return Actor(user_id=None, username=username, role=Role.ADMIN)  # root (local) or the engine itself
    return Actor(user_id=user.id, username=user.username, role=Role(user.role))


async def _apply(engine: Engine, request: EngineRequest) -> dict[str, Any]:
    """The maintenance writeback of a machine becomes its image's next version (a clone, then rows)."""
    from ..services.images import images_dir, record_applied_version
    from ..storage.writeback import choose_driver

    settings = engine.core.settings
    params = request.params
    async with engine.core.db.session() as session:
        machine = await session.get(Machine, request.machine_id) if request.machine_id else None
        if machine is None:
            raise NotFound("the machine of this maintenance apply was removed")
        row = await session.get(WritebackRow, int(params["writeback_id"]))
        done = (
            await session.execute(select(ImageVersion).where(ImageVersion.file_name == params["file_name"]))
        ).scalar_one_or_none()
        current = (
            await session.execute(
                select(Boot).where(
                    Boot.machine_id == machine.id, Boot.state.in_([s.value for s in CURRENT_BOOT_STATES])
                )
            )
        ).scalar_one_or_none()
        session.expunge_all()
    if done is not None:
        return {"version": done.number, "image_id": done.image_id}
    if row is None or row.state == WritebackState.DISCARD.value:
        raise NotFound(f"{machine.name} has no maintenance writeback to apply")
    # its target must not serve it while it is copied: end the boot now (the client was checked logged out)
    if current is not None and engine.backend is not None and current.target_iqn:
        observed = (await engine.backend.observe([current.target_iqn])).get(current.target_iqn.lower())
        if observed is not None and observed.sessions:
            raise Conflict(f"the client of {machine.name} logged in again; shut it down, then apply")
        async with engine.target_lock(current.target_iqn):
            await engine.backend.delete(current.target_iqn)
            engine.forget(current.target_iqn)
    source = disks.writeback_file(settings, row.file_name)
    dest = images_dir(settings) / Path(str(params["file_name"])).name
    if not dest.is_file():
        if not source.is_file():
            raise NotFound(f"the writeback file of {machine.name} is missing")
        private_dir(dest.parent)
        driver = await choose_driver(settings.data_dir, settings.writeback_driver)
        await driver.create(source, dest)
    actor = await _requester(engine, request.requested_by)
    number = await record_applied_version(
        engine.core,
        actor,
        int(params["image_id"]),
        dest,
        activate=bool(params.get("activate", True)),
        notes=str(params.get("notes") or f"applied from the maintenance writeback of {machine.name}"),
        machine_id=machine.id,
        writeback_id=row.id,
    )
    engine.poke()
    return {"version": number, "image_id": int(params["image_id"])}


def next_version_file_name() -> str:
    import uuid

    return f"{uuid.uuid4().hex}.raw"
