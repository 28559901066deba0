"""The engine: one per boot server, the only code that creates or removes writebacks, targets and
boot files. It runs a pass at start, within a second of any change of intent, on a timer, and on
request (``ggnet reconcile``); and it answers PCs' boot requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from ..auth import Actor
from ..context import Core
from ..errors import BackendUnavailable, GgnetError
from ..iscsi.base import LunSpec, ObservedTarget, TargetBackend, TargetSpec
from ..log import get_logger
from ..models import (
    Boot,
    EngineRequest,
    EngineRequestState,
    EngineStatus,
    Machine,
    Outcome,
    Role,
    utcnow,
)
from ..models import Writeback as WritebackRow
from . import disks
from .converge import run_pass
from .lock import EngineLock
from .prepare import BootAnswer, Preparer
from .report import PassReport
from .signals import IntentWatcher

CHAP_CHECK_SECONDS = 15 * 60  # tgtd cannot show a secret: each target's is verified by a login this often
LOGIN_WATCH_SECONDS = 120  # after answering a boot, how long to look for its client's login
LOGIN_WATCH_INTERVAL = 0.5
POKE_SOON_SECONDS = 1.0  # a pass after boot requests: at most this late, and at most one per this while


class Engine:
    def __init__(self, core: Core, mode: str = "serve") -> None:
        self.core = core
        self.mode = mode
        self.lock = EngineLock(core.settings, core.db)
        self.preparer = Preparer(self)
        self.backend: TargetBackend | None = None
        self.backend_detail: str | None = None
        self.in_flight_boots: set[int] = set()
        self.in_flight_files: set[Any] = set()
        self.watcher = IntentWatcher(core.db)
        self.last_report: PassReport | None = None
        self.last_pass_at: float | None = None
        self.started_at = utcnow()
        self._target_locks: dict[str, asyncio.Lock] = {}
        self.view: dict[str, ObservedTarget] = {}  # the target stack as the last pass saw it, kept up to date
        self._pass_lock = asyncio.Lock()
        self._chap_checked: dict[str, float] = {}
        self._stopping = asyncio.Event()
        self._watchers: set[asyncio.Future[None]] = set()
        self._logins_due: dict[int, tuple[str, str, float]] = {}  # boot id -> target, initiator, watched until
        self._login_watcher: asyncio.Future[None] | None = None
        self._poke_pending: asyncio.TimerHandle | None = None
        self.log = get_logger("ggnet.engine").bind(server=core.settings.server_name)

    @property
    def actor_name(self) -> str:
        return f"engine@{self.core.settings.server_name}"

    @property
    def actor(self) -> Actor:
        return Actor(user_id=None, username=self.actor_name, role=Role.ADMIN)

    # --- helpers the pass and the boot path share ----------------------------------------

    @contextlib.asynccontextmanager
    async def target_lock(self, iqn: str) -> AsyncIterator[None]:
        """One change at a time per target (a boot request and a pass may meet on one)."""
        lock = self._target_locks.setdefault(iqn.lower(), asyncio.Lock())
        async with lock:
            yield

    def chap_check_due(self, iqn: str) -> bool:
        now = time.monotonic()
        last = self._chap_checked.get(iqn)
        if last is not None and now - last < CHAP_CHECK_SECONDS:
            return False
        self._chap_checked[iqn] = now
        return True

    def spec(self, boot: Boot, machine: Machine, system: WritebackRow | None, game: WritebackRow | None) -> TargetSpec:
        """The target a ready boot should have."""
        if self.backend is None:
            raise BackendUnavailable(self.backend_detail or "no iSCSI target stack")
        if system is None or not boot.target_iqn or not boot.chap_secret:
            raise BackendUnavailable(f"boot {boot.id} of {boot.machine_name} has no system writeback")
        first = self.backend.first_lun
        luns = [LunSpec(first, disks.writeback_file(self.core.settings, system.file_name))]
        if game is not None:
            luns.append(LunSpec(first + 1, disks.writeback_file(self.core.settings, game.file_name)))
        host, port = self.core.settings.portal_address
        return TargetSpec(
            iqn=boot.target_iqn,
            luns=tuple(luns),
            initiator_iqn=machine.initiator_iqn,
            chap_username=machine.chap_username,
            chap_secret=boot.chap_secret,
            portal_host=host,
            portal_port=port,
        )

    async def refresh_backend(self) -> None:
        """Re-detect the target stack every pass: tgtd started after us, or LIO loaded, is picked up."""
        from ..iscsi.select import select_backend

        backend, health = await select_backend(self.core.settings)
        if backend is None or not health.ok:
            self.backend, self.backend_detail = None, health.detail
            return
        if self.backend is None or self.backend.name != backend.name:
            self.backend = backend  # else keep the one we have (its locks and caches)
        self.backend_detail = health.detail

    def poke(self) -> None:
        self.watcher.poke()

    def poke_soon(self) -> None:
        """A pass within POKE_SOON_SECONDS (one for every boot answered meanwhile): what it does for
        a boot (end the one it superseded) can wait, and back-to-back passes would slow a boot storm."""
        if self._poke_pending is None or self._poke_pending.cancelled():
            loop = asyncio.get_running_loop()

            def poke() -> None:
                self._poke_pending = None
                self.poke()

            self._poke_pending = loop.call_later(POKE_SOON_SECONDS, poke)

    def remember(self, spec: TargetSpec) -> None:
        """After an apply: the target is now as ``spec`` says (the secret too: we just set it, so no
        pass needs a login to check it for a while)."""
        self._chap_checked[spec.iqn.lower()] = time.monotonic()
        previous = self.view.get(spec.iqn.lower())
        self.view[spec.iqn.lower()] = ObservedTarget(
            iqn=spec.iqn,
            luns={lun.lun: str(lun.backing_file) for lun in spec.luns},
            acls=[spec.initiator_iqn],
            chap_users=[spec.chap_username],
            chap_secret=spec.chap_secret,
            portals=[f"{spec.portal_host}:{spec.portal_port}"],
            enabled=True,
            sessions=list(previous.sessions) if previous else [],
        )

    def forget(self, iqn: str) -> None:
        self.view.pop(iqn.lower(), None)

    def watch_login(self, boot_id: int, iqn: str, initiator_iqn: str) -> None:
        """Right after a boot is answered, look often for its client's login (a pass may be 30 s away),
        so its boot history says when and from where it logged in. One watcher for every boot
        answered: in a boot storm one read of the target stack serves them all."""
        self._logins_due[boot_id] = (iqn, initiator_iqn, time.monotonic() + LOGIN_WATCH_SECONDS)
        if self._login_watcher is None or self._login_watcher.done():
            self._login_watcher = asyncio.ensure_future(self._watch_logins())
            self._watchers.add(self._login_watcher)
            self._login_watcher.add_done_callback(self._watchers.discard)

    async def _watch_logins(self) -> None:
        while self._logins_due and not self._stopping.is_set():
            await asyncio.sleep(LOGIN_WATCH_INTERVAL)
            now = time.monotonic()
            for boot_id in [b for b, (_, _, until) in self._logins_due.items() if until < now]:
                del self._logins_due[boot_id]
            backend = self.backend
            if backend is None or not self._logins_due:
                continue
            due = dict(self._logins_due)
            try:
                view = await backend.observe(sorted({iqn.lower() for iqn, _, _ in due.values()}))
            except GgnetError:
                continue
            found: dict[int, str | None] = {}
            for boot_id, (iqn, initiator_iqn, _) in due.items():
                target = view.get(iqn.lower())
                for session in target.sessions if target else []:
                    if session.initiator_iqn.lower() == initiator_iqn.lower():
                        found[boot_id] = session.address
            if not found:
                continue
            seen: list[tuple[int, str, str | None]] = []
            async with self.core.db.transaction() as db:
                for boot_id, address in found.items():
                    boot = await db.get(Boot, boot_id)
                    if boot is not None and boot.login_at is None:
                        boot.login_at, boot.login_address = utcnow(), address
                        seen.append((boot_id, boot.machine_name, address))
            for boot_id, name, address in seen:
                self.core.events.publish("machine.login", boot_id=boot_id, machine=name, address=address)
            for boot_id in found:
                self._logins_due.pop(boot_id, None)
            self.poke()  # the pass records the machines as booted

    # --- the PC's request ---------------------------------------------------------------

    async def boot_request(self, mac: str, client_address: str | None) -> BootAnswer:
        if self.backend is None:
            await self.refresh_backend()
        return await self.preparer.boot_request(mac, client_address)

    # --- passes -------------------------------------------------------------------------

    @property
    def pass_running(self) -> bool:
        return self._pass_lock.locked()

    async def run_pass(self, *, dry_run: bool = False, audit: bool = True, probe_chap: bool = False) -> PassReport:
        async with self._pass_lock:
            try:
                report = await run_pass(self, dry_run=dry_run, probe_chap=probe_chap)
            except (GgnetError, OSError) as exc:
                report = PassReport(dry_run=dry_run, errors=[str(exc)])
            self.last_report = report
            self.last_pass_at = time.monotonic()
            if not dry_run:
                await self._record_status(report)
                if audit and (report.repaired or report.errors):
                    await self._audit_pass(report)
            if report.errors:
                self.log.warning("pass incomplete", errors=report.errors[:20])
            self.core.events.publish(
                "engine.pass",
                server=self.core.settings.server_name,
                dry_run=dry_run,
                ok=report.ok,
                duration_ms=report.duration_ms,
                drift=len(report.drift),
                repaired=len(report.repaired),
                errors=report.errors[:20],
                backend=report.backend,
            )
            return report

    async def _record_status(self, report: PassReport) -> None:
        settings = self.core.settings
        async with self.core.db.transaction() as session:
            row = await session.get(EngineStatus, settings.server_name)
            if row is None:
                row = EngineStatus(server=settings.server_name, passes=0, repaired_total=0)
                session.add(row)
            now = utcnow()
            row.pid, row.mode, row.started_at, row.heartbeat_at = os.getpid(), self.mode, self.started_at, now
            row.last_pass_at, row.last_pass_ms, row.last_pass_ok = now, report.duration_ms, report.ok
            row.last_error = "; ".join(report.errors)[:4000] or None
            row.backend = report.backend
            row.backend_ok = self.backend is not None
            row.backend_detail = self.backend_detail
            row.free_bytes = disks.free_bytes(settings)
            row.passes = (row.passes or 0) + 1
            row.repaired_total = (row.repaired_total or 0) + len(report.repaired)
            row.last_drift = [d.to_json() for d in report.drift][:200]

    async def _audit_pass(self, report: PassReport) -> None:
        from ..services.base import Operation

        async with self.core.db.transaction() as session:
            Operation(session, self.actor, "engine.pass").audit(
                "target",
                None,
                f"{len(report.drift)} drift items",
                after={"repaired": report.repaired[:100], "errors": report.errors[:100]},
                detail="; ".join(report.repaired + report.errors)[:4000] or "no drift",
                outcome=Outcome.FAILED if report.errors else Outcome.OK,
            )

    # --- operators' requests --------------------------------------------------------------

    async def handle_requests(self) -> int:
        """Carry out pending engine requests of this server (a pass now, a maintenance apply)."""
        from .requests import carry_out

        async with self.core.db.session() as session:
            pending = list(
                (
                    await session.execute(
                        select(EngineRequest)
                        .where(
                            EngineRequest.server == self.core.settings.server_name,
                            EngineRequest.state == EngineRequestState.PENDING.value,
                        )
                        .order_by(EngineRequest.id)
                    )
                ).scalars()
            )
            session.expunge_all()
        for request in pending:
            await carry_out(self, request)
        return len(pending)

    # --- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        """After the lock is held: listen for intent, then the first pass."""
        await self.watcher.start()
        await self.refresh_backend()
        await self.run_pass()
        await self.handle_requests()

    async def _watch_sessions(self) -> None:
        from .converge import watch_sessions

        while not self._stopping.is_set():
            await asyncio.sleep(self.core.settings.observe_seconds)
            try:
                await watch_sessions(self)
            except Exception:  # a bug here must not stop the engine: the next pass records the truth
                self.log.exception("session watch failed")

    async def run_forever(self) -> None:
        interval = self.core.settings.converge_seconds
        watcher = asyncio.ensure_future(self._watch_sessions())
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        while not self._stopping.is_set():
            waiter = asyncio.ensure_future(self.watcher.wait(interval))
            stopper = asyncio.ensure_future(self._stopping.wait())
            _done, pending = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self._stopping.is_set():
                break
            try:
                if await self.handle_requests() == 0:
                    await self.run_pass()
            except Exception:  # the loop must survive a bug in one pass; the next one retries
                self.log.exception("engine pass crashed")
                await asyncio.sleep(1)

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        if self._poke_pending is not None:
            self._poke_pending.cancel()
        for task in list(self._watchers):
            task.cancel()
        await self.watcher.close()
        await self.lock.release()

    def health(self) -> tuple[bool, dict[str, Any]]:
        report = self.last_report
        ok = report is not None and self.backend is not None
        age = None if self.last_pass_at is None else round(time.monotonic() - self.last_pass_at, 1)
        body: dict[str, Any] = {
            "server": self.core.settings.server_name,
            "mode": self.mode,
            "last_pass_seconds_ago": age,
            "last_pass_ms": report.duration_ms if report else None,
            "last_pass_errors": report.errors[:10] if report else None,
            "target_stack": self.backend.name if self.backend else None,
            "target_stack_detail": self.backend_detail,
            "database": self.core.db.kind,
        }
        if report is None:
            body["reason"] = "no pass has run yet"
        elif self.backend is None:
            body["reason"] = self.backend_detail or "no iSCSI target stack"
        return ok, body


def stale_after(settings: Any) -> timedelta:
    """When an engine's heartbeat is this old, screens say it is not running."""
    return timedelta(seconds=max(3 * float(settings.converge_seconds), 10))
