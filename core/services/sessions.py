"""Boot sessions.

Start: writeback (new, or the kept one) → target → boot script.
Stop:  target removed → writeback discarded (or kept, or applied as a new image version)
       → the boot script no longer boots the disk.

Each start or stop runs in three steps so that no database transaction stays open while
disks are cloned or the target stack is changed: (1) check and record the intent
(state starting/stopping; the one-live-session index refuses a second start even from
another console at the same moment), (2) do the work outside the database, (3) record
the outcome with one audit event and re-render the boot files. A failure in (2) undoes
what (2) created and leaves the session in ``error`` with the reason.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..auth import Actor, Permission
from ..context import Core
from ..errors import BackendUnavailable, Conflict, GgnetError, Invalid, NotFound
from ..iscsi.base import ActualTarget, LunSpec, TargetBackend, TargetSpec
from ..log import get_logger
from ..models import (
    LIVE_SESSION_STATES,
    BootSession,
    Image,
    ImageVersion,
    Machine,
    Outcome,
    SessionKind,
    SessionState,
    Target,
    utcnow,
)
from ..storage.writeback import writeback_dir, writeback_path
from .base import Operation, operation, reading, require, snapshot
from .views import View

DEFAULT_PARALLEL = 4
_LIVE = [s.value for s in LIVE_SESSION_STATES]


class SessionView(View):
    id: int
    machine: str
    kind: str
    state: str
    error: str | None
    image: str | None
    image_version: int | None
    target_iqn: str | None
    lun: int | None
    started_at: datetime
    started_by: str | None
    stopped_at: datetime | None
    logged_in: bool | None = None  # None when the target stack could not be asked
    client_address: str | None = None


@dataclass(frozen=True)
class SessionResult:
    machine: str
    ok: bool
    message: str


def target_iqn(core: Core, machine_name: str) -> str:
    return f"{core.settings.iqn_base}:{machine_name}"


async def _backend(core: Core) -> TargetBackend:
    backend, health = await core.target_backend()
    if backend is None:
        raise BackendUnavailable(health.detail)
    return backend


async def _live_session(session: AsyncSession, machine_id: int) -> BootSession | None:
    query = select(BootSession).where(BootSession.machine_id == machine_id, BootSession.state.in_(_LIVE))
    return (await session.execute(query)).scalar_one_or_none()


async def _kept_writeback(session: AsyncSession, machine_id: int) -> BootSession | None:
    """The latest ended session of this machine whose writeback was kept, if any."""
    query = (
        select(BootSession)
        .where(
            BootSession.machine_id == machine_id,
            BootSession.state.not_in(_LIVE),
            BootSession.writeback_file.is_not(None),
        )
        .order_by(BootSession.id.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def _failed_with_target(session: AsyncSession, machine_id: int) -> BootSession | None:
    """A session that ended in error but still holds its target (a failed stop): stop cleans it up."""
    query = (
        select(BootSession)
        .join(Target, Target.session_id == BootSession.id)
        .where(BootSession.machine_id == machine_id, BootSession.state == SessionState.ERROR.value)
    )
    return (await session.execute(query)).scalar_one_or_none()


def _logged_in(actual: list[ActualTarget], iqn: str) -> ActualTarget | None:
    for target in actual:
        if target.iqn.lower() == iqn.lower() and target.sessions:
            return target
    return None


# --- start -----------------------------------------------------------------


@dataclass
class _StartPlan:
    session_id: int
    machine: str
    spec: TargetSpec
    source: Path
    writeback: Path
    reuse_writeback: bool


async def _plan_start(core: Core, actor: Actor, name: str, kind: SessionKind, backend: TargetBackend) -> _StartPlan:
    from . import images
    from .machines import get_row

    async with operation(core, actor, Permission.MANAGE_SESSIONS, "session.start") as op:
        machine = await get_row(op.session, name)
        if await _live_session(op.session, machine.id) is not None:
            raise Conflict(f"machine '{machine.name}' already has a running session")
        version = await images.resolve_version_for_machine(op.session, machine)
        if kind == SessionKind.NORMAL and machine.keep_writeback:
            kind = SessionKind.KEEP
        kept = await _kept_writeback(op.session, machine.id)
        wb_dir = writeback_dir(core.settings)
        if kept is not None and (wb_dir / str(kept.writeback_file)).exists():
            file_name = str(kept.writeback_file)
            kept.writeback_file = None  # the new session owns it now
            reuse = True
        else:
            file_name = writeback_path(core.settings, machine.id).name
            reuse = False
        boot_session = BootSession(
            machine_id=machine.id,
            image_version_id=version.id,
            kind=kind.value,
            state=SessionState.STARTING.value,
            writeback_file=file_name,
            started_at=utcnow(),
            started_by=actor.username,
        )
        op.session.add(boot_session)
        await op.flush(conflict=f"machine '{machine.name}' already has a running session")
        iqn = target_iqn(core, machine.name)
        host, port = core.settings.portal_address
        op.session.add(
            Target(
                session_id=boot_session.id,
                machine_id=machine.id,
                iqn=iqn,
                backend=backend.name,
                lun=backend.lun,
                portal=f"{host}:{port}",
                created_at=utcnow(),
            )
        )
        await op.flush(
            conflict=f"machine '{machine.name}' still has the target of a failed session; "
            f"run 'ggnet session stop {machine.name}' first"
        )
        return _StartPlan(
            session_id=boot_session.id,
            machine=machine.name,
            spec=TargetSpec(
                iqn=iqn,
                luns=(LunSpec(backend.first_lun, wb_dir / file_name),),
                initiator_iqn=machine.initiator_iqn,
                chap_username=machine.chap_username,
                chap_secret=machine.chap_secret,
                portal_host=host,
                portal_port=port,
            ),
            source=images.version_path(core.settings, version),
            writeback=wb_dir / file_name,
            reuse_writeback=reuse,
        )


async def _finish(
    core: Core,
    actor: Actor,
    session_id: int,
    action: str,
    *,
    state: SessionState,
    error: str | None = None,
    keep_file: bool = True,
    drop_target: bool = False,
) -> None:
    """Record the outcome of a start or stop with its one audit event, then re-render boot files."""
    from .boot import write_boot_files

    async with core.db.transaction() as session:
        boot_session = await session.get(BootSession, session_id)
        if boot_session is None:  # the machine was deleted meanwhile
            return
        machine = await session.get(Machine, boot_session.machine_id)
        before = snapshot(boot_session)
        boot_session.state = state.value
        boot_session.error = error
        if state in (SessionState.STOPPED, SessionState.ERROR):
            boot_session.stopped_at = utcnow()
            boot_session.stopped_by = actor.username
        if not keep_file:
            boot_session.writeback_file = None
        if drop_target:
            target = (await session.execute(select(Target).where(Target.session_id == session_id))).scalar_one_or_none()
            if target is not None:
                await session.delete(target)
        Operation(session, actor, action).audit(
            "session",
            boot_session.id,
            machine.name if machine else None,
            before,
            snapshot(boot_session),
            detail=error,
            outcome=Outcome.FAILED if state == SessionState.ERROR else Outcome.OK,
        )
        await session.flush()
        await write_boot_files(core, session)


async def _start_one(core: Core, actor: Actor, name: str, kind: SessionKind, backend: TargetBackend) -> SessionResult:
    from ..storage.writeback import choose_driver

    try:
        plan = await _plan_start(core, actor, name, kind, backend)
    except GgnetError as exc:
        return SessionResult(name, False, exc.message)
    made_writeback = made_target = False
    try:
        if not plan.reuse_writeback:
            plan.writeback.parent.mkdir(parents=True, exist_ok=True)
            driver = await choose_driver(core.settings.data_dir, core.settings.writeback_driver)
            await driver.create(plan.source, plan.writeback)
            made_writeback = True
        made_target = True  # a half-made target must be removed too
        await backend.create_target(plan.spec)
    except Exception as exc:
        reason = exc.message if isinstance(exc, GgnetError) else f"{type(exc).__name__}: {exc}"
        get_logger().warning("session start failed", machine=plan.machine, reason=reason)
        await _undo_start(core, backend, plan, made_writeback, made_target)
        await _finish(
            core,
            actor,
            plan.session_id,
            "session.start",
            state=SessionState.ERROR,
            error=reason,
            keep_file=plan.reuse_writeback,
            drop_target=True,
        )
        return SessionResult(plan.machine, False, f"{plan.machine}: {reason}")
    await _finish(core, actor, plan.session_id, "session.start", state=SessionState.ACTIVE)
    return SessionResult(plan.machine, True, f"{plan.machine}: session started ({plan.spec.iqn})")


async def _undo_start(
    core: Core, backend: TargetBackend, plan: _StartPlan, made_writeback: bool, made_target: bool
) -> None:
    from ..storage.writeback import choose_driver

    if made_target:
        try:
            await backend.delete_target(plan.spec.iqn)
        except Exception:
            get_logger().exception("undo: could not delete target", iqn=plan.spec.iqn)
    if made_writeback:
        try:
            driver = await choose_driver(core.settings.data_dir, core.settings.writeback_driver)
            await driver.discard(plan.writeback)
        except Exception:
            get_logger().exception("undo: could not discard writeback", path=str(plan.writeback))


async def _bounded(items: list[str], parallel: int, work) -> list[SessionResult]:  # type: ignore[no-untyped-def]
    gate = asyncio.Semaphore(max(1, parallel))

    async def one(item: str) -> SessionResult:
        async with gate:
            return await work(item)

    return list(await asyncio.gather(*(one(i) for i in items)))


async def _names_for_all(core: Core, actor: Actor) -> list[str]:
    """``--all``: machines with an image and no running session."""
    async with reading(core, actor) as session:
        live = select(BootSession.machine_id).where(BootSession.state.in_(_LIVE))
        query = (
            select(Machine.name).where(Machine.image_id.is_not(None), Machine.id.not_in(live)).order_by(Machine.name)
        )
        return list((await session.execute(query)).scalars())


async def start_sessions(
    core: Core,
    actor: Actor,
    names: list[str],
    *,
    all_machines: bool = False,
    kind: SessionKind | str = SessionKind.NORMAL,
    parallel: int = DEFAULT_PARALLEL,
) -> list[SessionResult]:
    """Start a session on each machine (several at once, at most ``parallel``); one result each."""
    from .boot import boot_address

    try:
        kind = SessionKind(kind)
    except ValueError:
        raise Invalid("kind", "must be one of normal, keep, maintenance") from None
    await require(core, actor, Permission.MANAGE_SESSIONS, "session.start")
    boot_address(core.settings)  # a boot script must be writable before anything is created
    if all_machines:
        names = sorted(set(names) | set(await _names_for_all(core, actor)))
    if not names:
        raise Invalid("machines", "name at least one machine, or use --all")
    backend = await _backend(core)
    return await _bounded(_unique(names), parallel, lambda n: _start_one(core, actor, n, kind, backend))


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(str(n).strip().lower() for n in names))


# --- stop ------------------------------------------------------------------


@dataclass
class _StopPlan:
    session_id: int
    machine: str
    kind: SessionKind
    iqn: str | None
    writeback: Path | None
    image_id: int | None


async def _plan_stop(
    core: Core, actor: Actor, name: str, force: bool, apply: bool, backend: TargetBackend
) -> _StopPlan:
    from .machines import get_row

    async with operation(core, actor, Permission.MANAGE_SESSIONS, "session.stop") as op:
        machine = await get_row(op.session, name)
        boot_session = await _live_session(op.session, machine.id) or await _failed_with_target(op.session, machine.id)
        if boot_session is None:
            raise NotFound(f"machine '{machine.name}' has no running session")
        kind = SessionKind(boot_session.kind)
        if apply and kind != SessionKind.MAINTENANCE:
            raise Invalid(
                "apply", f"only a maintenance session can be applied; '{machine.name}' runs a {kind.value} session"
            )
        target = (
            await op.session.execute(select(Target).where(Target.session_id == boot_session.id))
        ).scalar_one_or_none()
        if target is not None and not force:
            actual = _logged_in(await backend.list_targets(), target.iqn)
            if actual is not None:
                where = ", ".join(s.address for s in actual.sessions if s.address) or "an unknown address"
                raise Conflict(
                    f"the client of '{machine.name}' is still logged in (from {where}); "
                    "stopping now cuts its disk off: use --force if you mean it"
                )
        image_id = None
        if apply:
            version = (
                await op.session.get(ImageVersion, boot_session.image_version_id)
                if boot_session.image_version_id
                else None
            )
            if version is None:
                raise Conflict(f"the image version of '{machine.name}''s session no longer exists; cannot apply")
            image_id = version.image_id
        boot_session.state = SessionState.STOPPING.value
        return _StopPlan(
            session_id=boot_session.id,
            machine=machine.name,
            kind=kind,
            iqn=target.iqn if target else None,
            writeback=writeback_dir(core.settings) / boot_session.writeback_file
            if boot_session.writeback_file
            else None,
            image_id=image_id,
        )


async def _stop_one(
    core: Core, actor: Actor, name: str, force: bool, apply: bool, activate: bool, backend: TargetBackend
) -> SessionResult:
    from ..storage.writeback import choose_driver

    try:
        plan = await _plan_stop(core, actor, name, force, apply, backend)
    except GgnetError as exc:
        return SessionResult(name, False, exc.message)
    note = ""
    # a maintenance session that is not applied keeps its writeback, so no work is lost
    keep = plan.kind == SessionKind.KEEP or (plan.kind == SessionKind.MAINTENANCE and not apply)
    try:
        if plan.iqn:
            await backend.delete_target(plan.iqn)
        if apply and plan.writeback is not None and plan.image_id is not None:
            from . import images

            number = await images.add_version_from_writeback(
                core,
                actor,
                plan.image_id,
                plan.writeback,
                activate=activate,
                notes=f"applied from maintenance session of {plan.machine}",
            )
            note = f"; writeback applied as version {number}" + (" (active)" if activate else " (not activated)")
        elif plan.writeback is not None and not keep:
            driver = await choose_driver(core.settings.data_dir, core.settings.writeback_driver)
            await driver.discard(plan.writeback)
        elif keep:
            note = "; writeback kept for the next start"
    except Exception as exc:
        reason = exc.message if isinstance(exc, GgnetError) else f"{type(exc).__name__}: {exc}"
        get_logger().warning("session stop failed", machine=plan.machine, reason=reason)
        await _finish(
            core,
            actor,
            plan.session_id,
            "session.stop",
            state=SessionState.ERROR,
            error=reason,
            keep_file=True,
            drop_target=False,
        )
        return SessionResult(plan.machine, False, f"{plan.machine}: {reason}")
    await _finish(
        core,
        actor,
        plan.session_id,
        "session.stop",
        state=SessionState.STOPPED,
        keep_file=keep and not apply,
        drop_target=True,
    )
    return SessionResult(plan.machine, True, f"{plan.machine}: session stopped{note}")


async def stop_sessions(
    core: Core,
    actor: Actor,
    names: list[str],
    *,
    all_machines: bool = False,
    force: bool = False,
    apply: bool = False,
    activate: bool = True,
    parallel: int = DEFAULT_PARALLEL,
) -> list[SessionResult]:
    await require(core, actor, Permission.MANAGE_SESSIONS, "session.stop")
    if all_machines:
        async with reading(core, actor) as session:
            live = (
                select(Machine.name)
                .join(BootSession, BootSession.machine_id == Machine.id)
                .where(BootSession.state.in_(_LIVE))
            )
            names = sorted(set(names) | set((await session.execute(live)).scalars()))
    if not names:
        raise Invalid("machines", "name at least one machine, or use --all")
    backend = await _backend(core)
    return await _bounded(
        _unique(names), parallel, lambda n: _stop_one(core, actor, n, force, apply, activate, backend)
    )


# --- list ------------------------------------------------------------------


async def list_sessions(
    core: Core, actor: Actor, *, include_ended: bool = False, live_state: bool = True
) -> list[SessionView]:
    """Sessions with the iSCSI login state from the target stack (when it answers)."""
    async with reading(core, actor) as session:
        query = (
            select(BootSession, Machine.name, Image.name, ImageVersion.number, Target.iqn, Target.lun)
            .join(Machine, Machine.id == BootSession.machine_id)
            .outerjoin(ImageVersion, ImageVersion.id == BootSession.image_version_id)
            .outerjoin(Image, Image.id == ImageVersion.image_id)
            .outerjoin(Target, Target.session_id == BootSession.id)
            .order_by(Machine.name, BootSession.id.desc())
        )
        if not include_ended:
            query = query.where(BootSession.state.in_([*_LIVE, SessionState.ERROR.value]))
        rows = (await session.execute(query)).all()
    actual: list[ActualTarget] | None = None
    if live_state and any(r[4] for r in rows):
        backend, _health = await core.target_backend()
        if backend is not None:
            try:
                actual = await backend.list_targets()
            except GgnetError:
                actual = None
    by_iqn = {t.iqn.lower(): t for t in actual or []}
    views = []
    for boot_session, machine, image, number, iqn, lun in rows:
        found = by_iqn.get(iqn.lower()) if iqn else None
        views.append(
            SessionView(
                id=boot_session.id,
                machine=machine,
                kind=boot_session.kind,
                state=boot_session.state,
                error=boot_session.error,
                image=image,
                image_version=number,
                target_iqn=iqn,
                lun=lun,
                started_at=boot_session.started_at,
                started_by=boot_session.started_by,
                stopped_at=boot_session.stopped_at,
                logged_in=None if actual is None or iqn is None else bool(found and found.sessions),
                client_address=next((s.address for s in found.sessions if s.address), None) if found else None,
            )
        )
    return views
