"""What operators ask of the boot engine, as intent: prepare a machine's boot now, take it offline,
reset its writeback, maintenance; and what the engine recorded: current boots, boot history,
discovered PCs, the engine's own status.

Each change is one short transaction with its audit event (bulk operations are one change, not
N), and bumps the intent counter so the engine acts within a second. Nothing here touches a
target or a writeback: ``core.engine`` does, in ``ggnet serve`` (or in this process, for one
pass, when no engine runs: see ``converge_now``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import Field, TypeAdapter
from sqlalchemy import func, select

from ..auth import Actor, Permission
from ..context import Core
from ..errors import Conflict, Fix, Invalid, NotFound
from ..models import (
    CURRENT_BOOT_STATES,
    Boot,
    BootState,
    DiscoveredMac,
    EngineRequest,
    EngineRequestKind,
    EngineRequestState,
    EngineStatus,
    Image,
    ImageVersion,
    Machine,
    MachineObservation,
    WritebackPolicy,
    WritebackState,
    utcnow,
)
from ..models import Writeback as WritebackRow
from ..validation import normalize_mac
from .base import Operation, operation, reading, snapshot
from .views import MachineView, View

_CURRENT = [s.value for s in CURRENT_BOOT_STATES]
WAIT_SECONDS = 60.0


class BootView(View):
    id: int
    machine: str
    mac: str
    origin: str
    state: str
    policy: str
    image: str | None
    image_version: int | None
    game_image: str | None = None
    game_version: int | None = None
    requested_at: datetime
    requested_by: str | None
    client_address: str | None
    prepared_at: datetime | None
    prepare_ms: int | None
    login_at: datetime | None
    login_address: str | None
    logout_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    error: str | None
    target_iqn: str | None
    logged_in: bool | None = None  # current boots: what the engine last saw


class DiscoveredView(View):
    mac: str
    first_seen_at: datetime
    last_seen_at: datetime
    requests: int
    last_address: str | None


class EngineView(View):
    server: str
    running: bool  # its heartbeat is recent
    pid: int | None
    mode: str | None
    last_pass_at: datetime | None
    last_pass_ms: int | None
    last_pass_ok: bool | None
    last_error: str | None
    backend: str | None
    backend_detail: str | None
    free_bytes: int | None
    reserved_bytes: int
    passes: int
    drift: list[dict[str, Any]] = Field(default_factory=list)  # what the last pass found (and repaired)


@dataclass(frozen=True)
class BootResult:
    """What a bulk action did to one machine: ``reason`` is a phrase without the machine's name
    ("has no image"), so that a summary can group machines by it; ``fix`` resolves a refusal."""

    machine: str
    ok: bool
    reason: str
    fix: Fix | None = None

    @property
    def message(self) -> str:
        return f"{self.machine}: {self.reason}"


# --- reading ----------------------------------------------------------------------------------


_BOOT_COLUMNS = (
    Boot.id,
    Boot.machine_name.label("machine"),
    Boot.mac,
    Boot.origin,
    Boot.state,
    Boot.policy,
    Boot.requested_at,
    Boot.requested_by,
    Boot.client_address,
    Boot.prepared_at,
    Boot.prepare_ms,
    Boot.login_at,
    Boot.login_address,
    Boot.logout_at,
    Boot.ended_at,
    Boot.end_reason,
    Boot.error,
    Boot.target_iqn,
)


def _boot_query() -> Any:
    # plain columns rather than ORM objects: a history of 1,000 boots reads in a few milliseconds
    game_version = ImageVersion.__table__.alias("game_version")
    game_image = Image.__table__.alias("game_image")
    return (
        select(
            *_BOOT_COLUMNS,
            Image.name.label("image"),
            ImageVersion.number.label("image_version"),
            game_image.c.name.label("game_image"),
            game_version.c.number.label("game_version"),
        )
        .outerjoin(ImageVersion, ImageVersion.id == Boot.image_version_id)
        .outerjoin(Image, Image.id == ImageVersion.image_id)
        .outerjoin(game_version, game_version.c.id == Boot.game_version_id)
        .outerjoin(game_image, game_image.c.id == game_version.c.image_id)
    )


_BOOT_VIEWS: TypeAdapter[list[BootView]] = TypeAdapter(list[BootView])


def _boot_views(result: Any) -> list[BootView]:
    """The rows of a _boot_query result as views, validated in one call to pydantic's core: for
    1,000 boots 3 ms, where a model_construct per row (and a mapping per row) took 13 ms."""
    keys = tuple(result.keys())
    return _BOOT_VIEWS.validate_python([dict(zip(keys, row, strict=True)) for row in result])


async def current_boots(core: Core, actor: Actor) -> list[BootView]:
    """Every machine's current boot (what ``session list`` shows), with the engine's last observation."""
    async with reading(core, actor) as session:
        return _boot_views(
            await session.execute(
                _boot_query()
                .add_columns(MachineObservation.logged_in)
                .outerjoin(MachineObservation, MachineObservation.machine_id == Boot.machine_id)
                .where(Boot.state.in_([*_CURRENT, BootState.ENDING.value]))
                .order_by(Boot.machine_name, Boot.id)
            )
        )


async def boot_history(core: Core, actor: Actor, machine: str | None = None, limit: int = 50) -> list[BootView]:
    """The latest boots, newest first (of one machine, or all)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise Invalid("limit", "must be a whole number from 1 to 10000")
    async with reading(core, actor) as session:
        query = _boot_query().order_by(Boot.id.desc()).limit(limit)
        if machine is not None:
            from .machines import get_row

            row = await get_row(session, machine)
            query = query.where(Boot.machine_id == row.id)
        return _boot_views(await session.execute(query))


