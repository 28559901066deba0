"""One pass: compare what the database wants with what the target stack and the disk hold, and
converge. Every step is idempotent, so a pass killed at any line is completed by the next one.

Order matters for safety: targets first (so a writeback is never removed while a target still
serves it), then the boots that ended, then the files nobody wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..boot.ipxe import BOOT_SCRIPT, boot_url, sync_tftp_root, tftp_files
from ..errors import GgnetError
from ..iscsi.base import ObservedTarget, TargetSpec
from ..iscsi.diff import find_drift
from ..models import (
    CURRENT_BOOT_STATES,
    OPEN_BOOT_STATES,
    Base,
    Boot,
    BootState,
    Machine,
    MachineObservation,
    MachineStatus,
    WritebackPolicy,
    WritebackState,
    utcnow,
)
from ..models import Writeback as WritebackRow
from ..storage.writeback import writeback_dir
from . import disks
from .prepare import owns, target_iqn
from .report import Drift, PassReport

if TYPE_CHECKING:
    from .engine import Engine

_OPEN = [s.value for s in OPEN_BOOT_STATES]
_CURRENT = {s.value for s in CURRENT_BOOT_STATES}


@dataclass
class _State:
    """What the database says, loaded once per pass."""

    boots: list[Boot] = field(default_factory=list)  # open boots of this server
    machines: dict[int, Machine] = field(default_factory=dict)
    writebacks: dict[int, WritebackRow] = field(default_factory=dict)  # this server's rows
    latest_closed: dict[int, Boot] = field(default_factory=dict)  # per machine: its last ended/failed boot


async def _load(engine: Engine) -> _State:
    server = engine.core.settings.server_name
    state = _State()
    async with engine.core.db.session() as session:
        state.boots = list(
            (
                await session.execute(
                    select(Boot).where(Boot.server == server, Boot.state.in_(_OPEN)).order_by(Boot.id)
                )
            ).scalars()
        )
        state.machines = {m.id: m for m in (await session.execute(select(Machine))).scalars()}
        state.writebacks = {
            w.id: w
            for w in (await session.execute(select(WritebackRow).where(WritebackRow.server == server))).scalars()
        }
        session.expunge_all()
    return state


async def run_pass(engine: Engine, *, dry_run: bool = False, probe_chap: bool = False) -> PassReport:
    """One pass; ``probe_chap``: check every target's CHAP secret by a login now (an operator's
    reconcile), not only the targets whose periodic check is due."""
    started = time.monotonic()
    report = PassReport(dry_run=dry_run)
    await engine.refresh_backend()
    report.backend = engine.backend.name if engine.backend else None
    if not dry_run:
        await _finish_orphan_boots(engine, report)
    state = await _load(engine)
    observed: dict[str, ObservedTarget] | None = None
    if engine.backend is not None:
        try:
            observed = await engine.backend.observe()
            engine.view = dict(observed)
        except GgnetError as exc:
            report.errors.append(f"cannot read the target stack: {exc.message}")
    else:
        report.errors.append(engine.backend_detail or "no iSCSI target stack")
    served: set[Path] = set()  # writeback files a target serves after this pass
    if observed is not None:
        served = await _converge_targets(engine, state, observed, report, dry_run, probe_chap)
        await _stray_accounts(engine, state, report, dry_run)
    if not dry_run:
        await _end_boots(engine, state, served, report)
        await _idle_boots(engine, state, observed, report)
    await _files(engine, state, served, observed is not None, report, dry_run)
    if not dry_run and observed is not None:
        await _observe(engine, state, observed)
    report.duration_ms = int((time.monotonic() - started) * 1000)
    return report


async def _finish_orphan_boots(engine: Engine, report: PassReport) -> None:
    """Boots recorded but not prepared (an operator's prepare, or a process that died meanwhile)."""
    server = engine.core.settings.server_name
    async with engine.core.db.session() as session:
        ids = list(
            (
                await session.execute(
                    select(Boot.id).where(
                        Boot.server == server,
                        Boot.state.in_([BootState.REQUESTED.value, BootState.PREPARING.value]),
                    )
                )
            ).scalars()
        )
    todo = [i for i in ids if i not in engine.in_flight_boots]
    if not todo:
        return
    gate = asyncio.Semaphore(16)  # the work waits on tgtd and SQLite: more in flight, less waiting

    async def one(boot_id: int) -> None:
        async with gate:
            boot, _machine, _ = await engine.preparer.prepare(boot_id)
            if boot.state == BootState.READY.value:
                report.boots_prepared += 1
                report.repaired.append(f"boot {boot_id} of {boot.machine_name}: prepared")
            elif boot.state == BootState.FAILED.value:
                report.errors.append(f"boot {boot_id} of {boot.machine_name}: {boot.error}")

    tasks = [asyncio.ensure_future(one(i)) for i in todo]
    try:
        await asyncio.gather(*tasks)
    finally:
        # gather returns (cancelled) at its first cancelled child; the others are still cancelling.
        # A pass returns only once its preparations stopped, or the next pass would find their boots
        # "in flight", skip them and leave them requested.
        await asyncio.wait(tasks)


async def _current_boot_id(engine: Engine, iqn: str) -> int | None:
    """The boot a target should serve, read now: a boot request may have run since the pass loaded
    its state (the pass must neither undo that boot's target nor delete it as a stray)."""
    async with engine.core.db.session() as session:
        return (
            await session.execute(
                select(Boot.id).where(
                    Boot.server == engine.core.settings.server_name,
                    Boot.target_iqn == iqn,
                    Boot.state.in_(list(_CURRENT)),
                )
            )
        ).scalar_one_or_none()


def _desired(engine: Engine, state: _State) -> dict[str, tuple[Boot, TargetSpec | None]]:
    """The target each machine with a ready boot should have (None: its writeback file is missing)."""
    wanted: dict[str, tuple[Boot, TargetSpec | None]] = {}
    for boot in state.boots:
        if boot.state != BootState.READY.value or boot.machine_id not in state.machines:
            continue
        machine = state.machines[boot.machine_id]
        system = state.writebacks.get(boot.system_writeback_id or -1)
        game = state.writebacks.get(boot.game_writeback_id or -1)
        try:
            spec = engine.spec(boot, machine, system, game)
        except GgnetError:
            spec = None
        wanted[(boot.target_iqn or "").lower()] = (boot, spec)
    return wanted


async def _converge_targets(
    engine: Engine,
    state: _State,
    observed: dict[str, ObservedTarget],
    report: PassReport,
    dry_run: bool,
    probe_chap: bool = False,
) -> set[Path]:
    backend = engine.backend
    assert backend is not None
    settings = engine.core.settings
    served: set[Path] = set()
    desired = _desired(engine, state)
    busy = {(b.target_iqn or "").lower() for b in state.boots if b.id in engine.in_flight_boots}
    for iqn, (boot, spec) in desired.items():
        if iqn in busy:
            continue
        if spec is None:
            report.errors.append(f"boot {boot.id} of {boot.machine_name}: its writebacks are not usable")
            continue
        missing = [lun.backing_file for lun in spec.luns if not lun.backing_file.is_file()]
        for path in missing:
            report.drift.append(
                Drift("missing-writeback", path.name, boot.machine_name, repair="clone it again from its version")
            )
        current = observed.get(iqn)
        # tgtd cannot show a secret: a login probe checks it now and then (about 1 ms a target)
        diffs = await find_drift(backend, spec, current, probe_chap=probe_chap or engine.chap_check_due(iqn))
        if diffs:
            report.drift.append(
                Drift("target", spec.iqn, boot.machine_name, tuple(diffs), "make the target match the boot")
            )
        if dry_run or not (diffs or missing):
            served.update(lun.backing_file for lun in spec.luns)
            continue
        try:
            if missing:
                for row_id in (boot.system_writeback_id, boot.game_writeback_id):
                    row = state.writebacks.get(row_id or -1)
                    if row is not None:
                        row.state = WritebackState.CREATING.value
                        await engine.preparer._ensure_writeback(row)
            async with engine.target_lock(iqn):
                if await _current_boot_id(engine, spec.iqn) != boot.id:
                    continue  # superseded meanwhile: its own boot request set the target
                changed = await backend.apply(spec, current)
                engine.remember(spec)
            report.repaired.append(f"target {spec.iqn} ({boot.machine_name}): {', '.join(changed or diffs)}")
            served.update(lun.backing_file for lun in spec.luns)
        except (GgnetError, OSError) as exc:
            report.errors.append(f"target {spec.iqn} ({boot.machine_name}): {exc}")
            if current is not None:
                served.update(Path(f) for f in current.luns.values() if f)
    for iqn, target in observed.items():
        if iqn in desired or iqn in busy or not owns(target.iqn, settings.iqn_base):
            if iqn in busy:
                served.update(Path(f) for f in target.luns.values() if f)
            continue
        report.drift.append(
            Drift("stray-target", target.iqn, _owner(state, iqn), repair="delete it (no boot wants it)")
        )
        if dry_run:
            served.update(Path(f) for f in target.luns.values() if f)
            continue
        try:
            async with engine.target_lock(iqn):
                if await _current_boot_id(engine, target.iqn) is not None:
                    served.update(Path(f) for f in target.luns.values() if f)
                    continue  # a boot of it was recorded meanwhile
                await backend.delete(target.iqn)
                engine.forget(iqn)
            report.repaired.append(f"stray target {target.iqn}: deleted")
        except (GgnetError, OSError) as exc:
            report.errors.append(f"stray target {target.iqn}: {exc}")
            served.update(Path(f) for f in target.luns.values() if f)
    return served


async def _stray_accounts(engine: Engine, state: _State, report: PassReport, dry_run: bool) -> None:
    """CHAP accounts of machines with no open boot that no target binds (tgtd's accounts are global:
    a kill between making one and binding it, or between deleting a target and its account, leaves
    one). A machine's account is only ever bound to its own target, whose lock guards the check."""
    backend = engine.backend
    assert backend is not None
    booting = {b.machine_id for b in state.boots}
    idle = {m.chap_username: m for m in state.machines.values() if m.id not in booting}
    try:
        strays = await backend.unbound_accounts(idle) if idle else []
    except GgnetError as exc:
        report.errors.append(f"cannot read the CHAP accounts: {exc.message}")
        return
    for user in strays:
        machine = idle[user]
        report.drift.append(Drift("stray-account", user, machine.name, repair="delete it (no target binds it)"))
        if dry_run:
            continue
        iqn = target_iqn(engine.core.settings.iqn_base, machine.name)
        try:
            async with engine.target_lock(iqn):
                if await _current_boot_id(engine, iqn) is not None:
                    continue  # a boot of the machine was recorded meanwhile: its target takes the account
                if await backend.delete_unbound_account(user, iqn):
                    report.repaired.append(f"stray CHAP account {user} ({machine.name}): deleted")
        except GgnetError as exc:
            report.errors.append(f"stray CHAP account {user}: {exc.message}")


def _owner(state: _State, iqn: str) -> str | None:
    for boot in state.boots:
        if (boot.target_iqn or "").lower() == iqn:
            return boot.machine_name
    return None


async def _end_boots(engine: Engine, state: _State, served: set[Path], report: PassReport) -> None:
    """Boots that are over give up what only they used: their fresh writebacks go to be removed."""
    in_use = {
        wid
        for b in state.boots
        if b.state in _CURRENT
        for wid in (b.system_writeback_id, b.game_writeback_id)
        if wid is not None
    }
    ending = [b for b in state.boots if b.state == BootState.ENDING.value and b.id not in engine.in_flight_boots]
    if not ending:
        return
    async with engine.core.db.transaction() as session:
        for stale in ending:
            boot = await session.get(Boot, stale.id)
            if boot is None or boot.state != BootState.ENDING.value:
                continue
            machine = state.machines.get(boot.machine_id or -1)
            keep_policy = machine is not None and machine.writeback_policy != WritebackPolicy.FRESH.value
            still_served = False
            for wid in (boot.system_writeback_id, boot.game_writeback_id):
                row = await session.get(WritebackRow, wid) if wid else None
                if row is None or wid in in_use:
                    continue
                path = disks.writeback_file(engine.core.settings, row.file_name)
                if path in served:
                    # a target still serves it (one being changed for the next boot, or one that could
                    # not be changed): the boot stays ending, and a later pass gives the writeback up
                    still_served = True
                    continue
                if not (row.retained and keep_policy and boot.end_reason != "reset"):
                    row.state = WritebackState.DISCARD.value
                    if wid in state.writebacks:  # so that this pass removes it (below, in _files)
                        state.writebacks[wid].state = WritebackState.DISCARD.value
            if still_served:
                continue
            boot.state = BootState.ENDED.value
            boot.ended_at = boot.ended_at or utcnow()
            report.boots_ended += 1


async def _idle_boots(
    engine: Engine, state: _State, observed: dict[str, ObservedTarget] | None, report: PassReport
) -> None:
    """Fresh boots whose client logged out long ago end; their writebacks are then removed."""
    hours = engine.core.settings.writeback_idle_hours
    if observed is None or hours <= 0:
        return
    limit = utcnow() - timedelta(hours=hours)
    idle: list[int] = []
    for boot in state.boots:
        if boot.state != BootState.READY.value or boot.policy != WritebackPolicy.FRESH.value:
            continue
        target = observed.get((boot.target_iqn or "").lower())
        if target is not None and target.sessions:
            continue
        last = boot.logout_at or boot.login_at or boot.prepared_at or boot.requested_at
        if last is not None and last < limit:
            idle.append(boot.id)
    if not idle:
        return
    async with engine.core.db.transaction() as session:
        for boot_id in idle:
            boot = await session.get(Boot, boot_id)
            if boot is not None and boot.state == BootState.READY.value:
                boot.state, boot.end_reason, boot.ended_by = BootState.ENDING.value, "idle", engine.actor_name
                report.repaired.append(f"boot {boot_id} of {boot.machine_name}: idle for {hours:g} h, ended")
    engine.poke()  # the next pass removes its target and writeback


async def _files(
    engine: Engine, state: _State, served: set[Path], targets_known: bool, report: PassReport, dry_run: bool
) -> None:
    settings = engine.core.settings
    directory = writeback_dir(settings)
    wanted_names = {w.file_name for w in state.writebacks.values() if w.state != WritebackState.DISCARD.value}
    discard = [w for w in state.writebacks.values() if w.state == WritebackState.DISCARD.value]
    in_current = {
        wid for b in state.boots if b.state in _CURRENT for wid in (b.system_writeback_id, b.game_writeback_id) if wid
    }
    creating_orphans = [  # a clone whose boot is gone, or a writeback whose machine was deleted
        w
        for w in state.writebacks.values()
        if w.id not in in_current
        and w.state != WritebackState.DISCARD.value
        and (w.state == WritebackState.CREATING.value or w.machine_id is None)
    ]
    removed_rows: list[int] = []
    if targets_known:  # never remove a file while we do not know whether a target serves it
        given_up = await _give_up_orphans(engine, creating_orphans) if creating_orphans and not dry_run else []
        for row in discard + given_up:
            path = disks.writeback_file(settings, row.file_name)
            if path in served or path in engine.in_flight_files:
                continue
            if not dry_run:
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    report.errors.append(f"writeback {row.file_name}: {exc.strerror}")
                    continue
                removed_rows.append(row.id)
                report.writebacks_removed += 1
    if removed_rows:
        async with engine.core.db.transaction() as session:
            for row_id in removed_rows:
                row = await session.get(WritebackRow, row_id)
                if row is not None:
                    await session.delete(row)
    # files ggnet named that no row of this server owns, and temporaries of clones that died
    if directory.is_dir() and targets_known:
        handled = {row.file_name for row in discard + creating_orphans}
        candidates: list[tuple[Path, Drift]] = []
        for path in sorted(directory.iterdir()):
            if path in served or path in engine.in_flight_files or path.name in handled:
                continue
            if disks.OWNED_NAME.match(path.name) and path.name not in wanted_names:
                candidates.append((path, Drift("stray-writeback", path.name, None, repair="delete the file")))
        if candidates:
            # a boot may have made a writeback since the pass loaded its state: ask the database again
            async with engine.core.db.session() as session:
                names = [p.name for p, _ in candidates]
                known = set(
                    (await session.execute(select(WritebackRow.file_name).where(WritebackRow.file_name.in_(names))))
                    .scalars()
                    .all()
                )
            for path, drift in candidates:
                if path.name in known or path in engine.in_flight_files:
                    continue
                report.drift.append(drift)
                if not dry_run:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    report.repaired.append(f"{path.name}: removed")
    if not dry_run:
        await _orphan_temporaries(engine, report)
        await _boot_files(engine, report)


async def _give_up_orphans(engine: Engine, rows: list[WritebackRow]) -> list[WritebackRow]:
    """Orphans go to ``discard`` first, each checked again in the database: a boot request may have
    taken one up since this pass loaded its state (a keep machine takes up its kept writeback even
    when a clone that died left it ``creating``), and a discarded writeback is never taken up again."""
    given_up: list[WritebackRow] = []
    async with engine.core.db.transaction() as session:
        for stale in rows:
            row = await session.get(WritebackRow, stale.id)
            if row is None or not (row.state == WritebackState.CREATING.value or row.machine_id is None):
                continue
            users = select(Boot.id).where(
                Boot.state.in_(list(_CURRENT)),
                or_(Boot.system_writeback_id == row.id, Boot.game_writeback_id == row.id),
            )
            if (await session.execute(users.limit(1))).first() is not None:
                continue
            row.state = WritebackState.DISCARD.value
            given_up.append(stale)
    return given_up


async def _orphan_temporaries(engine: Engine, report: PassReport) -> None:
    """Partial clones and imports whose process died: their creator's lock is gone (temps.py), so
    they are removed; a live creator (this engine's clone, another process's import) holds its lock."""
    from ..services.images import images_dir
    from ..storage import temps

    for directory in (writeback_dir(engine.core.settings), images_dir(engine.core.settings)):
        if not directory.is_dir():
            continue
        try:
            removed = await asyncio.to_thread(temps.remove_orphans, directory)
        except OSError as exc:
            report.errors.append(f"temporaries in {directory}: {exc.strerror or exc}")
            continue
        for path in removed:
            report.drift.append(Drift("orphan-temporary", path.name, None, repair="deleted (its process died)"))
            report.repaired.append(f"{path.name}: removed (its process died)")


async def _boot_files(engine: Engine, report: PassReport) -> None:
    settings = engine.core.settings
    host = settings.boot_host
    if host is None:
        report.errors.append(
            "boot_address: GGNET_BOOT_ADDRESS is required because GGNET_PORTAL listens on 0.0.0.0 "
            "(the address PCs reach this server at)"
        )
        return
    try:
        files = tftp_files(boot_url(host, settings.http_listen[1]))
        assert settings.tftp_root is not None
        result = await asyncio.to_thread(sync_tftp_root, Path(settings.tftp_root), files)
    except (GgnetError, OSError) as exc:
        report.errors.append(f"boot files in {settings.tftp_root}: {exc}")
        return
    if result.changed:
        report.repaired.append(
            f"boot files: {', '.join(result.written) or BOOT_SCRIPT} written"
            + (f", {len(result.removed)} old per-machine scripts removed" if result.removed else "")
        )


def _logins(view: dict[str, ObservedTarget]) -> dict[str, frozenset[tuple[str, str | None]]]:
    return {iqn: frozenset((s.initiator_iqn.lower(), s.address) for s in t.sessions) for iqn, t in view.items()}


async def watch_sessions(engine: Engine) -> bool:
    """Between passes: one cheap read of the target stack; when a client logged in or out, record it
    (boot history, machine status). True when something changed."""
    backend = engine.backend
    if backend is None or engine.pass_running:
        return False
    try:
        view = await backend.observe()
    except GgnetError:
        return False
    if _logins(view) == _logins(engine.view) or engine.pass_running:
        return False
    engine.view = dict(view)
    await _observe(engine, await _load(engine), view)
    return True


async def _observe(engine: Engine, state: _State, observed: dict[str, ObservedTarget]) -> None:
    """Record logins and logouts on the boots, sizes on the writebacks, status per machine."""
    settings = engine.core.settings
    now = utcnow()
    current_by_machine = {b.machine_id: b for b in state.boots if b.state in _CURRENT}
    table = MachineObservation.__table__
    # plain rows, not ORM objects: this runs every pass and every session watch, for every machine
    async with engine.core.db.session() as session:
        latest = (
            await session.execute(
                select(Boot.machine_id, Boot.state, Boot.error)
                .where(
                    Boot.server == settings.server_name,
                    Boot.id.in_(
                        select(Boot.id)
                        .where(Boot.server == settings.server_name)
                        .order_by(Boot.id.desc())
                        .limit(max(200, 2 * len(state.machines)))
                    ),
                )
                .order_by(Boot.id)
            )
        ).all()
        last_by_machine = {b.machine_id: b for b in latest}
        existing = {
            o.machine_id: o
            for o in (await session.execute(select(*table.columns).where(table.c.server == settings.server_name))).all()
        }
    changes: list[dict[str, object]] = []
    boot_updates: dict[int, dict[str, object]] = {}
    wb_logout: list[int] = []
    for machine_id, machine in state.machines.items():
        boot = current_by_machine.get(machine_id)
        last = last_by_machine.get(machine_id)
        if boot is None and last is None and machine_id not in existing:
            continue
        target = observed.get((boot.target_iqn or "").lower()) if boot is not None else None
        session_ = None
        if target is not None:
            session_ = next(
                (s for s in target.sessions if s.initiator_iqn.lower() == machine.initiator_iqn.lower()), None
            )
        status, detail = MachineStatus.OFF, None
        if boot is not None and boot.state != BootState.READY.value:
            status = MachineStatus.BOOTING
        elif boot is not None and session_ is not None:
            status = MachineStatus.BOOTED
            if boot.login_at is None or boot.logout_at is not None:
                boot_updates[boot.id] = {"login_at": boot.login_at or now, "login_address": session_.address,
                                         "logout_at": None}  # fmt: skip
        elif boot is not None:
            if boot.login_at is not None and boot.logout_at is None:
                boot_updates[boot.id] = {"logout_at": now}
                wb_logout += [w for w in (boot.system_writeback_id, boot.game_writeback_id) if w]
            status = MachineStatus.OFF if boot.login_at is not None else MachineStatus.BOOTING
        elif last is not None and last.state in (BootState.FAILED.value, BootState.REFUSED.value):
            status, detail = MachineStatus.FAILED, last.error
        read = written = None
        if target is not None and target.io:
            read = sum(io.read_bytes for io in target.io.values())
            written = sum(io.written_bytes for io in target.io.values())
        sizes = [
            state.writebacks[w].allocated_bytes
            for w in ((boot.system_writeback_id, boot.game_writeback_id) if boot else ())
            if w in state.writebacks
        ]
        old = existing.get(machine_id)
        new = {
            "status": status.value,
            "detail": detail,
            "logged_in": session_ is not None,
            "client_address": session_.address if session_ else None,
            "target_present": target is not None,
            "read_bytes": read,
            "written_bytes": written,
            "writeback_bytes": sum(s for s in sizes if s is not None) if sizes else None,
        }
        if (
            old is None
            or any(getattr(old, k) != v for k, v in new.items())
            or (session_ is not None and (old.last_seen_at is None or now - old.last_seen_at > timedelta(seconds=60)))
        ):
            last_seen = now if session_ is not None else (old.last_seen_at if old is not None else None)
            changes.append({"machine_id": machine_id, "server": settings.server_name, **new,
                            "last_seen_at": last_seen, "observed_at": now})  # fmt: skip
    sizes_changed = []
    for row in state.writebacks.values():
        if row.state != WritebackState.READY.value:
            continue
        size = disks.allocated_bytes(disks.writeback_file(settings, row.file_name))
        if size is not None and size != row.allocated_bytes:
            sizes_changed.append((row.id, size))
    if not (changes or boot_updates or wb_logout or sizes_changed):
        return
    # one statement per kind of change (executemany), not a read and a write per row: after a boot
    # storm every machine's status changes at once
    async with engine.core.db.transaction() as session:
        new_rows = [r for r in changes if r["machine_id"] not in existing]
        if new_rows:
            await session.execute(table.insert(), new_rows)  # type: ignore[attr-defined]
        await _update_by_id(
            session, MachineObservation, "machine_id", [r for r in changes if r["machine_id"] in existing]
        )
        await _update_by_id(
            session, Boot, "id", [{"id": boot_id, **values} for boot_id, values in boot_updates.items()]
        )
        if wb_logout:
            await session.execute(update(WritebackRow).where(WritebackRow.id.in_(wb_logout)).values(last_used_at=now))
        await _update_by_id(session, WritebackRow, "id", [{"id": w, "allocated_bytes": n} for w, n in sizes_changed])
    # committed: tell the live listeners what changed
    events = engine.core.events
    for obs in changes:
        old = existing.get(obs["machine_id"])
        if old is None or old.status != obs["status"]:
            events.publish(
                "machine.status",
                machine=state.machines[obs["machine_id"]].name,  # type: ignore[index]
                status=obs["status"],
                previous=old.status if old is not None else None,
                detail=obs["detail"],
                client_address=obs["client_address"],
            )
    names = {b.id: b.machine_name for b in state.boots}
    for boot_id, values in boot_updates.items():
        if values.get("logout_at") is None and "login_address" in values:
            events.publish(
                "machine.login", boot_id=boot_id, machine=names.get(boot_id), address=values["login_address"]
            )
        elif values.get("logout_at") is not None:
            events.publish("machine.logout", boot_id=boot_id, machine=names.get(boot_id))


async def _update_by_id(session: AsyncSession, model: type[Base], key: str, rows: list[dict[str, object]]) -> None:
    """UPDATE rows by their key, one executemany per set of columns; a row deleted meanwhile is skipped."""
    table = model.__table__
    groups: dict[tuple[str, ...], list[dict[str, object]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(k for k in row if k != key)), []).append(row)
    for columns, group in groups.items():
        statement = (
            table.update()  # type: ignore[attr-defined]
            .where(table.c[key] == bindparam("key_"))
            .values({c: bindparam(f"v_{c}") for c in columns})
        )
        await session.execute(statement, [{"key_": r[key], **{f"v_{c}": r[c] for c in columns}} for r in group])
