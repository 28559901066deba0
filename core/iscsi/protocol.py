"""INTERIM (replaced by core/iscsi/base.py + diff.py from the iscsi branch): the multi-LUN target
protocol the engine is written against, and the one diff both backends share."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .base import BackendHealth, InitiatorSession


@dataclass(frozen=True)
class LunSpec:
    lun: int
    backing_file: Path


@dataclass(frozen=True)
class TargetSpec:
    iqn: str
    luns: tuple[LunSpec, ...]
    initiator_iqn: str
    chap_username: str
    chap_secret: str
    portal_host: str
    portal_port: int


@dataclass(frozen=True)
class LunIO:
    read_bytes: int
    written_bytes: int


@dataclass
class ObservedTarget:
    iqn: str
    luns: dict[int, str | None] = field(default_factory=dict)
    acls: list[str] = field(default_factory=list)
    chap_users: list[str] = field(default_factory=list)
    chap_secret: str | None = None
    portals: list[str] = field(default_factory=list)
    enabled: bool = True
    sessions: list[InitiatorSession] = field(default_factory=list)
    io: dict[int, LunIO] = field(default_factory=dict)


class TargetBackend(Protocol):
    name: str
    first_lun: int

    async def health(self) -> BackendHealth: ...

    async def observe(self, iqns: Collection[str] | None = None) -> dict[str, ObservedTarget]: ...

    async def apply(self, spec: TargetSpec, observed: ObservedTarget | None = None) -> list[str]: ...

    async def delete(self, iqn: str) -> None: ...

    async def verify_chap(self, spec: TargetSpec) -> bool | None: ...


def target_diff(observed: ObservedTarget | None, spec: TargetSpec) -> list[str]:
    if observed is None:
        return ["missing"]
    diffs: list[str] = []
    wanted = f"{spec.portal_host}:{spec.portal_port}"
    if wanted not in observed.portals and f"0.0.0.0:{spec.portal_port}" not in observed.portals:
        diffs.append("portal")
    if set(observed.luns) != {lun.lun for lun in spec.luns}:
        diffs.append("lun")
    elif any(
        observed.luns.get(lun.lun) is None
        or os.path.normpath(observed.luns[lun.lun] or "") != os.path.normpath(str(lun.backing_file))
        for lun in spec.luns
    ):
        diffs.append("backing_file")
    if [a.lower() for a in observed.acls] != [spec.initiator_iqn.lower()]:
        diffs.append("acl")
    if observed.chap_users != [spec.chap_username]:
        diffs.append("chap_user")
    elif observed.chap_secret is not None and observed.chap_secret != spec.chap_secret:
        diffs.append("chap_secret")
    if not observed.enabled:
        diffs.append("enabled")
    return diffs