class MachineDetails(View):
    """A machine with its boot history (newest first): what its details view shows."""

    machine: MachineView
    boots: list[BootView]
    boots_total: int  # in the history; ``boots`` holds the newest ``limit`` of them


async def machine_details(core: Core, actor: Actor, name: str, limit: int = 1000) -> MachineDetails:
    """One read: the machine as the engine last saw it and its latest boots."""
    from .machines import machine_view

    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise Invalid("limit", "must be a whole number from 1 to 10000")
    async with reading(core, actor) as session:
        machine = await machine_view(session, actor, name)
        # one row more than asked: counted only when there are more; executed on the session's
        # connection, as plain rows (the ORM's row processing cost 1.5 ms per 1,000 boots)
        query = _boot_query().where(Boot.machine_id == machine.id).order_by(Boot.id.desc()).limit(limit + 1)
        history = _boot_views(await (await session.connection()).execute(query))
        total = len(history)
        if total > limit:
            del history[limit:]
            count = select(func.count()).select_from(Boot).where(Boot.machine_id == machine.id)
            total = int((await session.execute(count)).scalar_one())
    return MachineDetails.model_construct(machine=machine, boots=history, boots_total=total)


def numbered_names(prefix: str, first: int, count: int) -> list[str]:
    """Names for PCs adopted together: pc07, pc08 ... (at least two digits, as many as the last needs)."""
    if isinstance(first, bool) or not isinstance(first, int) or first < 0:
        raise Invalid("first", "must be a whole number, 0 or more")
    width = max(2, len(str(first + count - 1)))
    return [f"{prefix}{number:0{width}d}" for number in range(first, first + count)]


async def discovered(core: Core, actor: Actor) -> list[DiscoveredView]:
    async with reading(core, actor) as session:
        rows = (await session.execute(select(DiscoveredMac).order_by(DiscoveredMac.last_seen_at.desc()))).scalars()
        return [DiscoveredView.model_validate(r) for r in rows]


