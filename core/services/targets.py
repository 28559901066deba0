"""What the target stack holds, and reconcile: make it match the database."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from ..auth import Actor, Permission
from ..context import Core
from ..errors import BackendUnavailable, GgnetError
from ..iscsi.base import LunSpec, TargetSpec
from ..log import get_logger
from ..models import BootSession, ImageVersion, Machine, Outcome, SessionState, Target
from ..reconcile import DesiredTarget, Drift, compare_targets, compare_writebacks, owns
from ..storage.writeback import writeback_dir
from .base import operation, reading, require
from .views import View


class TargetView(View):
    iqn: str
    machine: str | None  # the owner, when ggnet created it for a session
    owned: bool  # recognised by the IQN base
    wanted: bool  # a running session wants it (False on an owned target = drift)
    lun: int | None
    backing_file: str | None
    acls: list[str]
    initiators: list[str]  # logged in now
    addresses: list[str]


@dataclass
class ReconcileReport:
    drift: list[Drift]
    dry_run: bool
    repaired: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    boot_files_changed: int = 0


async def _desired(core: Core) -> tuple[list[DesiredTarget], set[Path]]:
    from . import images

    wb_dir = writeback_dir(core.settings)
    desired: list[DesiredTarget] = []
    async with core.db.session() as session:
        rows = (
            await session.execute(
                select(Target, BootSession, Machine, ImageVersion)
                .join(BootSession, BootSession.id == Target.session_id)
                .join(Machine, Machine.id == Target.machine_id)
                .outerjoin(ImageVersion, ImageVersion.id == BootSession.image_version_id)
                .where(BootSession.state.in_([SessionState.STARTING.value, SessionState.ACTIVE.value]))
            )
        ).all()
        host, port = core.settings.portal_address
        for target, boot_session, machine, version in rows:
            spec = TargetSpec(
                iqn=target.iqn,
                luns=(LunSpec(target.lun, wb_dir / str(boot_session.writeback_file)),),
                initiator_iqn=machine.initiator_iqn,
                chap_username=machine.chap_username,
                chap_secret=machine.chap_secret,
                portal_host=host,
                portal_port=port,
            )
            source = images.version_path(core.settings, version) if version is not None else Path("/nonexistent")
            desired.append(DesiredTarget(machine.name, boot_session.id, spec, source))
        kept_files = (
            await session.execute(select(BootSession.writeback_file).where(BootSession.writeback_file.is_not(None)))
        ).scalars()
        kept = {wb_dir / name for name in kept_files}
    return desired, kept


async def list_targets(core: Core, actor: Actor) -> list[TargetView]:
    backend, health = await core.target_backend()
    if backend is None:
        raise BackendUnavailable(health.detail)
    async with reading(core, actor) as session:
        owners = dict(
            (
                await session.execute(select(Target.iqn, Machine.name).join(Machine, Machine.id == Target.machine_id))
            ).all()
        )
    owners_lower = {k.lower(): v for k, v in owners.items()}
    views = []
    for target in sorted(await backend.list_targets(), key=lambda t: t.iqn):
        owner = owners_lower.get(target.iqn.lower())
        views.append(
            TargetView(
                iqn=target.iqn,
                machine=owner,
                owned=owns(target.iqn, core.settings.iqn_base),
                wanted=owner is not None,
                lun=target.lun,
                backing_file=target.backing_file,
                acls=list(target.acls),
                initiators=[s.initiator_iqn for s in target.sessions],
                addresses=[s.address for s in target.sessions if s.address],
            )
        )
    return views


async def find_drift(core: Core) -> list[Drift]:
    backend, health = await core.target_backend()
    if backend is None:
        raise BackendUnavailable(health.detail)
    desired, kept = await _desired(core)
    return compare_targets(desired, await backend.list_targets(), core.settings.iqn_base) + compare_writebacks(
        desired, kept, writeback_dir(core.settings)
    )


async def reconcile(core: Core, actor: Actor, dry_run: bool = False) -> ReconcileReport:
    """Print-and-repair: create what is missing, remove what ggnet created and no longer wants.
    Targets outside the IQN base are never touched. One audit event for the whole run."""
    from ..storage.writeback import choose_driver
    from .boot import write_boot_files

    await require(core, actor, Permission.READ if dry_run else Permission.MANAGE_TARGETS, "target.reconcile")
    backend, health = await core.target_backend()
    if backend is None:
        raise BackendUnavailable(health.detail)
    desired, kept = await _desired(core)
    drift = compare_targets(desired, await backend.list_targets(), core.settings.iqn_base) + compare_writebacks(
        desired, kept, writeback_dir(core.settings)
    )
    report = ReconcileReport(drift=drift, dry_run=dry_run)
    if dry_run:
        return report
    by_iqn = {d.spec.iqn.lower(): d for d in desired}
    by_file = {str(d.spec.backing_file): d for d in desired}
    driver = None
    # writebacks first: a target needs its file
    for item in drift:
        try:
            if item.kind == "missing-writeback":
                wanted = by_file[item.subject]
                driver = driver or await choose_driver(core.settings.data_dir, core.settings.writeback_driver)
                wanted.spec.backing_file.parent.mkdir(parents=True, exist_ok=True)
                await driver.create(wanted.source_image, wanted.spec.backing_file)
            elif item.kind == "stray-writeback":
                driver = driver or await choose_driver(core.settings.data_dir, core.settings.writeback_driver)
                await driver.discard(Path(item.subject))
            else:
                continue
            report.repaired.append(f"{item.kind} {item.subject}: {item.repair}")
        except (GgnetError, OSError) as exc:
            report.errors.append(f"{item.kind} {item.subject}: {exc}")
    for item in drift:
        try:
            if item.kind in ("missing-target", "wrong-target"):
                if item.kind == "wrong-target":
                    await backend.delete_target(item.subject)
                await backend.create_target(by_iqn[item.subject.lower()].spec)
            elif item.kind == "stray-target":
                await backend.delete_target(item.subject)
            else:
                continue
            report.repaired.append(f"{item.kind} {item.subject}: {item.repair}")
        except (GgnetError, OSError) as exc:
            report.errors.append(f"{item.kind} {item.subject}: {exc}")
    async with operation(core, actor, Permission.MANAGE_TARGETS, "target.reconcile") as op:
        report.boot_files_changed = await write_boot_files(core, op.session) or 0
        op.audit(
            "target",
            None,
            f"{len(drift)} drift items",
            detail="; ".join(report.repaired + report.errors)[:4000] or "no drift",
            outcome=Outcome.FAILED if report.errors else Outcome.OK,
        )
    if report.errors:
        get_logger().warning("reconcile incomplete", errors=report.errors)
    return report
