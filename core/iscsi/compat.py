"""INTERIM adapter (removed when the iscsi branch lands): the old single-LUN backends behind the
engine's protocol. apply() recreates a differing target instead of changing it in place."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from .base import BackendHealth
from .base import TargetSpec as OldSpec
from .protocol import ObservedTarget, TargetSpec


class Adapter:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.first_lun = inner.lun
        self._secrets: dict[str, str] = {}  # what we last set (tgtd cannot show a secret)

    async def health(self) -> BackendHealth:
        return await self.inner.health()  # type: ignore[no-any-return]

    async def observe(self, iqns: Collection[str] | None = None) -> dict[str, ObservedTarget]:
        wanted = {i.lower() for i in iqns} if iqns is not None else None
        found: dict[str, ObservedTarget] = {}
        for t in await self.inner.list_targets():
            key = t.iqn.lower()
            if wanted is not None and key not in wanted:
                continue
            chap_users = list(getattr(t, "chap_users", None) or [])
            found[key] = ObservedTarget(
                iqn=t.iqn,
                luns={t.lun: t.backing_file} if t.lun is not None else {},
                acls=list(t.acls),
                chap_users=chap_users or [self._users.get(key, "")],
                chap_secret=None,
                portals=list(t.portals),
                enabled=True,
                sessions=list(t.sessions),
            )
        return found

    _users: dict[str, str] = {}  # noqa: RUF012

    async def apply(self, spec: TargetSpec, observed: ObservedTarget | None = None) -> list[str]:
        from .protocol import target_diff

        diffs = target_diff(observed, spec)
        if self._secrets.get(spec.iqn.lower()) != spec.chap_secret and "missing" not in diffs:
            diffs.append("chap_secret")
        if not diffs:
            return []
        if observed is not None:
            await self.inner.delete_target(spec.iqn)
        lun = spec.luns[0]
        await self.inner.create_target(
            OldSpec(
                iqn=spec.iqn,
                backing_file=lun.backing_file,
                initiator_iqn=spec.initiator_iqn,
                chap_username=spec.chap_username,
                chap_secret=spec.chap_secret,
                portal_host=spec.portal_host,
                portal_port=spec.portal_port,
            )
        )
        self._secrets[spec.iqn.lower()] = spec.chap_secret
        Adapter._users[spec.iqn.lower()] = spec.chap_username
        return diffs

    async def delete(self, iqn: str) -> None:
        await self.inner.delete_target(iqn)
        self._secrets.pop(iqn.lower(), None)

    async def verify_chap(self, spec: TargetSpec) -> bool | None:
        return None