async def engine_status(core: Core, actor: Actor) -> EngineView:
    from ..engine.engine import stale_after

    settings = core.settings
    async with reading(core, actor) as session:
        row = await session.get(EngineStatus, settings.server_name)
    running = bool(row and row.heartbeat_at and utcnow() - row.heartbeat_at < stale_after(settings))
    from ..engine.lock import is_held

    running = running or is_held(settings)
    return EngineView(
        server=settings.server_name,
        running=running,
        pid=row.pid if row else None,
        mode=row.mode if row else None,
        last_pass_at=row.last_pass_at if row else None,
        last_pass_ms=row.last_pass_ms if row else None,
        last_pass_ok=row.last_pass_ok if row else None,
        last_error=row.last_error if row else None,
        backend=row.backend if row else None,
        backend_detail=row.backend_detail if row else None,
        free_bytes=row.free_bytes if row else None,
        reserved_bytes=settings.reserved_bytes,
        passes=row.passes if row else 0,
        drift=list(row.last_drift or []) if row else [],
    )


async def engine_drift(core: Core, actor: Actor) -> list[dict[str, Any]]:
    """What the engine's last pass found different from what should be (and what it did about it)."""
    async with reading(core, actor) as session:
        row = await session.get(EngineStatus, core.settings.server_name)
        return list(row.last_drift or []) if row is not None else []


class RequestView(View):
    id: int
    kind: str
    machine_id: int | None
    requested_by: str
    requested_at: datetime
    state: str  # pending, done, failed
    result: dict[str, Any] | None
    error: str | None
    done_at: datetime | None


async def get_request(core: Core, actor: Actor, request_id: int) -> RequestView:
    """An engine request (a pass now, a maintenance apply) and, once done, its result."""
    async with reading(core, actor) as session:
        row = await session.get(EngineRequest, request_id)
        if row is None or row.server != core.settings.server_name:
            raise NotFound(f"no engine request {request_id} on server {core.settings.server_name}")
        return RequestView.model_validate(row)


# --- intent -------------------------------------------------------------------------------------


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(str(n).strip().lower() for n in names))


async def _machines(op: Operation, names: list[str], all_machines: bool, where: Any = None) -> list[Machine]:
    from .machines import get_row

    found: dict[int, Machine] = {}
    if all_machines:
        query = select(Machine).order_by(Machine.name)
        if where is not None:
            query = query.where(where)
        found = {m.id: m for m in (await op.session.execute(query)).scalars()}
    for name in _unique(names):
        machine = await get_row(op.session, name)
        found.setdefault(machine.id, machine)
    return sorted(found.values(), key=lambda m: m.name)


async def _current(op: Operation, machine_id: int) -> Boot | None:
    query = select(Boot).where(Boot.machine_id == machine_id, Boot.state.in_(_CURRENT))
    return (await op.session.execute(query)).scalar_one_or_none()


