"""The tgt backend: the userspace target daemon tgtd, driven with tgtadm on a control port.

tgtadm facts this relies on (tgt 1.0.x, Debian 12):

- ``-C <port>`` picks the daemon (its socket ``/var/run/tgtd/socket.<port>``); without a
  running daemon tgtadm exits 107 ("failed to send request hdr to tgt daemon").
- Targets are addressed by a numeric tid the caller chooses; LUN 0 is tgtd's own controller,
  so the machine's disk is LUN 1.
- A target with no initiator bound refuses every login; with an account bound, CHAP is required.
  Accounts are global (unique names) and bound to targets. Portals are global too.
- Every refusal is exit status 22 with a one-line reason on stderr ("this target already exists",
  "can't find the account", ...), which becomes the error message here.
- Passwords can only be given on tgtadm's command line; they are never logged.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BackendUnavailable, Conflict, Invalid, NotFound
from ..log import get_logger
from .base import ActualTarget, BackendHealth, InitiatorSession, TargetSpec

log = get_logger("ggnet.iscsi.tgt")

DISK_LUN = 1
_NO_DAEMON = 107  # tgtadm: "Transport endpoint is not connected"
_NAME = re.compile(r"^[^\s]+$")  # IQNs and account names: no whitespace (tgtadm output is line-based)


# --------------------------------------------------------------------------- parsing (pure)


@dataclass
class TgtLun:
    lun: int
    type: str | None = None
    backing_file: str | None = None


@dataclass
class TgtTarget:
    """One target as ``tgtadm --op show --mode target`` prints it."""

    tid: int
    iqn: str
    luns: list[TgtLun] = field(default_factory=list)
    sessions: list[InitiatorSession] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)  # incoming CHAP users bound to the target
    acls: list[str] = field(default_factory=list)  # initiator names or addresses allowed

    @property
    def disk(self) -> TgtLun | None:
        """The first LUN that is not tgtd's controller (LUN 0)."""
        return next((lun for lun in self.luns if lun.lun != 0), None)


_TARGET_LINE = re.compile(r"^Target (\d+): (\S+)\s*$")
_SECTIONS = {
    "System information:": "system",
    "I_T nexus information:": "nexus",
    "LUN information:": "lun",
    "Account information:": "account",
    "ACL information:": "acl",
}


def parse_show_target(text: str) -> list[TgtTarget]:
    """Parse ``tgtadm --lld iscsi --op show --mode target``."""
    targets: list[TgtTarget] = []
    target: TgtTarget | None = None
    section = ""
    initiator: str | None = None  # of the I_T nexus being read
    address: str | None = None
    lun: TgtLun | None = None

    def close_nexus() -> None:
        nonlocal initiator, address
        if target is not None and initiator is not None:
            target.sessions.append(InitiatorSession(initiator, address))
        initiator = address = None

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        match = _TARGET_LINE.match(raw)
        if match:
            close_nexus()
            target = TgtTarget(int(match.group(1)), match.group(2))
            targets.append(target)
            section = ""
            continue
        if target is None:
            continue
        if line in _SECTIONS:
            close_nexus()
            section = _SECTIONS[line]
            continue
        key, _, value = line.partition(":")
        value = value.strip()
        if section == "nexus":
            if key == "I_T nexus":
                close_nexus()
            elif key == "Initiator":
                initiator = value.split()[0] if value else None  # "iqn... alias: none"
            elif key == "IP Address" and address is None:
                address = value or None
        elif section == "lun":
            if key == "LUN":
                lun = TgtLun(int(value))
                target.luns.append(lun)
            elif lun is not None and key == "Type":
                lun.type = value
            elif lun is not None and key == "Backing store path":
                lun.backing_file = None if value in ("", "None") else value
        elif section == "account":
            target.accounts.append(line.split()[0])  # "name" or "name (outgoing)"
            if line.endswith("(outgoing)"):
                target.accounts.pop()  # outgoing (mutual CHAP) accounts are not ours to list
        elif section == "acl":
            target.acls.append(line)
    close_nexus()
    return targets


def parse_show_portal(text: str) -> list[str]:
    """Parse ``tgtadm --lld iscsi --op show --mode portal``: ``Portal: 127.0.0.1:3260,1`` → ``127.0.0.1:3260``."""
    portals = []
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Portal" and value.strip():
            portals.append(value.strip().rsplit(",", 1)[0])
    return portals


def to_actual(target: TgtTarget, portals: list[str]) -> ActualTarget:
    disk = target.disk
    return ActualTarget(
        iqn=target.iqn,
        lun=disk.lun if disk else None,
        backing_file=disk.backing_file if disk else None,
        acls=list(target.acls),
        sessions=list(target.sessions),
        portals=list(portals),
    )


def _portal_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def portal_covered(portals: list[str], host: str, port: int) -> bool:
    """Does tgtd already listen where ``host:port`` would (the same address, or a wildcard on the port)?"""
    wanted = _portal_text(host, port)
    wildcards = {f"0.0.0.0:{port}", f"[::]:{port}"}
    return wanted in portals or bool(wildcards & set(portals))


