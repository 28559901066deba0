"""The dnsmasq configuration for the registered machines (DHCP and TFTP side of the boot).

The iPXE files themselves (``boot.ipxe`` in the TFTP root, each machine's script over HTTP) are
the engine's: see ``core.engine``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ..auth import Actor, Permission
from ..boot import dnsmasq
from ..config import Settings
from ..context import Core
from ..errors import Invalid
from ..models import Machine
from .base import operation, reading


def tftp_root(settings: Settings) -> Path:
    assert settings.tftp_root is not None  # derived from the data directory when unset
    return Path(settings.tftp_root)


# --- dnsmasq -------------------------------------------------------------------


async def _hosts(session: AsyncSession) -> list[dnsmasq.Host]:
    rows = (
        await session.execute(select(Machine.name, Machine.mac, Machine.ip, Machine.boot_mode).order_by(Machine.name))
    ).all()
    return [dnsmasq.Host(name=r.name, mac=r.mac, ip=r.ip, boot_mode=r.boot_mode) for r in rows]


async def dnsmasq_config(core: Core, actor: Actor, **options: object) -> str:
    """The dnsmasq configuration for the registered machines (read-only)."""
    opts = dnsmasq.parse_options(tftp_root=tftp_root(core.settings), **options)
    async with reading(core, actor) as session:
        hosts = await _hosts(session)
    return dnsmasq.render(opts, hosts)


@dataclass(frozen=True)
class DnsmasqWritten:
    path: str
    machines: int
    tested: bool  # checked with ``dnsmasq --test`` (False when dnsmasq is not installed here)


async def write_dnsmasq_config(core: Core, actor: Actor, output: Path, **options: object) -> DnsmasqWritten:
    """Write the configuration to ``output`` (atomically), after ``dnsmasq --test`` accepted it."""
    opts = dnsmasq.parse_options(tftp_root=tftp_root(core.settings), **options)
    async with operation(core, actor, Permission.MANAGE_SESSIONS, "boot.dnsmasq") as op:
        hosts = await _hosts(op.session)
        text = dnsmasq.render(opts, hosts)
        tested = await dnsmasq.test_config(text)
        try:
            await asyncio.to_thread(dnsmasq.write_config, Path(output), text)
        except OSError as exc:
            raise Invalid("output", f"cannot write {output}: {exc.strerror or exc}") from None
        op.audit(
            "boot",
            None,
            str(output),
            after={"mode": opts.mode, "machines": len(hosts)},
            detail=f"dnsmasq configuration ({opts.mode} mode) for {len(hosts)} machines",
        )
        return DnsmasqWritten(str(output), len(hosts), tested)