async def prepare(
    core: Core, actor: Actor, names: list[str], *, all_machines: bool = False, policy: str | None = None
) -> tuple[list[BootResult], list[int]]:
    """``session start``: prepare each machine's boot now (before power-on, e.g. with Wake-on-LAN).

    One change for all: results say per machine what was recorded; the boot ids are what to wait for.
    ``policy`` (keep, fresh) changes the machines' writeback policy first.
    """
    if not names and not all_machines:
        raise Invalid("machines", "name at least one machine, or use --all")
    if policy is not None and policy not in (WritebackPolicy.FRESH.value, WritebackPolicy.KEEP.value):
        raise Invalid("policy", "must be fresh or keep (maintenance: ggnet maintenance start)")
    results: list[BootResult] = []
    boot_ids: list[int] = []
    async with operation(core, actor, Permission.MANAGE_SESSIONS, "session.start") as op:
        machines = await _machines(op, names, all_machines, Machine.image_id.is_not(None))
        if not machines:
            raise Invalid("machines", "no machine has an image to boot")
        now = utcnow()
        for machine in machines:
            if policy is not None and machine.writeback_policy != policy:
                if machine.writeback_policy == WritebackPolicy.MAINTENANCE.value:
                    results.append(BootResult(machine.name, False, "is in maintenance"))
                    continue
                machine.writeback_policy = policy
                op.stamp(machine)
            if not machine.boot_enabled:
                results.append(BootResult(machine.name, False, "is disabled", Fix("machine.enable", machine.name)))
                continue
            if machine.image_id is None:
                results.append(BootResult(machine.name, False, "has no image", Fix("machine.assign", machine.name)))
                continue
            current = await _current(op, machine.id)
            if current is not None:
                results.append(BootResult(machine.name, True, f"already {current.state}"))
                boot_ids.append(current.id)
                continue
            boot = Boot(
                server=core.settings.server_name,
                machine_id=machine.id,
                machine_name=machine.name,
                mac=machine.mac,
                origin="operator",
                requested_at=now,
                requested_by=actor.username,
                policy=machine.writeback_policy,
                target_iqn=f"{core.settings.iqn_base}:{machine.name}",
                state=BootState.REQUESTED.value,
            )
            op.session.add(boot)
            await op.flush(conflict=f"{machine.name} was booted meanwhile; look again")
            boot_ids.append(boot.id)
            results.append(BootResult(machine.name, True, "prepare requested"))
        op.audit(
            "boot",
            None,
            f"{len(boot_ids)} machines",
            after={"machines": [r.machine for r in results], "policy": policy},
            detail="; ".join(r.message for r in results)[:4000],
        )
        op.intent_changed()
    return results, boot_ids


async def _version_for(op: Operation, machine: Machine) -> Any:
    from ..engine.prepare import Refusal, resolve_version
    from ..models import Disk

    try:
        return await resolve_version(op.session, machine, Disk.SYSTEM)
    except Refusal as exc:
        raise Conflict(f"{machine.name}: {exc.detail or exc.why.value}") from None


async def take_offline(
    core: Core, actor: Actor, names: list[str], *, all_machines: bool = False, force: bool = False
) -> list[BootResult]:
    """``session stop``: end each machine's current boot now; the engine removes its target (its
    fresh writeback too). Refused while the client is logged in, unless ``force`` (it cuts the disk off)."""
    if not names and not all_machines:
        raise Invalid("machines", "name at least one machine, or use --all")
    results: list[BootResult] = []
    async with operation(core, actor, Permission.MANAGE_SESSIONS, "session.stop") as op:
        machines = await _machines(
            op, names, all_machines, Machine.id.in_(select(Boot.machine_id).where(Boot.state.in_(_CURRENT)))
        )
        if all_machines and not names and not machines:
            raise Invalid("machines", "no machine is booted or being prepared: nothing to stop")
        blocked = []
        for machine in machines:
            boot = await _current(op, machine.id)
            if boot is None:
                results.append(BootResult(machine.name, False, "is not booted"))
                continue
            observation = await op.session.get(MachineObservation, machine.id)
            if observation is not None and observation.logged_in and not force:
                where = observation.client_address or "an unknown address"
                blocked.append(machine.name)
                results.append(
                    BootResult(
                        machine.name,
                        False,
                        f"its client is still logged in (from {where}); stopping now cuts its disk off",
                        Fix("force", machine.name),
                    )
                )
                continue
            boot.state, boot.end_reason, boot.ended_by = BootState.ENDING.value, "offline", actor.username
            results.append(BootResult(machine.name, True, "taken offline"))
        op.audit(
            "boot",
            None,
            f"{len(machines)} machines",
            after={"machines": [r.machine for r in results if r.ok], "force": force},
            detail="; ".join(r.message for r in results)[:4000],
        )
        op.intent_changed()
    return results


