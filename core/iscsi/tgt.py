"""The tgt backend: the userspace target daemon tgtd, driven over its management socket (tgtd_socket.py).

tgtd facts this relies on (tgt 1.0.x, Debian 12):

- A daemon is picked by its control port (``tgtd -C <port>``); targets are addressed by a numeric tid
  the caller chooses. LUN 0 is tgtd's own controller, so a machine's disks are LUN 1 and up.
- A target with no initiator bound refuses every login; with an account bound, CHAP is required —
  without one it is not, so the account must never go while an initiator is bound (fail closed: unbind
  the initiator first). Accounts and portals are global; an account is bound to targets.
- tgtd shows no password and cannot change one: a secret is checked by a login (``verify_chap``) and
  replaced by deleting and re-creating the account.
- ``show --mode target`` prints every target; there is no show of one target's LUNs or ACL, so
  ``observe(iqns)`` reads the whole text (tgtd writes it in C; only the wanted blocks are parsed here).
- Deleting a target whose LUN has commands in flight fails with "this logical unit is still active",
  also with ``--force``: tgtd destroys the LUNs before it closes the connections
  (tgt_target_destroy in usr/target.c). ``delete`` therefore shuts the door first: unbind the
  initiators, set the target offline (new commands get BUSY), close every connection, then delete,
  retrying while the last commands drain.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BackendUnavailable, NotFound
from ..log import get_logger
from .base import (
    BackendHealth,
    InitiatorSession,
    LunIO,
    ObservedTarget,
    TargetSpec,
    check_spec,
    portal_text,
)
from .diff import FIELDS, portal_covered, target_diff
from .login_probe import chap_accepted
from .tgtd_socket import Err, Mode, Op, Request, TgtdClient, TgtdRefused, params

log = get_logger("ggnet.iscsi.tgt")

DISK_LUN = 1
DELETE_DRAIN_SECONDS = 10.0  # how long delete waits for a logged-in client's last commands
ABSENT_TRUST_SECONDS = 10.0  # a target missing from a show this recent is created without reading again


# --------------------------------------------------------------------------- parsing (pure)


@dataclass
class TgtLun:
    lun: int
    type: str | None = None
    backing_file: str | None = None


@dataclass
class TgtNexus:
    """One I_T nexus (an iSCSI session): its id is the session's TSIH, tgtadm's ``--sid``."""

    sid: int
    initiator: str | None = None
    address: str | None = None


@dataclass
class TgtTarget:
    """One target as ``show --mode target`` prints it."""

    tid: int
    iqn: str
    state: str | None = None  # "ready" or "offline"
    luns: list[TgtLun] = field(default_factory=list)
    nexuses: list[TgtNexus] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)  # incoming CHAP users bound to the target
    acls: list[str] = field(default_factory=list)  # initiator names or addresses allowed

    @property
    def disk(self) -> TgtLun | None:
        """The first LUN that is not tgtd's controller (LUN 0)."""
        return next((lun for lun in self.luns if lun.lun != 0), None)

    @property
    def sessions(self) -> list[InitiatorSession]:
        return [InitiatorSession(n.initiator, n.address) for n in self.nexuses if n.initiator]


_TARGET_LINE = re.compile(r"^Target (\d+): (\S+)\s*$")
_TARGET_HEAD = re.compile(r"^(\d+): (\S+)\s*$")  # a "Target " line without its first word
_SECTIONS = {
    "System information:": "system",
    "I_T nexus information:": "nexus",
    "LUN information:": "lun",
    "Account information:": "account",
    "ACL information:": "acl",
}