# --------------------------------------------------------------------------- the backend


class TgtadmError(BackendUnavailable):
    """tgtadm refused a request; ``reason`` is its stderr line."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class TgtBackend:
    name = "tgt"
    lun = DISK_LUN

    def __init__(self, control_port: int, tgtadm: str = "tgtadm", timeout: float = 10.0) -> None:
        self.control_port = control_port
        self.tgtadm = tgtadm
        self.timeout = timeout
        self._lock = asyncio.Lock()  # one change at a time from this process (tid allocation)

    # -- running tgtadm

    async def _run(self, *args: str, secret: bool = False) -> str:
        """Run ``tgtadm -C <port> --lld iscsi <args>``; return stdout or raise with its stderr."""
        argv = [self.tgtadm, "-C", str(self.control_port), "--lld", "iscsi", *args]
        shown = " ".join(args[:4])  # "--op new --mode account": never the password
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            raise BackendUnavailable(f"{self.tgtadm} is not installed (Debian package: tgt)") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            raise BackendUnavailable(
                f"tgtd on control port {self.control_port} did not answer within {self.timeout:g} s ({shown})"
            ) from None
        finally:
            if proc.returncode is None:  # timed out or cancelled: leave no tgtadm behind
                proc.kill()
                await proc.wait()
        reason = err.decode(errors="replace").strip().removeprefix("tgtadm: ").strip()
        if proc.returncode == 0:
            return out.decode(errors="replace")
        log.info("tgtadm_refused", args=shown if secret else " ".join(args), rc=proc.returncode, reason=reason)
        if proc.returncode == _NO_DAEMON or "tgt daemon" in reason:
            raise BackendUnavailable(
                f"tgtd does not answer on control port {self.control_port}: {reason or 'no daemon'}"
            )
        raise TgtadmError(f"tgtadm {shown} refused: {reason or f'exit status {proc.returncode}'}", reason)

    async def _run_ok_if(self, ok_reasons: tuple[str, ...], *args: str) -> bool:
        """Like _run, but an expected refusal (e.g. "already exists") is success; returns whether it changed."""
        try:
            await self._run(*args)
            return True
        except TgtadmError as exc:
            if any(text in exc.reason for text in ok_reasons):
                return False
            raise

    async def _targets(self) -> list[TgtTarget]:
        return parse_show_target(await self._run("--op", "show", "--mode", "target"))

    async def _portals(self) -> list[str]:
        return parse_show_portal(await self._run("--op", "show", "--mode", "portal"))

    # -- the protocol

    async def health(self) -> BackendHealth:
        try:
            await self._run("--op", "show", "--mode", "system")
        except BackendUnavailable as exc:
            if not isinstance(exc, TgtadmError) and "not installed" in exc.message:
                return BackendHealth(False, exc.message)
            return BackendHealth(
                False,
                f"{exc.message}; start it with `systemctl start tgt` (or `tgtd -C {self.control_port}`), "
                "or set GGNET_TGT_CONTROL_PORT to the port it uses",
            )
        return BackendHealth(True, f"tgtd answers on control port {self.control_port}")

    async def list_targets(self) -> list[ActualTarget]:
        targets = await self._targets()
        portals = await self._portals()
        return [to_actual(t, portals) for t in targets]

    async def create_target(self, spec: TargetSpec) -> None:
        _check_spec(spec)
        if not Path(spec.backing_file).is_file():
            raise NotFound(f"writeback {spec.backing_file} does not exist")
        async with self._lock:
            await self._ensure_portal(spec.portal_host, spec.portal_port)
            targets = await self._targets()
            for other in targets:
                if other.iqn != spec.iqn and spec.chap_username in other.accounts:
                    raise Conflict(
                        f"CHAP user {spec.chap_username} is already bound to target {other.iqn}; "
                        "every machine needs its own"
                    )
            current = next((t for t in targets if t.iqn == spec.iqn), None)
            if current is None:
                current = TgtTarget(await self._new_target(spec.iqn, targets), spec.iqn)
                created = True
            else:
                created = False
            try:
                await self._apply(current, spec)
            except BaseException:
                if created:  # leave nothing half-made behind (an existing target stays closed: no ACL)
                    await self._undo_new(current.tid, spec.chap_username)
                raise
        log.info("tgt_target_ready", iqn=spec.iqn, tid=current.tid, created=created, initiator=spec.initiator_iqn)

    async def _apply(self, current: TgtTarget, spec: TargetSpec) -> None:
        """Make the target ``current`` (new or existing) serve ``spec``; the ACL comes last."""
        tid = str(current.tid)
        # Fail closed while changing an existing target: with no initiator bound, tgtd refuses
        # every login, so nobody gets in between the account's removal and its re-creation.
        for acl in current.acls:
            await self._run_ok_if(("does not exist",), "--op", "unbind", "--mode", "target", "--tid", tid,
                                  *_acl_args(acl))  # fmt: skip
        await self._ensure_lun(tid, current, spec.backing_file)
        for user in current.accounts:
            if user != spec.chap_username:
                await self._run_ok_if(("can't find",), "--op", "unbind", "--mode", "account", "--tid", tid,
                                      "--user", user)  # fmt: skip
        # tgtadm cannot show or change a password: replace the account so the secret is the spec's
        await self._run_ok_if(("can't find",), "--op", "delete", "--mode", "account", "--user", spec.chap_username)
        await self._run("--op", "new", "--mode", "account", "--user", spec.chap_username,
                        "--password", spec.chap_secret, secret=True)  # fmt: skip
        await self._run("--op", "bind", "--mode", "account", "--tid", tid, "--user", spec.chap_username)
        await self._run("--op", "bind", "--mode", "target", "--tid", tid, "--initiator-name", spec.initiator_iqn)

    async def _undo_new(self, tid: int, chap_username: str) -> None:
        try:
            await self._run_ok_if(("can't find",), "--op", "delete", "--mode", "target", "--tid", str(tid), "--force")
            await self._run_ok_if(("can't find",), "--op", "delete", "--mode", "account", "--user", chap_username)
        except BackendUnavailable as exc:  # the original error matters more
            log.warning("tgt_undo_failed", tid=tid, error=exc.message)

    async def delete_target(self, iqn: str) -> None:
        async with self._lock:
            targets = await self._targets()
            target = next((t for t in targets if t.iqn == iqn), None)
            if target is None:
                return
            # --force: also when an initiator is still logged in (the caller decided it may go)
            await self._run_ok_if(("can't find the target",), "--op", "delete", "--mode", "target",
                                  "--tid", str(target.tid), "--force")  # fmt: skip
            shared = {user for t in targets if t.tid != target.tid for user in t.accounts}
            for user in target.accounts:
                if user not in shared:
                    await self._run_ok_if(("can't find",), "--op", "delete", "--mode", "account", "--user", user)
        log.info("tgt_target_deleted", iqn=iqn, tid=target.tid)

    # -- steps

    async def _new_target(self, iqn: str, targets: list[TgtTarget]) -> int:
        """Create the target under the lowest free tid (another tgtadm user may race us: retry)."""
        used = {t.tid for t in targets}
        tid = 1
        for _ in range(100):
            while tid in used:
                tid += 1
            try:
                await self._run("--op", "new", "--mode", "target", "--tid", str(tid), "--targetname", iqn)
                return tid
            except TgtadmError as exc:
                if "already exists" not in exc.reason:
                    raise
            # the tid or the IQN appeared meanwhile: look again
            fresh = await self._targets()
            mine = next((t for t in fresh if t.iqn == iqn), None)
            if mine is not None:
                return mine.tid
            used = {t.tid for t in fresh} | {tid}
        raise BackendUnavailable(f"could not find a free tid on tgtd (control port {self.control_port})")

    async def _ensure_lun(self, tid: str, current: TgtTarget, backing_file: Path) -> None:
        wanted = str(Path(backing_file).resolve())
        existing = next((lun for lun in current.luns if lun.lun == DISK_LUN), None)
        if existing is not None and existing.backing_file == wanted:
            return
        if existing is not None:
            await self._run("--op", "delete", "--mode", "logicalunit", "--tid", tid, "--lun", str(DISK_LUN))
        try:
            await self._run("--op", "new", "--mode", "logicalunit", "--tid", tid, "--lun", str(DISK_LUN),
                            "--backing-store", wanted, "--bstype", "rdwr")  # fmt: skip
        except TgtadmError as exc:  # tgtadm only says "invalid request"; the details go to tgtd's log
            raise BackendUnavailable(
                f"tgtd cannot serve {wanted} as LUN {DISK_LUN} ({exc.reason}): it could not open the file "
                "read-write; tgtd's log says why"
            ) from None

    async def _ensure_portal(self, host: str, port: int) -> None:
        if portal_covered(await self._portals(), host, port):
            return
        portal = _portal_text(host, port)
        try:
            await self._run("--op", "new", "--mode", "portal", "--param", f"portal={portal}")
        except TgtadmError as exc:
            if portal_covered(await self._portals(), host, port):
                return  # added meanwhile by someone else
            raise BackendUnavailable(
                f"tgtd cannot listen on {portal} (GGNET_PORTAL): {exc.reason}; is the address local and the port free?"
            ) from None


def _acl_args(acl: str) -> tuple[str, ...]:
    """An ACL line is an initiator name (IQN/EUI) or an address rule such as ALL or 10.0.0.0/8."""
    if acl.lower().startswith(("iqn.", "eui.", "naa.")):
        return ("--initiator-name", acl)
    return ("--initiator-address", acl)


def _check_spec(spec: TargetSpec) -> None:
    problems = {}
    for name in ("iqn", "initiator_iqn", "chap_username"):
        if not _NAME.match(getattr(spec, name) or ""):
            problems[name] = "must be non-empty without spaces"
    if not spec.chap_secret or any(c.isspace() for c in spec.chap_secret):
        problems["chap_secret"] = "must be non-empty without spaces"
    if problems:
        raise Invalid(problems)