async def reset_writeback(core: Core, actor: Actor, names: list[str], *, force: bool = False) -> list[BootResult]:
    """Drop the kept writebacks of keep machines: their next boot starts from the image again.
    A booted machine is taken offline first (``force`` while its client is logged in)."""
    if not names:
        raise Invalid("machines", "name at least one machine")
    results: list[BootResult] = []
    async with operation(core, actor, Permission.MANAGE_SESSIONS, "writeback.reset") as op:
        for machine in await _machines(op, names, False):
            if machine.writeback_policy == WritebackPolicy.MAINTENANCE.value:
                results.append(
                    BootResult(machine.name, False, "is in maintenance", Fix("maintenance.discard", machine.name))
                )
                continue
            boot = await _current(op, machine.id)
            observation = await op.session.get(MachineObservation, machine.id)
            if boot is not None and observation is not None and observation.logged_in and not force:
                results.append(BootResult(machine.name, False, "its client is logged in", Fix("force", machine.name)))
                continue
            if boot is not None:
                boot.state, boot.end_reason, boot.ended_by = BootState.ENDING.value, "reset", actor.username
            dropped = await _drop_retained(op, machine.id)
            results.append(BootResult(machine.name, True, f"writeback reset ({dropped} dropped)"))
        op.audit("writeback", None, ", ".join(r.machine for r in results), detail="; ".join(r.message for r in results))
        op.intent_changed()
    return results


async def _drop_retained(op: Operation, machine_id: int) -> int:
    rows = (
        await op.session.execute(
            select(WritebackRow).where(
                WritebackRow.machine_id == machine_id,
                WritebackRow.retained.is_(True),
                WritebackRow.state != WritebackState.DISCARD.value,
            )
        )
    ).scalars()
    count = 0
    for row in rows:
        row.state = WritebackState.DISCARD.value
        count += 1
    return count


# --- maintenance ---------------------------------------------------------------------------------


async def maintenance_start(core: Core, actor: Actor, name: str) -> str:
    """The machine keeps its writeback across reboots until it is applied or discarded (one per image)."""
    from .machines import get_row

    async with operation(core, actor, Permission.MANAGE_SESSIONS, "maintenance.start") as op:
        machine = await get_row(op.session, name)
        if machine.image_id is None:
            raise Conflict(f"machine '{machine.name}' has no image to maintain")
        if machine.writeback_policy == WritebackPolicy.MAINTENANCE.value:
            return f"{machine.name} is already in maintenance"
        other = (
            await op.session.execute(
                select(Machine.name).where(
                    Machine.image_id == machine.image_id,
                    Machine.writeback_policy == WritebackPolicy.MAINTENANCE.value,
                )
            )
        ).scalar_one_or_none()
        if other is not None:
            raise Conflict(f"{other} already maintains this image: apply or discard its writeback first")
        before = snapshot(machine)
        if await _current(op, machine.id) is not None:
            raise Conflict(
                f"machine '{machine.name}' is booted: take it offline first, so maintenance starts from a clean disk"
            )
        await _drop_retained(op, machine.id)
        machine.writeback_policy = WritebackPolicy.MAINTENANCE.value
        op.stamp(machine)
        await op.flush(conflict="another machine started maintaining this image at the same moment")
        op.audit("machine", machine.id, machine.name, before, snapshot(machine), detail="maintenance started")
        op.intent_changed()
        return f"{machine.name} is in maintenance: its changes survive its reboots until applied or discarded"


