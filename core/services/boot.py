"""The dnsmasq configuration for the registered machines (DHCP and TFTP side of the boot).

The iPXE files themselves (``boot.ipxe`` in the TFTP root, each machine's script over HTTP) are
the engine's: see ``core.engine``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..auth import Actor, Permission
from ..boot import dnsmasq
from ..config import Settings
from ..context import Core
from ..models import Machine
from .base import operation, reading, require


def tftp_root(settings: Settings) -> Path:
    assert settings.tftp_root is not None  # derived from the data directory when unset
    return Path(settings.tftp_root)


# --- dnsmasq -------------------------------------------------------------------


async def _hosts(session: AsyncSession) -> list[dnsmasq.Host]:
    rows = (
        await session.execute(select(Machine.name, Machine.mac, Machine.ip, Machine.boot_mode).order_by(Machine.name))
    ).all()
    return [dnsmasq.Host(name=r.name, mac=r.mac, ip=r.ip, boot_mode=r.boot_mode) for r in rows]


async def dnsmasq_config(core: Core, actor: Actor, **options: Any) -> dnsmasq.Rendered:
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


async def write_dnsmasq_config(core: Core, actor: Actor, output: Path, **options: Any) -> DnsmasqWritten:
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
