"""Wake machines over the LAN: one permission check and one audit event per request."""

from __future__ import annotations

from sqlalchemy import select

from ..auth import Actor, Permission
from ..context import Core
from ..errors import Invalid, NotFound
from ..models import Machine
from ..wol import parse_address, send_magic_packets
from .base import operation


async def wake(core: Core, actor: Actor, names: list[str]) -> list[str]:
    """Send a magic packet to each named machine; returns the names woken.

    The packets go out inside the operation, so a send failure leaves no audit event
    claiming a wake that never happened."""
    wanted = list(dict.fromkeys(str(n).strip().lower() for n in names if str(n).strip()))
    if not wanted:
        raise Invalid("machines", "name at least one machine to wake")
    address = core.settings.wol_address
    parse_address(address)  # a malformed setting is refused before anything else
    async with operation(core, actor, Permission.WAKE_MACHINES, "machine.wake") as op:
        rows = (await op.session.execute(select(Machine.name, Machine.mac).where(Machine.name.in_(wanted)))).all()
        found = {name: mac for name, mac in rows}
        missing = [n for n in wanted if n not in found]
        if missing:
            raise NotFound(f"no machine named {', '.join(repr(m) for m in missing)}")
        await send_magic_packets([found[n] for n in wanted], address)
        label = wanted[0] if len(wanted) == 1 else f"{len(wanted)} machines"
        op.audit("machine", None, label, None, {"woken": wanted, "address": address})
    return wanted