def parse_show_target(text: str) -> list[TgtTarget]:
    """Parse ``tgtadm --lld iscsi --op show --mode target`` (the same text over the socket)."""
    targets: list[TgtTarget] = []
    target: TgtTarget | None = None
    section = ""
    nexus: TgtNexus | None = None
    lun: TgtLun | None = None

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        match = _TARGET_LINE.match(raw)
        if match:
            target = TgtTarget(int(match.group(1)), match.group(2))
            targets.append(target)
            section = ""
            continue
        if target is None:
            continue
        if line in _SECTIONS:
            section = _SECTIONS[line]
            continue
        key, _, value = line.partition(":")
        value = value.strip()
        if section == "system":
            if key == "State":
                target.state = value
        elif section == "nexus":
            if key == "I_T nexus":
                nexus = TgtNexus(int(value))
                target.nexuses.append(nexus)
            elif nexus is not None and key == "Initiator":
                nexus.initiator = value.split()[0] if value else None  # "iqn... alias: none"
            elif nexus is not None and key == "IP Address" and nexus.address is None:
                nexus.address = value or None
        elif section == "lun":
            if key == "LUN":
                lun = TgtLun(int(value))
                target.luns.append(lun)
            elif lun is not None and key == "Type":
                lun.type = value
            elif lun is not None and key == "Backing store path":
                lun.backing_file = None if value in ("", "None") else value
        elif section == "account":
            if not line.endswith("(outgoing)"):  # outgoing (mutual CHAP) accounts do not admit initiators
                target.accounts.append(line.split()[0])
        elif section == "acl":
            target.acls.append(line)
    return targets


def split_targets(text: str) -> dict[str, tuple[int, str]]:
    """Lower-case IQN -> (tid, its block of text) for every target of a whole ``show`` text, without
    parsing the blocks (the text grows with the fleet; a caller parses only the blocks it wants)."""
    blocks: dict[str, tuple[int, str]] = {}
    for block in ("\n" + text).split("\nTarget ")[1:]:
        head, _, _ = block.partition("\n")
        match = _TARGET_HEAD.match(head)
        if match:
            blocks[match.group(2).lower()] = (int(match.group(1)), "Target " + block)
    return blocks


def parse_show_portal(text: str) -> list[str]:
    """Parse ``show --mode portal``: ``Portal: 127.0.0.1:3260,1`` → ``127.0.0.1:3260``."""
    portals = []
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Portal" and value.strip():
            portals.append(value.strip().rsplit(",", 1)[0])
    return portals


def parse_show_connections(text: str) -> list[tuple[int, int]]:
    """Parse ``show --mode conn --tid N``: (sid, cid) of every connection of the target."""
    found: list[tuple[int, int]] = []
    sid: int | None = None
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Session" and value.strip().isdigit():
            sid = int(value)
        elif key == "Connection" and sid is not None and value.strip().isdigit():
            found.append((sid, int(value)))
    return found


def parse_stats(text: str) -> dict[tuple[int, int], LunIO]:
    """Parse ``stat --mode target|system``: (tid, lun) -> bytes read and written, summed over the
    sessions logged in now (tgtd counts per I_T nexus and forgets a session's counts at logout).

    Line: ``tid lun sid rd_subm_bytes rd_subm_cmds rd_done_bytes rd_done_cmds wr_subm_bytes
    wr_subm_cmds wr_done_bytes wr_done_cmds errs``."""
    totals: dict[tuple[int, int], LunIO] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 12 or not all(p.isdigit() for p in parts):
            continue
        key = (int(parts[0]), int(parts[1]))
        before = totals.get(key, LunIO(0, 0))
        totals[key] = LunIO(before.read_bytes + int(parts[5]), before.written_bytes + int(parts[9]))
    return totals


def parse_show_account(text: str) -> list[str]:
    """``show --mode account``: a heading, then one user name per line."""
    return [line.split()[0] for line in text.splitlines()[1:] if line.strip()]


def to_observed(target: TgtTarget, portals: list[str], io: dict[tuple[int, int], LunIO]) -> ObservedTarget:
    disks = {lun.lun: lun.backing_file for lun in target.luns if lun.lun != 0}  # LUN 0: tgtd's controller
    return ObservedTarget(
        iqn=target.iqn,
        luns=disks,
        acls=list(target.acls),
        chap_users=list(target.accounts),
        chap_secret=None,  # tgtd never shows it: verify_chap
        portals=list(portals),  # tgtd's portals are global: every target is reachable on each
        enabled=target.state == "ready",
        sessions=target.sessions,
        io={n: io.get((target.tid, n), LunIO(0, 0)) for n in disks},
    )


# --------------------------------------------------------------------------- the backend


