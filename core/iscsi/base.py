"""The protocol every target backend implements (LIO in lio.py, tgtd in tgt.py), with the same behaviour.

A target serves one machine: its system disk on the backend's first LUN, an optional game disk on the
next, exactly one initiator IQN in its ACL, that machine's CHAP user and secret, one portal.

The engine's loop, for both backends::

    view = await backend.observe()                         # a pass: one bulk read, keys lower-case
    drift = await find_drift(backend, spec, view.get(spec.iqn.lower()))  # core.iscsi.diff: names only
    if drift:
        changed = await backend.apply(spec, view.get(spec.iqn.lower()))  # only what differs, in place

``find_drift`` is ``target_diff`` (pure) plus a CHAP login probe where the stack cannot show its
secret (tgtd). On tgtd, ``observe([iqn])`` still reads tgtd's whole ``show`` (it has no per-target
one; about 7 µs per target in tgtd): the boot path should pass the pass's view to ``apply``.

Every call is idempotent and safe to interrupt at any line: a later ``apply`` completes what an
interrupted one began, a later ``delete`` finishes a half-done removal.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import Invalid


@dataclass(frozen=True)
class LunSpec:
    lun: int  # as the initiator addresses it: the backend's first_lun for the system disk
    backing_file: Path  # an absolute path: a raw file (or a block device)


@dataclass(frozen=True)
class TargetSpec:
    """What one machine's target must be."""

    iqn: str  # target IQN, e.g. iqn.2024-01.lan.ggnet:pc01
    luns: tuple[LunSpec, ...]  # system disk first, then the optional game disk
    initiator_iqn: str  # the only initiator allowed in
    chap_username: str
    chap_secret: str = field(repr=False)  # never in a repr, a log line or an argv
    portal_host: str  # where the portal listens (GGNET_PORTAL)
    portal_port: int


@dataclass(frozen=True)
class InitiatorSession:
    initiator_iqn: str
    address: str | None  # the client's IP as the target sees it, when known


@dataclass(frozen=True)
class LunIO:
    read_bytes: int
    written_bytes: int


@dataclass
class ObservedTarget:
    """What the target stack holds for one target, in the terms of ``TargetSpec``."""

    iqn: str
    luns: dict[int, str | None]  # LUN as initiators address it -> backing file, None when not a file
    acls: list[str]  # initiator names (or address rules, e.g. tgtd's "ALL") allowed in
    chap_users: list[str]  # incoming CHAP user names the target accepts
    chap_secret: str | None = field(repr=False)  # as the stack holds it (LIO); None when unreadable (tgtd)
    portals: list[str]  # "host:port" ("[v6]:port") the target is reachable on
    enabled: bool  # accepting logins: LIO TPG enabled, authentication on, never demo mode; tgtd state ready
    sessions: list[InitiatorSession] = field(default_factory=list)  # logged in now
    io: dict[int, LunIO] = field(default_factory=dict)  # LUN -> bytes moved; empty when the stack does not count


@dataclass(frozen=True)
class BackendHealth:
    ok: bool
    detail: str  # one sentence: "tgtd on control port 7 answers" / "no iSCSI target stack: ..."


class TargetBackend(Protocol):
    name: str  # "lio" or "tgt"
    first_lun: int  # the system disk's LUN: 0 on LIO, 1 on tgt (tgtd keeps LUN 0 for its controller)

    async def health(self) -> BackendHealth: ...

    async def observe(self, iqns: Collection[str] | None = None) -> dict[str, ObservedTarget]:
        """The targets the stack holds, keyed by lower-case IQN (ggnet's and others').

        ``None``: every target, in one cheap bulk read. A collection: only those (absent ones are
        simply not in the result), looked up directly rather than by listing everything."""
        ...

    async def apply(self, spec: TargetSpec, observed: ObservedTarget | None = None) -> list[str]:
        """Make the target exactly ``spec``: create it if absent, else change only what differs, in place
        (a CHAP or LUN change never deletes and recreates the target). While an ACL or CHAP change is
        under way no initiator can log in (fail closed). ``observed`` saves a read when the caller has
        a fresh one. Returns the ``target_diff`` names of what it changed ([] when nothing)."""
        ...

    async def delete(self, iqn: str) -> None:
        """Remove the target and the backstores/accounts ggnet made for it, also while an initiator
        is logged in and reading (its sessions are closed). Nothing happens if it does not exist."""
        ...

    async def unbound_accounts(self, users: Collection[str]) -> list[str]:
        """Those of ``users`` the stack holds as CHAP accounts that no target binds ([] on a stack whose
        accounts live inside a target, as LIO's do)."""
        ...

    async def delete_unbound_account(self, user: str, iqn: str) -> bool:
        """Delete CHAP account ``user`` unless a target binds it now; ``iqn`` is the target that would
        bind it (serialised with changes of that target). Whether it was deleted."""
        ...

    async def verify_chap(self, spec: TargetSpec) -> bool | None:
        """Whether the stack would accept ``spec``'s CHAP secret now; None when unnecessary because
        ``observe`` reads the secret (LIO)."""
        ...


# --------------------------------------------------------------------------- shared by both backends


def portal_text(host: str, port: int) -> str:
    """``host:port`` as the stacks print it: IPv6 in brackets."""
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_spec(spec: TargetSpec) -> None:
    """Refuse a spec no backend could serve, naming each field and its rule (before anything changes)."""
    problems: dict[str, str] = {}
    for name in ("iqn", "initiator_iqn", "chap_username"):
        value = getattr(spec, name) or ""
        if not value or any(c.isspace() or c == "," for c in value):
            problems[name] = "must be non-empty, without spaces or commas"
    if not spec.chap_secret or any(c.isspace() or c == "\0" for c in spec.chap_secret):
        problems["chap_secret"] = "must be non-empty, without spaces"
    if not spec.luns:
        problems["luns"] = "must name at least the system disk"
    numbers = [lun.lun for lun in spec.luns]
    if len(set(numbers)) != len(numbers) or any(not 0 <= n <= 255 for n in numbers):
        problems["luns"] = "must be distinct LUN numbers between 0 and 255"
    if any(not Path(lun.backing_file).is_absolute() or any(c in str(lun.backing_file) for c in ",\n\0")
           for lun in spec.luns):  # fmt: skip
        problems["luns.backing_file"] = "must be an absolute path without commas (the stacks split on them)"
    if not 0 < spec.portal_port < 65536:
        problems["portal_port"] = "must be a TCP port (1-65535)"
    if not spec.portal_host:
        problems["portal_host"] = "must be an address"
    if problems:
        raise Invalid(problems)