async def maintenance_apply(core: Core, actor: Actor, name: str, *, activate: bool = True, notes: str = "") -> int:
    """Ask the engine to make the machine's maintenance writeback the image's next version; refused
    while its client is logged in. Returns the request id (``wait_request`` waits for the version)."""
    from ..engine.requests import next_version_file_name
    from .machines import get_row

    if len(notes) > 2000:
        raise Invalid("notes", "must be at most 2000 characters")
    async with operation(core, actor, Permission.MANAGE_IMAGES, "maintenance.apply") as op:
        machine = await get_row(op.session, name)
        if machine.writeback_policy != WritebackPolicy.MAINTENANCE.value:
            raise Invalid("machine", f"'{machine.name}' is not in maintenance; nothing to apply")
        observation = await op.session.get(MachineObservation, machine.id)
        if observation is not None and observation.logged_in:
            raise Conflict(
                f"the client of '{machine.name}' is still logged in (from {observation.client_address or '?'}); "
                "shut it down first, then apply"
            )
        row = (
            await op.session.execute(
                select(WritebackRow)
                .where(
                    WritebackRow.machine_id == machine.id,
                    WritebackRow.disk == "system",
                    WritebackRow.retained.is_(True),
                    WritebackRow.state == WritebackState.READY.value,
                )
                .order_by(WritebackRow.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"'{machine.name}' has no maintenance writeback yet: boot it once in maintenance")
        version = await _version_for(op, machine)
        request = EngineRequest(
            server=core.settings.server_name,
            kind=EngineRequestKind.APPLY.value,
            machine_id=machine.id,
            params={
                "writeback_id": row.id,
                "image_id": version.image_id,
                "file_name": next_version_file_name(),
                "activate": activate,
                "notes": notes,
            },
            requested_by=actor.username,
            requested_at=utcnow(),
            state=EngineRequestState.PENDING.value,
        )
        op.session.add(request)
        await op.flush(conflict="a maintenance apply was requested at the same moment")
        op.audit(
            "machine", machine.id, machine.name, after={"activate": activate, "notes": notes}, detail="apply requested"
        )
        op.intent_changed()
        return request.id


async def maintenance_discard(core: Core, actor: Actor, name: str, *, force: bool = False) -> str:
    """Drop the maintenance writeback and end maintenance: the next boot is fresh again."""
    from .machines import get_row

    async with operation(core, actor, Permission.MANAGE_SESSIONS, "maintenance.discard") as op:
        machine = await get_row(op.session, name)
        if machine.writeback_policy != WritebackPolicy.MAINTENANCE.value:
            raise Invalid("machine", f"'{machine.name}' is not in maintenance")
        observation = await op.session.get(MachineObservation, machine.id)
        if observation is not None and observation.logged_in and not force:
            raise Conflict(f"the client of '{machine.name}' is still logged in", Fix("force", machine.name))
        before = snapshot(machine)
        boot = await _current(op, machine.id)
        if boot is not None:
            boot.state, boot.end_reason, boot.ended_by = BootState.ENDING.value, "discarded", actor.username
        dropped = await _drop_retained(op, machine.id)
        machine.writeback_policy = WritebackPolicy.FRESH.value
        op.stamp(machine)
        op.audit("machine", machine.id, machine.name, before, snapshot(machine), detail="maintenance discarded")
        op.intent_changed()
        return f"{machine.name}: maintenance ended, {dropped} writeback(s) discarded"


# --- discovered PCs --------------------------------------------------------------------------------


async def adopt(core: Core, actor: Actor, items: list[dict[str, Any]]) -> list[str]:
    """Register discovered PCs as machines, all or none: each item is {mac, name, [image], [boot_mode], [ip]}."""
    from ..validation import parse
    from .machines import MachineInput, _clashes, _forget_discovered, _new_machine

    if not items:
        raise Invalid("machines", "give at least one discovered PC to adopt")
    parsed = []
    errors: dict[str, str] = {}
    for index, item in enumerate(items, start=1):
        fields = {k: v for k, v in item.items() if k in ("name", "mac", "ip", "boot_mode") and v is not None}
        try:
            parsed.append((parse(MachineInput, fields), item.get("image")))
        except Invalid as exc:
            for key, rule in exc.errors.items():
                errors[f"item {index} {key}"] = rule
    if errors:
        raise Invalid(errors)
    async with operation(core, actor, Permission.MANAGE_MACHINES, "machine.adopt") as op:
        names = []
        for data, image_name in parsed:
            machine = _new_machine(op, data, core.settings.iqn_base)
            clashes = await _clashes(
                op.session, name=machine.name, mac=machine.mac, ip=machine.ip, initiator_iqn=machine.initiator_iqn
            )
            if clashes:
                raise Conflict("; ".join(f"{data.name} {k}: {v}" for k, v in clashes.items()))
            if image_name:
                image = (await op.session.execute(select(Image).where(Image.name == image_name))).scalar_one_or_none()
                if image is None:
                    raise NotFound(f"no image named '{image_name}'")
                machine.image_id = image.id
            op.session.add(machine)
            await op.flush(conflict=f"machine '{data.name}' or its MAC was just added by another console")
            op.audit("machine", machine.id, machine.name, None, snapshot(machine), detail="adopted")
            names.append(machine.name)
        await _forget_discovered(op, [d.mac for d, _ in parsed])
        op.intent_changed()
        return names


async def forget_discovered(core: Core, actor: Actor, macs: list[str]) -> int:
    from .machines import _forget_discovered

    try:
        normal = [normalize_mac(m) for m in macs]
    except ValueError as exc:
        raise Invalid("mac", str(exc)) from None
    async with operation(core, actor, Permission.MANAGE_MACHINES, "discovered.forget") as op:
        count = (
            await op.session.execute(
                select(func.count()).select_from(DiscoveredMac).where(DiscoveredMac.mac.in_(normal))
            )
        ).scalar_one()
        await _forget_discovered(op, normal)
        op.audit("discovered", None, ", ".join(normal)[:255], detail=f"{count} forgotten")
        return int(count)


# --- the engine, now ----------------------------------------------------------------------------


async def request_pass(core: Core, actor: Actor, *, dry_run: bool = False) -> int:
    """``ggnet reconcile``: ask for one pass now (its report is the request's result)."""
    async with operation(
        core, actor, Permission.READ if dry_run else Permission.MANAGE_TARGETS, "target.reconcile"
    ) as op:
        request = EngineRequest(
            server=core.settings.server_name,
            kind=EngineRequestKind.PASS.value,
            params={"dry_run": dry_run},
            requested_by=actor.username,
            requested_at=utcnow(),
            state=EngineRequestState.PENDING.value,
        )
        op.session.add(request)
        await op.flush(conflict="retry")
        op.audit("target", None, "reconcile", after={"dry_run": dry_run})
        op.intent_changed()
        return request.id


async def converge_now(core: Core) -> bool:
    """When no engine runs for this server, run one here (a pass and the pending requests), so a
    command works without ``ggnet serve``. False when another process holds the engine lock."""
    from ..engine.engine import Engine

    engine = Engine(core, mode="once")
    if not await engine.lock.acquire(wait=False):
        return False
    try:
        await engine.start()
    finally:
        await engine.close()
    return True


WAIT_POLL_SECONDS = 0.05  # a one-row read: a command waiting on the engine answers within 50 ms of it


async def wait_boots(core: Core, boot_ids: list[int], timeout: float = WAIT_SECONDS) -> dict[int, Boot]:
    """Until each boot is ready, failed or refused (or the timeout passes): the rows as they are."""
    deadline = time.monotonic() + timeout
    while True:
        async with core.db.session() as session:
            rows = {b.id: b for b in (await session.execute(select(Boot).where(Boot.id.in_(boot_ids)))).scalars()}
        pending = [b for b in rows.values() if b.state in (BootState.REQUESTED.value, BootState.PREPARING.value)]
        if not pending or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(WAIT_POLL_SECONDS)


async def wait_request(core: Core, request_id: int, timeout: float = WAIT_SECONDS) -> EngineRequest | None:
    deadline = time.monotonic() + timeout
    while True:
        async with core.db.session() as session:
            row = await session.get(EngineRequest, request_id)
        if row is None or row.state != EngineRequestState.PENDING.value or time.monotonic() > deadline:
            return row
        await asyncio.sleep(WAIT_POLL_SECONDS)