class TgtBackend:
    name = "tgt"
    first_lun = DISK_LUN

    def __init__(self, control_port: int, timeout: float = 10.0) -> None:
        self.control_port = control_port
        self.tgtd = TgtdClient(control_port, timeout)
        self._locks: dict[str, asyncio.Lock] = {}  # per IQN: one change of a target at a time
        self._tid_lock = asyncio.Lock()  # tids are chosen by the caller: one choice at a time
        self._tids: dict[str, int] = {}  # lower-case IQN -> tid, from the latest show
        self._show_lock = asyncio.Lock()
        self._reads_started = 0
        self._last_read: tuple[int, dict[str, tuple[int, str]]] = (0, {})
        self._last_read_at = float("-inf")  # loop time of the latest show
        self._portals_seen: list[str] | None = None  # from the latest show of the portals

    def _lock(self, iqn: str) -> asyncio.Lock:
        return self._locks.setdefault(iqn.lower(), asyncio.Lock())

    async def _call(self, mode: Mode, op: Op, **fields: object) -> str:
        return await self.tgtd.request(Request(mode, op, **fields))  # type: ignore[arg-type]

    async def _ok_if(self, codes: Collection[Err], mode: Mode, op: Op, **fields: object) -> bool:
        """Like _call, but an expected refusal (e.g. "already gone") is fine; returns whether it acted."""
        try:
            await self._call(mode, op, **fields)
            return True
        except TgtdRefused as exc:
            if exc.code in codes:
                return False
            raise

    # -- reading

    async def _show(self) -> dict[str, tuple[int, str]]:
        """Every target's block of a ``show`` that began after the call: callers that wait at the same
        time share one (tgtd writes the whole text, ~6 µs per target, on its only thread)."""
        wanted = self._reads_started + 1
        async with self._show_lock:
            if self._last_read[0] < wanted:
                self._reads_started += 1
                started = self._reads_started
                blocks = split_targets(await self._call(Mode.TARGET, Op.SHOW))
                self._last_read = (started, blocks)
                self._last_read_at = asyncio.get_running_loop().time()
                self._tids = {iqn: tid for iqn, (tid, _) in blocks.items()}
            return self._last_read[1]

    async def _read(self, iqns: Collection[str] | None) -> dict[str, TgtTarget]:
        blocks = await self._show()
        chosen = blocks.values() if iqns is None else [blocks[i.lower()] for i in iqns if i.lower() in blocks]
        targets = [t for _, block in chosen for t in parse_show_target(block)]
        return {t.iqn.lower(): t for t in targets}

    async def _portals(self) -> list[str]:
        self._portals_seen = parse_show_portal(await self._call(Mode.PORTAL, Op.SHOW))
        return self._portals_seen

    async def _io(self, tids: list[int] | None) -> dict[tuple[int, int], LunIO]:
        if tids is None:
            return parse_stats(await self._call(Mode.SYSTEM, Op.STATS))
        io: dict[tuple[int, int], LunIO] = {}
        for tid in tids:
            try:
                io.update(parse_stats(await self._call(Mode.TARGET, Op.STATS, tid=tid)))
            except TgtdRefused as exc:
                if exc.code != Err.NO_TARGET:  # deleted meanwhile
                    raise
        return io

    # -- the protocol

    async def health(self) -> BackendHealth:
        try:
            await self._call(Mode.SYSTEM, Op.SHOW)
        except BackendUnavailable as exc:
            return BackendHealth(
                False,
                f"{exc.message}; start it with `systemctl start tgt` (or `tgtd -C {self.control_port}`), "
                "or set GGNET_TGT_CONTROL_PORT to the port it uses",
            )
        return BackendHealth(True, f"tgtd answers on control port {self.control_port}")

    async def observe(self, iqns: Collection[str] | None = None) -> dict[str, ObservedTarget]:
        targets = await self._read(iqns)
        portals = await self._portals()
        # one system-wide stats request beats one per target beyond a few (the engine's login watch asks
        # for every target answered in a boot storm)
        tids = None if iqns is None or len(targets) > 4 else [t.tid for t in targets.values()]
        io = await self._io(tids)
        return {key: to_observed(t, portals, io) for key, t in targets.items()}

    async def verify_chap(self, spec: TargetSpec) -> bool | None:
        return await chap_accepted(spec.portal_host, spec.portal_port, spec.iqn, spec.initiator_iqn,
                                   spec.chap_username, spec.chap_secret)  # fmt: skip

    async def apply(self, spec: TargetSpec, observed: ObservedTarget | None = None) -> list[str]:
        """See ``TargetBackend.apply``. With ``observed`` (the engine's last pass) no show is read: the
        target's tid comes from this backend's latest read, and a refusal from tgtd (the view was stale)
        makes it read and start over. Without, one ``show`` of tgtd (shared with concurrent callers) —
        unless a show of the last ABSENT_TRUST_SECONDS lacked the target: then it is created at once
        (tgtd refuses a second target of the same name, so a stale show costs a read, nothing more).
        The whole show grows with the fleet: reading it before each of 300 creations was a third of
        a pass after tgtd restarted."""
        check_spec(spec)
        for lun in spec.luns:  # before anything changes
            if not Path(lun.backing_file).exists():
                raise NotFound(f"writeback {lun.backing_file} does not exist; cannot serve target {spec.iqn}")
        async with self._lock(spec.iqn):
            tid = self._tids.get(spec.iqn.lower()) if observed is not None else None
            if tid is not None and observed is not None:
                try:
                    return await self._apply(spec, tid, observed)
                except TgtdRefused as exc:  # the caller's view was stale: read and try again
                    log.info("tgt_apply_retry", iqn=spec.iqn, reason=exc.reason)
            recent = asyncio.get_running_loop().time() - self._last_read_at < ABSENT_TRUST_SECONDS
            if observed is None and recent and spec.iqn.lower() not in self._tids:
                made = await self._create(spec)
                if made is not None:
                    return made
            current = (await self._read([spec.iqn])).get(spec.iqn.lower())
            if current is None:
                made = await self._create(spec)
                if made is not None:
                    return made
                current = (await self._read([spec.iqn])).get(spec.iqn.lower())  # made by someone else meanwhile
                if current is None:
                    raise BackendUnavailable(f"tgtd neither creates nor shows target {spec.iqn}")
            return await self._apply(spec, current.tid, to_observed(current, await self._portals(), {}))

    async def _create(self, spec: TargetSpec) -> list[str] | None:
        """Make the target; None (nothing done) when tgtd already has one of that name."""
        tid = await self._new_target(spec.iqn)
        if tid is None:
            return None
        portals = self._portals_seen if self._portals_seen is not None else await self._portals()
        empty = ObservedTarget(spec.iqn, {}, [], [], None, portals, True)
        try:
            await self._apply(spec, tid, empty, created=True)
        except BaseException:
            # leave nothing half-made (an interrupted run leaves a target without ACL: closed to all,
            # and the next apply completes it)
            await self._undo_new(tid, spec.chap_username)
            raise
        log.info("tgt_target_created", iqn=spec.iqn, tid=tid, initiator=spec.initiator_iqn,
                 luns=[lun.lun for lun in spec.luns])  # fmt: skip
        return ["missing"]

    async def _apply(self, spec: TargetSpec, tid: int, observed: ObservedTarget, created: bool = False) -> list[str]:
        """Change what differs, in an order that never opens the target wider than either end state."""
        diffs = set(target_diff(observed, spec))
        if "portal" in diffs:
            await self._ensure_portal(spec.portal_host, spec.portal_port)
        closing = bool(diffs & {"acl", "chap_user", "chap_secret"})
        if closing:  # fail closed: with no initiator bound tgtd refuses every login
            for acl in observed.acls:
                await self._ok_if((Err.ACL_NOEXIST,), Mode.TARGET, Op.UNBIND, tid=tid, body=_acl_param(acl))
        if diffs & {"lun", "backing_file"}:
            await self._ensure_luns(tid, spec, observed.luns)
        if closing:
            for user in observed.chap_users:
                if user != spec.chap_username:
                    await self._ok_if((Err.NO_USER,), Mode.ACCOUNT, Op.UNBIND, tid=tid, body=params(user=user))
            await self._set_account(tid, spec, bound_here=spec.chap_username in observed.chap_users)
            await self._call(Mode.TARGET, Op.BIND, tid=tid, body=params(initiator_name=spec.initiator_iqn))
        if "enabled" in diffs:
            await self._call(Mode.TARGET, Op.UPDATE, tid=tid, body=params(name="state", value="ready"))
        if not closing and not created and observed.chap_secret is None and not await self.verify_chap(spec):
            # the secret differs: replace it behind a closed door
            await self._ok_if((Err.ACL_NOEXIST,), Mode.TARGET, Op.UNBIND, tid=tid,
                              body=params(initiator_name=spec.initiator_iqn))  # fmt: skip
            await self._set_account(tid, spec)
            await self._call(Mode.TARGET, Op.BIND, tid=tid, body=params(initiator_name=spec.initiator_iqn))
            diffs.add("chap_secret")
        changed = [f for f in FIELDS if f in diffs]
        if changed and not created:
            log.info("tgt_target_changed", iqn=spec.iqn, tid=tid, changed=changed)
        return changed

    async def _set_account(self, tid: int, spec: TargetSpec, bound_here: bool = True) -> None:
        """(Re)create the spec's account with its secret and bind it: tgtd cannot change a password.
        ``bound_here``: the account is bound to this target (it surely exists: delete it first);
        otherwise it is usually new, and deleted only when tgtd says it exists."""
        new = (Mode.ACCOUNT, Op.NEW)
        password = params(user=spec.chap_username, password=spec.chap_secret)
        if bound_here or not await self._ok_if((Err.USER_EXIST,), *new, body=password):
            await self._ok_if((Err.NO_USER,), Mode.ACCOUNT, Op.DELETE, body=params(user=spec.chap_username))
            await self._call(*new, body=password)
        await self._call(Mode.ACCOUNT, Op.BIND, tid=tid, body=params(user=spec.chap_username))

    async def _ensure_luns(self, tid: int, spec: TargetSpec, current: dict[int, str | None]) -> None:
        wanted = {lun.lun: os.path.normpath(lun.backing_file) for lun in spec.luns}
        keep = {n for n, path in current.items() if path is not None and os.path.normpath(path) == wanted.get(n)}
        for number in sorted(set(current) - keep):
            await self._delete_lun(tid, number)
        for number, path in sorted(wanted.items()):
            if number not in keep:
                await self._new_lun(tid, number, path)

    async def _new_lun(self, tid: int, number: int, path: str) -> None:
        try:
            await self._call(Mode.DEVICE, Op.NEW, tid=tid, lun=number, body=params(path=path, bstype="rdwr"))
        except TgtdRefused as exc:  # tgtd only says "invalid request"; the details go to its log
            if exc.code == Err.LUN_EXIST:
                raise
            raise BackendUnavailable(
                f"tgtd cannot serve {path} as LUN {number} ({exc.reason}): it could not open the file "
                "read-write; tgtd's log says why"
            ) from None

    async def _delete_lun(self, tid: int, number: int) -> None:
        try:
            await self._ok_if((Err.NO_LUN,), Mode.DEVICE, Op.DELETE, tid=tid, lun=number)
        except TgtdRefused as exc:
            if exc.code == Err.LUN_ACTIVE:
                raise BackendUnavailable(
                    f"tgtd cannot swap LUN {number} of target {tid}: a logged-in client is using it"
                ) from None
            raise

    async def _new_target(self, iqn: str) -> int | None:
        """Create the target under the lowest free tid (another tgtd user may race us: retry); None
        when tgtd has a target of that name already (it is not ours to fill as new)."""
        async with self._tid_lock:
            for _ in range(100):
                used = set(self._tids.values())
                tid = next(t for t in range(1, len(used) + 2) if t not in used)
                try:
                    await self._call(Mode.TARGET, Op.NEW, tid=tid, body=params(targetname=iqn))
                    self._tids[iqn.lower()] = tid
                    return tid
                except TgtdRefused as exc:
                    if exc.code != Err.TARGET_EXIST:
                        raise
                await self._show()  # the tid or the IQN appeared meanwhile: look again
                if iqn.lower() in self._tids:
                    return None
        raise BackendUnavailable(f"could not find a free tid on tgtd (control port {self.control_port})")

    async def _undo_new(self, tid: int, chap_username: str) -> None:
        try:
            await self._ok_if((Err.NO_TARGET,), Mode.TARGET, Op.DELETE, tid=tid, force=True)
            await self._ok_if((Err.NO_USER,), Mode.ACCOUNT, Op.DELETE, body=params(user=chap_username))
        except BackendUnavailable as exc:  # the original error matters more
            log.warning("tgt_undo_failed", tid=tid, error=exc.message)

    async def unbound_accounts(self, users: Collection[str]) -> list[str]:
        """See ``TargetBackend.unbound_accounts``: tgtd keeps accounts globally, so a process killed
        between making an account and binding it (or between deleting a target and its account) leaves
        one behind. One account show; the targets are read only when one of ``users`` is there."""
        wanted = set(users)
        held = [u for u in parse_show_account(await self._call(Mode.ACCOUNT, Op.SHOW)) if u in wanted]
        if not held:
            return []
        blocks = await self._show()
        return [u for u in held if not _bound(blocks, u)]

    async def delete_unbound_account(self, user: str, iqn: str) -> bool:
        """See ``TargetBackend.delete_unbound_account``."""
        async with self._lock(iqn):  # an apply of that target binds the account under this lock
            if _bound(await self._show(), user):
                return False
            return await self._ok_if((Err.NO_USER,), Mode.ACCOUNT, Op.DELETE, body=params(user=user))

    async def _ensure_portal(self, host: str, port: int) -> None:
        if portal_covered(await self._portals(), host, port):
            return
        portal = portal_text(host, port)
        try:
            await self._call(Mode.PORTAL, Op.NEW, body=params(portal=portal))
        except TgtdRefused as exc:
            if portal_covered(await self._portals(), host, port):
                return  # added meanwhile by someone else
            raise BackendUnavailable(
                f"tgtd cannot listen on {portal} (GGNET_PORTAL): {exc.reason}; is the address local and the port free?"
            ) from None

    async def delete(self, iqn: str) -> None:
        async with self._lock(iqn):
            blocks = await self._show()
            if iqn.lower() not in blocks:
                return
            [target] = parse_show_target(blocks[iqn.lower()][1])
            tid = target.tid
            # shut the door: no new logins, no new commands, no connections
            for acl in target.acls:
                await self._ok_if((Err.ACL_NOEXIST,), Mode.TARGET, Op.UNBIND, tid=tid, body=_acl_param(acl))
            await self._ok_if((Err.NO_TARGET,), Mode.TARGET, Op.UPDATE, tid=tid,
                              body=params(name="state", value="offline"))  # fmt: skip
            await self._close_connections(tid)
            # its accounts, unless another target uses them too (tgtd unbinds an account it deletes)
            for user in target.accounts:
                if not _bound(blocks, user, besides=iqn):
                    await self._ok_if((Err.NO_USER,), Mode.ACCOUNT, Op.DELETE, body=params(user=user))
            await self._delete_target(tid)
        self._tids.pop(iqn.lower(), None)
        log.info("tgt_target_deleted", iqn=iqn, tid=tid, sessions=len(target.nexuses))

    async def _close_connections(self, tid: int) -> None:
        try:
            connections = parse_show_connections(await self._call(Mode.CONNECTION, Op.SHOW, tid=tid))
        except TgtdRefused as exc:
            if exc.code == Err.NO_TARGET:
                return
            raise
        for sid, cid in connections:
            await self._ok_if((Err.NO_SESSION, Err.NO_CONNECTION, Err.NO_TARGET), Mode.CONNECTION, Op.DELETE,
                              tid=tid, sid=sid, cid=cid)  # fmt: skip

    async def _delete_target(self, tid: int) -> None:
        """Delete with --force, waiting while the commands already in flight finish (LUN still active)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DELETE_DRAIN_SECONDS
        pause = 0.005
        while True:
            try:
                await self._ok_if((Err.NO_TARGET,), Mode.TARGET, Op.DELETE, tid=tid, force=True)
                return
            except TgtdRefused as exc:
                if exc.code not in (Err.LUN_ACTIVE, Err.TARGET_ACTIVE) or loop.time() > deadline:
                    raise
            await self._close_connections(tid)  # a client that reconnected meanwhile
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)


def _bound(blocks: dict[str, tuple[int, str]], user: str, besides: str = "") -> bool:
    """Is account ``user`` bound to a target (other than ``besides``)? Only blocks naming it are parsed."""
    line = f"\n        {user}\n"  # an entry of "Account information:" (or, rarely, an ACL line)
    return any(
        user in t.accounts
        for other, (_, block) in blocks.items()
        if other != besides.lower() and line in block
        for t in parse_show_target(block)
    )


def _acl_param(acl: str) -> str:
    """An ACL line is an initiator name (IQN/EUI/NAA) or an address rule such as ALL or 10.0.0.0/8."""
    if acl.lower().startswith(("iqn.", "eui.", "naa.")):
        return params(initiator_name=acl)
    return params(initiator_address=acl)
