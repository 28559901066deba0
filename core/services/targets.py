"""What the target stack holds right now (``ggnet target list``): a read, for diagnosis. Screens
read the engine's recorded observations instead of asking the stack themselves."""

from __future__ import annotations

from sqlalchemy import select

from ..auth import Actor
from ..context import Core
from ..errors import BackendUnavailable
from ..models import CURRENT_BOOT_STATES, Boot
from .base import reading
from .views import View


class TargetView(View):
    iqn: str
    machine: str | None  # the machine whose current boot it serves
    owned: bool  # under ggnet's IQN base
    wanted: bool  # a current boot wants it (False on an owned target: the engine removes it)
    luns: dict[int, str | None]
    acls: list[str]
    initiators: list[str]  # logged in now
    addresses: list[str]


async def list_targets(core: Core, actor: Actor) -> list[TargetView]:
    from ..engine.prepare import owns
    from ..iscsi.select import select_backend

    async with reading(core, actor) as session:
        owners = dict(
            (
                await session.execute(
                    select(Boot.target_iqn, Boot.machine_name).where(
                        Boot.server == core.settings.server_name,
                        Boot.state.in_([s.value for s in CURRENT_BOOT_STATES]),
                    )
                )
            ).all()
        )
    backend, health = await select_backend(core.settings)
    if backend is None or not health.ok:
        raise BackendUnavailable(health.detail)
    observed = await backend.observe()
    owners_lower = {str(k).lower(): v for k, v in owners.items() if k}
    views = []
    for key, target in sorted(observed.items()):
        owner = owners_lower.get(key)
        views.append(
            TargetView(
                iqn=target.iqn,
                machine=owner,
                owned=owns(target.iqn, core.settings.iqn_base),
                wanted=owner is not None,
                luns=dict(target.luns),
                acls=list(target.acls),
                initiators=[s.initiator_iqn for s in target.sessions],
                addresses=[s.address for s in target.sessions if s.address],
            )
        )
    return views
