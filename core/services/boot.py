"""Boot files from the database: iPXE scripts in the TFTP root, and a dnsmasq configuration.

``write_boot_files`` runs inside the caller's transaction (session start/stop, reconcile) and
writes no audit event of its own; ``render_boot_files`` is the operator's ``ggnet boot render``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..auth import Actor, Permission
from ..boot import dnsmasq
from ..boot.ipxe import (
    MachineScript,
    SanBoot,
    SyncResult,
    Why,
    check_address,
    render_all,
    sync_tftp_root,
)
from ..config import Settings
from ..context import Core
from ..errors import Invalid
from ..log import get_logger
from ..models import BootSession, Machine, SessionState, Target
from .base import operation, reading, require

_BOOTS = (SessionState.STARTING.value, SessionState.ACTIVE.value)


@dataclass(frozen=True)
class BootFilesReport:
    tftp_root: str
    machines: int
    written: list[str]
    removed: list[str]
    unchanged: int

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def boot_address(settings: Settings) -> str:
    """The server address written into sanboot URIs."""
    host = settings.boot_host
    if host is None:
        raise Invalid(
            "boot_address",
            "is required because GGNET_PORTAL listens on 0.0.0.0: set GGNET_BOOT_ADDRESS to the address "
            "client PCs reach this server at",
        )
    return check_address(host)


def tftp_root(settings: Settings) -> Path:
    assert settings.tftp_root is not None  # derived from the data directory when unset
    return Path(settings.tftp_root)


async def machine_scripts(core: Core, session: AsyncSession) -> list[MachineScript]:
    """Every machine with what its script should do, from its latest boot session."""
    latest = (
        select(BootSession.machine_id, func.max(BootSession.id).label("id")).group_by(BootSession.machine_id).subquery()
    )
    query = (
        select(Machine, BootSession.state, Target.iqn, Target.lun)
        .outerjoin(latest, latest.c.machine_id == Machine.id)
        .outerjoin(BootSession, BootSession.id == latest.c.id)
        .outerjoin(Target, Target.session_id == BootSession.id)
        .order_by(Machine.name)
    )
    rows = (await session.execute(query)).all()
    address: str | None = None
    port = core.settings.portal_address[1]
    scripts: list[MachineScript] = []
    for machine, state, target_iqn, lun in rows:
        if state in _BOOTS and target_iqn is not None:
            address = address or boot_address(core.settings)
            boot = SanBoot(
                address=address,
                port=port,
                lun=lun,
                target_iqn=target_iqn,
                initiator_iqn=machine.initiator_iqn,
                chap_username=machine.chap_username,
                chap_secret=machine.chap_secret,
            )
            scripts.append(MachineScript(machine.name, machine.mac, boot))
            continue
        if state in _BOOTS:
            why = Why.NO_TARGET
        elif state == SessionState.STOPPING.value:
            why = Why.STOPPING
        elif machine.image_id is None:
            why = Why.NO_IMAGE
        elif state == SessionState.ERROR.value:
            why = Why.FAILED
        else:
            why = Why.NO_SESSION
        scripts.append(MachineScript(machine.name, machine.mac, why=why))
    return scripts


async def _write(core: Core, session: AsyncSession) -> tuple[SyncResult, int]:
    scripts = await machine_scripts(core, session)
    files = render_all(scripts)
    root = tftp_root(core.settings)
    try:
        result = await asyncio.to_thread(sync_tftp_root, root, files)
    except OSError as exc:
        raise Invalid("tftp_root", f"cannot write boot scripts into {root}: {exc.strerror or exc}") from None
    if result.changed:
        get_logger().info(
            "boot files written", tftp_root=str(root), written=len(result.written), removed=result.removed
        )
    return result, len(scripts)


async def write_boot_files(core: Core, session: AsyncSession) -> int:
    """Bring the TFTP root in line with the database as ``session`` sees it; the number of files changed.

    Part of the caller's transaction and audit event (session start/stop, reconcile).
    """
    result, _count = await _write(core, session)
    return result.changed


async def render_boot_files(core: Core, actor: Actor) -> BootFilesReport:
    """``ggnet boot render``: write every boot file now."""
    async with operation(core, actor, Permission.MANAGE_SESSIONS, "boot.render") as op:
        result, count = await _write(core, op.session)
        root = str(tftp_root(core.settings))
        op.audit(
            "boot",
            None,
            root,
            after={"written": result.written, "removed": result.removed},
            detail=f"{len(result.written)} written, {len(result.removed)} removed, {result.unchanged} unchanged",
        )
        return BootFilesReport(root, count, result.written, result.removed, result.unchanged)


# --- dnsmasq -------------------------------------------------------------------


async def _hosts(session: AsyncSession) -> list[dnsmasq.Host]:
    rows = (
        await session.execute(select(Machine.name, Machine.mac, Machine.ip, Machine.boot_mode).order_by(Machine.name))
    ).all()
    return [dnsmasq.Host(name=r.name, mac=r.mac, ip=r.ip, boot_mode=r.boot_mode) for r in rows]


async def dnsmasq_config(core: Core, actor: Actor, **options: object) -> dnsmasq.Rendered:
    """The dnsmasq configuration for the registered machines (read-only), and the machines left out."""
    opts = dnsmasq.parse_options(tftp_root=tftp_root(core.settings), **options)
    async with reading(core, actor) as session:
        hosts = await _hosts(session)
    return dnsmasq.render_config(opts, hosts)


@dataclass(frozen=True)
class DnsmasqWritten:
    path: str
    machines: int
    tested: bool  # checked with ``dnsmasq --test`` (False when dnsmasq is not installed here)
    skipped: tuple[str, ...] = ()  # one sentence per machine left out, naming it


async def write_dnsmasq_config(core: Core, actor: Actor, output: Path, **options: object) -> DnsmasqWritten:
    """Write the configuration to ``output`` (atomically; a regular file or a new name in an existing
    directory), after ``dnsmasq --test`` accepted it. No transaction stays open meanwhile."""
    opts = dnsmasq.parse_options(tftp_root=tftp_root(core.settings), **options)
    await require(core, actor, Permission.MANAGE_SESSIONS, "boot.dnsmasq")
    async with reading(core, actor, Permission.MANAGE_SESSIONS) as session:
        hosts = await _hosts(session)
    rendered = dnsmasq.render_config(opts, hosts)
    tested = await dnsmasq.test_config(rendered.text)
    await asyncio.to_thread(dnsmasq.write_config, Path(output), rendered.text)
    async with operation(core, actor, Permission.MANAGE_SESSIONS, "boot.dnsmasq") as op:
        op.audit(
            "boot",
            None,
            str(output),
            after={"mode": opts.mode, "machines": rendered.machines, "skipped": rendered.skipped},
            detail=f"dnsmasq configuration ({opts.mode} mode) for {rendered.machines} machines"
            + (f", {len(rendered.skipped)} left out" if rendered.skipped else ""),
        )
    return DnsmasqWritten(str(output), rendered.machines, tested, tuple(rendered.skipped))
