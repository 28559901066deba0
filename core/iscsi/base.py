"""The protocol every target backend implements, with the same behaviour.

A target serves exactly one machine's writeback (a raw file) as one LUN, to exactly one
initiator IQN (its ACL), with that machine's CHAP credentials, on the configured portal.
Every call is idempotent: creating a target that already exists with the same spec, or
deleting one that is gone, succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class TargetSpec:
    iqn: str  # target IQN, e.g. iqn.2024-01.lan.ggnet:pc01
    backing_file: Path  # the machine's raw writeback
    initiator_iqn: str  # the only initiator allowed in
    chap_username: str
    chap_secret: str
    portal_host: str  # where the portal listens (GGNET_PORTAL)
    portal_port: int


@dataclass(frozen=True)
class InitiatorSession:
    initiator_iqn: str
    address: str | None  # the client's IP as the target sees it, when known


@dataclass
class ActualTarget:
    """What the target stack holds right now."""

    iqn: str
    lun: int | None
    backing_file: str | None
    acls: list[str] = field(default_factory=list)  # initiator IQNs allowed
    sessions: list[InitiatorSession] = field(default_factory=list)  # logged in now
    portals: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BackendHealth:
    ok: bool
    detail: str  # one sentence: "tgtd on control port 7 answers" / "no iSCSI target stack: ..."


class TargetBackend(Protocol):
    name: str  # "lio" or "tgt"
    lun: int  # the LUN clients address: 0 on LIO, 1 on tgt (tgtd keeps LUN 0 for its controller)

    async def health(self) -> BackendHealth: ...

    async def create_target(self, spec: TargetSpec) -> None:
        """Create (or make identical to ``spec``) the target, its LUN, ACL, CHAP and portal, then enable it."""

    async def delete_target(self, iqn: str) -> None:
        """Remove the target and everything under it; nothing happens if it does not exist."""

    async def list_targets(self) -> list[ActualTarget]:
        """Every target the stack holds (ggnet's and others'); callers filter by IQN base."""
