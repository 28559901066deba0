"""A boot, from the PC's request (or an operator's "prepare now") to its answer.

The request is the reboot signal. In short transactions:

1. **record**: the machine's current boot (if any) is superseded (``ending``) and a new boot is
   recorded (``requested``) with the version it should boot (pinned, else active), its policy
   and a new CHAP secret. Refusals (unknown MAC, not allowed, no image, too little space) are
   recorded too, and answered with a sentence; nothing is made for them.
2. **prepare** (no transaction open): the writebacks the boot needs — a new clone for ``fresh``,
   the kept one for ``keep`` and ``maintenance`` — then the machine's target, changed in place to
   serve them with the new secret (the old secret stays valid until then: the OS of the previous
   boot logged in with it from the iBFT).
3. **ready** (or ``failed`` with the reason): the script is answered.

Every step is idempotent: a boot left ``requested`` or ``preparing`` by a process that died is
prepared again by the next pass; a half-made clone is a temporary that the pass removes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from ..boot.ipxe import MachineScript, SanBoot, Why, render_machine_script, render_unregistered
from ..errors import BackendUnavailable, GgnetError
from ..files import private_dir
from ..log import get_logger
from ..models import (
    CURRENT_BOOT_STATES,
    Boot,
    BootMode,
    BootState,
    DiscoveredMac,
    Disk,
    Image,
    ImageVersion,
    Machine,
    WritebackPolicy,
    WritebackState,
    utcnow,
)
from ..models import Writeback as WritebackRow
from ..services.machines import new_chap_secret
from ..validation import normalize_mac
from . import disks

T = TypeVar("T")

if TYPE_CHECKING:
    from .engine import Engine

_CURRENT = [s.value for s in CURRENT_BOOT_STATES]


@dataclass(frozen=True)
class BootAnswer:
    script: str
    state: str  # ready, refused, failed, unregistered
    boot_id: int | None = None
    machine: str | None = None
    error: str | None = None  # why it was refused


class Refusal(Exception):
    def __init__(self, why: Why, detail: str = "") -> None:
        super().__init__(detail or why.value)
        self.why = why
        self.detail = detail


def target_iqn(iqn_base: str, machine_name: str) -> str:
    return f"{iqn_base}:{machine_name}"


def owns(iqn: str, iqn_base: str) -> bool:
    """ggnet owns exactly the targets under its IQN base; every other target is never touched."""
    return iqn.lower().startswith(iqn_base.lower() + ":")


async def resolve_version(session: object, machine: Machine, disk: Disk) -> ImageVersion | None:
    """The version a disk of the machine boots (pinned, else active); None when it has no such disk;
    Refusal when it should have one but cannot."""
    from sqlalchemy.ext.asyncio import AsyncSession

    assert isinstance(session, AsyncSession)
    image_id = machine.image_id if disk == Disk.SYSTEM else machine.game_image_id
    pinned_id = machine.pinned_version_id if disk == Disk.SYSTEM else machine.game_pinned_version_id
    if image_id is None:
        if disk == Disk.SYSTEM:
            raise Refusal(Why.NO_IMAGE)
        return None
    if pinned_id is not None:
        pinned = await session.get(ImageVersion, pinned_id)
        if pinned is not None:
            return pinned
    query = select(ImageVersion).where(ImageVersion.image_id == image_id, ImageVersion.is_active.is_(True))
    version = (await session.execute(query)).scalar_one_or_none()
    if version is None:
        image = await session.get(Image, image_id)
        label = image.name if image else str(image_id)
        raise Refusal(Why.NO_VERSION, f"image {label} has no active version (ggnet image activate {label} N)")
    return version


async def uninterrupted(step: Coroutine[Any, Any, T]) -> T:
    """Run one short database transaction to its end even if the caller is cancelled meanwhile (the
    cancellation is raised once it ended). A transaction cancelled inside the driver's call leaves
    its connection to be closed later, holding SQLite's write lock, and the next pass waits."""
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # looked at, so asyncio logs no "never retrieved": the cancellation wins
        raise


@dataclass
class Claimed:
    """A boot being prepared, with what preparing it needs (rows detached from their session)."""

    boot: Boot
    machine: Machine
    writebacks: list[WritebackRow]  # system first, then the game disk
    sources: dict[int, Path]  # writeback id -> the image version file a ``creating`` one is cloned from
    efi_loader: str | None


class Preparer:
    """The boot path of one engine: its requests are serialised per machine, not globally.

    A PC's request costs two short transactions (record and claim together, then ready) and no
    other read: under load every database statement is a few round trips to SQLite's thread, and
    those, not the clone or the target, were most of a boot's time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.core = engine.core
        self.settings = engine.core.settings
        self._mac_locks: dict[str, asyncio.Lock] = {}

    def _lock(self, mac: str) -> asyncio.Lock:
        return self._mac_locks.setdefault(mac, asyncio.Lock())

    # --- the PC's request -------------------------------------------------------------

    async def boot_request(self, mac_text: str, client_address: str | None) -> BootAnswer:
        try:
            mac = normalize_mac(mac_text)
        except ValueError:
            return BootAnswer("#!ipxe\necho GGNET-NOT-BOOTING: not a MAC address\nexit 1\n", "invalid")
        async with self._lock(mac):
            outcome = await self.record(mac, "pc", "pc", client_address)
            if isinstance(outcome, BootAnswer):
                if outcome.state == "unregistered":
                    self.core.events.publish("boot.unregistered", mac=mac, client_address=client_address)
                else:
                    self.core.events.publish("boot.refused", boot_id=outcome.boot_id, machine=outcome.machine, mac=mac,
                                             client_address=client_address, error=outcome.error)  # fmt: skip
                return outcome
            self.core.events.publish("boot.requested", boot_id=outcome.boot.id, machine=outcome.machine.name, mac=mac,
                                     client_address=client_address)  # fmt: skip
            return await self._prepare_and_answer(outcome)

    async def _discovered(self, session: object, mac: str, address: str | None) -> None:
        from sqlalchemy.ext.asyncio import AsyncSession

        assert isinstance(session, AsyncSession)
        now = utcnow()
        row = (await session.execute(select(DiscoveredMac).where(DiscoveredMac.mac == mac))).scalar_one_or_none()
        if row is None:
            session.add(
                DiscoveredMac(
                    server=self.settings.server_name,
                    mac=mac,
                    first_seen_at=now,
                    last_seen_at=now,
                    requests=1,
                    last_address=address,
                )
            )
        else:
            row.last_seen_at, row.requests, row.last_address = now, row.requests + 1, address

    # --- recording ---------------------------------------------------------------------

    async def record(
        self, mac: str, origin: str, requested_by: str, client_address: str | None
    ) -> Claimed | BootAnswer:
        """In one transaction: the machine with this MAC gets a new boot (superseding its current one),
        claimed for preparing; or the answer for an unknown MAC or a refusal (recorded as such)."""
        async with self.core.db.transaction() as session:
            # locked: an operator's disable (which ends the current boot) commits before or after this
            # boot, never beside it (PostgreSQL; SQLite serialises writers anyway)
            machine = (
                await session.execute(select(Machine).where(Machine.mac == mac).with_for_update())
            ).scalar_one_or_none()
            if machine is None:
                await self._discovered(session, mac, client_address)
                get_logger().info("boot request from an unregistered MAC", mac=mac, client=client_address)
                return BootAnswer(render_unregistered(mac), "unregistered")
            now = utcnow()
            boot = Boot(
                server=self.settings.server_name,
                machine_id=machine.id,
                machine_name=machine.name,
                mac=machine.mac,
                origin=origin,
                requested_at=now,
                requested_by=requested_by,
                client_address=client_address,
                policy=machine.writeback_policy,
                target_iqn=target_iqn(self.settings.iqn_base, machine.name),
                state=BootState.REQUESTED.value,
            )
            refusal: Refusal | None = None
            try:
                await self._decide(session, machine, boot)
            except Refusal as exc:
                refusal = exc
                boot.state = BootState.REFUSED.value
                boot.error = exc.detail or exc.why.value
                boot.ended_at = now
                boot.end_reason = "refused"
            if refusal is not None:
                session.add(boot)
                await session.flush()
                script = MachineScript(machine.name, mac, why=refusal.why, detail=refusal.detail)
                error = refusal.detail or refusal.why.value
                return BootAnswer(render_machine_script(script), "refused", boot.id, machine.name, error)
            # the PC rebooted: its previous boot is over (the pass cleans up what it no longer needs)
            await session.execute(
                update(Boot)
                .where(Boot.machine_id == machine.id, Boot.state.in_(_CURRENT))
                .values(state=BootState.ENDING.value, end_reason="superseded", ended_by=requested_by)
                .execution_options(synchronize_session=False)
            )
            try:
                # claimed at once: a process that dies from here on leaves a boot the next pass prepares
                return await self._claim_in(session, boot, machine)
            except IntegrityError:
                # another boot of this machine was recorded at the same instant by another process
                raise BackendUnavailable(f"{machine.name} was booted twice at once; try again") from None

    async def _decide(self, session: object, machine: Machine, boot: Boot) -> None:
        """What this boot serves (versions, a new CHAP secret), or Refusal: not allowed, no image, no space."""
        if not machine.boot_enabled:
            raise Refusal(Why.DISABLED)
        system = await resolve_version(session, machine, Disk.SYSTEM)
        game = await resolve_version(session, machine, Disk.GAME)
        free = disks.free_bytes(self.settings)
        if free is not None and free < self.settings.reserved_bytes:
            raise Refusal(Why.NO_SPACE, f"{free >> 20} MiB free, {self.settings.reserved_bytes >> 20} MiB reserved")
        boot.image_version_id = system.id if system else None
        boot.game_version_id = game.id if game else None
        boot.chap_secret = new_chap_secret()

    # --- preparing -----------------------------------------------------------------------

    async def _prepare_and_answer(self, claimed: Claimed) -> BootAnswer:
        boot, machine, efi_loader = await self.prepare(claimed.boot.id, claimed)
        if boot.state != BootState.READY.value or machine is None:
            script = MachineScript(
                boot.machine_name, boot.mac, why=Why.FAILED, detail=boot.error or "it was ended meanwhile"
            )
            return BootAnswer(render_machine_script(script), "failed", boot.id, boot.machine_name)
        backend = self.engine.backend
        host = self.settings.boot_host
        assert backend is not None and host is not None and boot.target_iqn and boot.chap_secret
        sanboot = SanBoot(
            address=host,
            port=self.settings.portal_address[1],
            lun=backend.first_lun,
            target_iqn=boot.target_iqn,
            initiator_iqn=machine.initiator_iqn,
            chap_username=machine.chap_username,
            chap_secret=boot.chap_secret,
            efi_loader=efi_loader if machine.boot_mode == BootMode.UEFI_SECURE.value else None,
        )
        text = render_machine_script(MachineScript(machine.name, machine.mac, sanboot))
        self.engine.watch_login(boot.id, boot.target_iqn, machine.initiator_iqn)
        self.engine.poke_soon()  # a pass ends the boot this one superseded; no hurry
        return BootAnswer(text, "ready", boot.id, machine.name)

    async def prepare(self, boot_id: int, claimed: Claimed | None = None) -> tuple[Boot, Machine | None, str | None]:
        """Make a recorded boot ready (or failed); returns the boot row as it ended up. ``claimed``: the
        boot path claimed it already, in the transaction that recorded it."""
        started = time.monotonic()
        self.engine.in_flight_boots.add(boot_id)
        try:
            try:
                if claimed is None:
                    claimed = await uninterrupted(self._claim(boot_id))
                    if claimed is None:
                        return await self._reload(boot_id)
                backend = self.engine.backend
                if backend is None:  # before any clone: a boot that cannot be served costs no disk work
                    raise BackendUnavailable(self.engine.backend_detail or "no iSCSI target stack")
                for row in claimed.writebacks:
                    await self._clone(row, claimed.sources.get(row.id))
                rows = {row.id: row for row in claimed.writebacks}
                boot = claimed.boot
                spec = self.engine.spec(
                    boot,
                    claimed.machine,
                    rows.get(boot.system_writeback_id or -1),
                    rows.get(boot.game_writeback_id or -1),
                )
                async with self.engine.target_lock(spec.iqn):
                    # a newer boot of the machine (or an operator's stop) may have come while this one
                    # cloned: then the target is the newer boot's to set, and this one must not overwrite it
                    if await self._still_preparing(boot_id):
                        # the last pass's view (tgtd can only show every target at once); a stale one is re-read
                        observed = self.engine.view.get(spec.iqn.lower())
                        if observed is not None and observed.chap_secret is None:
                            # every boot has a new secret, so the target's differs: no login needed to find out
                            observed = dataclasses.replace(observed, chap_secret="")
                        await backend.apply(spec, observed)
                        self.engine.remember(spec)
                ms = int((time.monotonic() - started) * 1000)
                if await uninterrupted(self._mark_ready(boot_id, ms, claimed.writebacks)):
                    boot.state = BootState.READY.value
                    self.core.events.publish("boot.ready", boot_id=boot_id, machine=boot.machine_name, mac=boot.mac,
                                             origin=boot.origin, prepare_ms=ms)  # fmt: skip
                    return boot, claimed.machine, claimed.efi_loader
            except (GgnetError, OSError) as exc:
                reason = exc.message if isinstance(exc, GgnetError) else f"{exc.strerror or exc}"
                get_logger().warning("boot could not be prepared", boot=boot_id, reason=reason)
                await uninterrupted(self._mark_failed(boot_id, reason))
            boot, machine, _ = await self._reload(boot_id)
            efi_loader = claimed.efi_loader if claimed is not None else None
            return boot, machine, efi_loader if boot.state == BootState.READY.value else None
        finally:
            self.engine.in_flight_boots.discard(boot_id)

    async def _reload(self, boot_id: int) -> tuple[Boot, Machine | None, str | None]:
        async with self.core.db.session() as session:
            boot = await session.get(Boot, boot_id)
            assert boot is not None
            machine = await session.get(Machine, boot.machine_id) if boot.machine_id else None
            return boot, machine, None

    async def _claim(self, boot_id: int) -> Claimed | None:
        """A boot recorded but not prepared (an operator's "prepare now", or one whose process died):
        ``preparing``, with what it needs; None if no longer wanted."""
        async with self.core.db.transaction() as session:
            boot = await session.get(Boot, boot_id)
            if boot is None or boot.state not in (BootState.REQUESTED.value, BootState.PREPARING.value):
                return None
            machine = await session.get(Machine, boot.machine_id) if boot.machine_id else None
            if machine is None:
                boot.state, boot.error, boot.ended_at = BootState.FAILED.value, "the machine was removed", utcnow()
                return None
            if boot.chap_secret is None:  # recorded by an operator ("prepare now"): what it boots is decided now
                try:
                    await self._decide(session, machine, boot)
                except Refusal as exc:
                    boot.state, boot.error, boot.ended_at, boot.end_reason = (
                        BootState.REFUSED.value,
                        exc.detail or exc.why.value,
                        utcnow(),
                        "refused",
                    )
                    return None
            return await self._claim_in(session, boot, machine)

    async def _claim_in(self, session: object, boot: Boot, machine: Machine) -> Claimed:
        """In the caller's transaction: the boot is ``preparing``, with the writeback rows it needs (new
        ones ``creating``) and the version files they are cloned from. A new boot (not yet in the
        session) is added last, so it is inserted once, with its writebacks."""
        from sqlalchemy.ext.asyncio import AsyncSession

        from ..services.images import version_path

        assert isinstance(session, AsyncSession)
        boot.state = BootState.PREPARING.value
        needed: list[WritebackRow] = []
        sources: dict[int, Path] = {}
        for disk, version_id, slot in (
            (Disk.SYSTEM, boot.image_version_id, "system_writeback_id"),
            (Disk.GAME, boot.game_version_id, "game_writeback_id"),
        ):
            if version_id is None:
                continue
            current_id = getattr(boot, slot)
            row = await session.get(WritebackRow, current_id) if current_id else None
            if row is None or row.state == WritebackState.DISCARD.value:
                row = await self._writeback_for(session, machine, disk, version_id, boot.policy)
                setattr(boot, slot, row.id)
            if row.state != WritebackState.READY.value and row.image_version_id is not None:
                version = await session.get(ImageVersion, row.image_version_id)  # loaded by _decide already
                if version is not None:
                    sources[row.id] = version_path(self.settings, version)
            needed.append(row)
        efi_loader = None
        if boot.image_version_id is not None and machine.boot_mode == BootMode.UEFI_SECURE.value:
            version = await session.get(ImageVersion, boot.image_version_id)
            image = await session.get(Image, version.image_id) if version else None
            efi_loader = image.efi_loader if image else None
        session.add(boot)
        await session.flush()
        session.expunge_all()
        return Claimed(boot, machine, needed, sources, efi_loader)

    async def _writeback_for(
        self, session: object, machine: Machine, disk: Disk, version_id: int, policy: str
    ) -> WritebackRow:
        """The kept writeback (keep, maintenance) or a new one to clone."""
        from sqlalchemy.ext.asyncio import AsyncSession

        assert isinstance(session, AsyncSession)
        retain = policy in (WritebackPolicy.KEEP.value, WritebackPolicy.MAINTENANCE.value)
        if retain:
            kept = (
                await session.execute(
                    select(WritebackRow)
                    .where(
                        WritebackRow.server == self.settings.server_name,
                        WritebackRow.machine_id == machine.id,
                        WritebackRow.disk == disk.value,
                        WritebackRow.retained.is_(True),
                        WritebackRow.state != WritebackState.DISCARD.value,
                    )
                    .order_by(WritebackRow.id.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            if kept is not None:
                return kept
        row = WritebackRow(
            server=self.settings.server_name,
            machine_id=machine.id,
            disk=disk.value,
            image_version_id=version_id,
            file_name=disks.new_file_name(machine.id, disk.value),
            state=WritebackState.CREATING.value,
            retained=retain,
            created_at=utcnow(),
        )
        session.add(row)
        await session.flush()
        return row

    async def _clone(self, row: WritebackRow, source: Path | None) -> None:
        """Clone a writeback's file from ``source`` unless it exists (a rename is the last step of a
        clone: an existing file is complete). The row is marked ready by the caller."""
        from ..storage.writeback import choose_driver

        path = disks.writeback_file(self.settings, row.file_name)
        if path.is_file():
            return
        if source is None:
            raise BackendUnavailable(f"the image version of writeback {row.file_name} no longer exists")
        private_dir(path.parent)
        driver = await choose_driver(self.settings.data_dir, self.settings.writeback_driver)
        self.engine.in_flight_files.add(path)
        try:
            await driver.create(source, path)
        finally:
            self.engine.in_flight_files.discard(path)

    async def _ensure_writeback(self, row: WritebackRow) -> None:
        """Clone a ``creating`` writeback (again, if a crash interrupted it) and mark it ready; a
        complete file is kept."""
        from ..services.images import version_path

        path = disks.writeback_file(self.settings, row.file_name)
        if row.state == WritebackState.READY.value and path.is_file():
            return
        source = None
        if not path.is_file():
            async with self.core.db.session() as session:
                version = await session.get(ImageVersion, row.image_version_id) if row.image_version_id else None
            source = version_path(self.settings, version) if version is not None else None
        await self._clone(row, source)
        async with self.core.db.transaction() as session:
            await session.execute(
                update(WritebackRow)
                .where(WritebackRow.id == row.id)
                .values(state=WritebackState.READY.value, allocated_bytes=disks.allocated_bytes(path))
            )

    async def _still_preparing(self, boot_id: int) -> bool:
        async with self.core.db.session() as session:
            state = (await session.execute(select(Boot.state).where(Boot.id == boot_id))).scalar_one_or_none()
        return state == BootState.PREPARING.value

    async def _mark_ready(self, boot_id: int, ms: int, writebacks: list[WritebackRow]) -> bool:
        """The boot and its writebacks ready, in one transaction; False if the boot was ended meanwhile."""
        async with self.core.db.transaction() as session:
            done = await session.execute(
                update(Boot)
                .where(Boot.id == boot_id, Boot.state == BootState.PREPARING.value)
                .values(state=BootState.READY.value, prepared_at=utcnow(), prepare_ms=ms, error=None)
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                return False
            for row in writebacks:
                size = disks.allocated_bytes(disks.writeback_file(self.settings, row.file_name))
                if row.state != WritebackState.READY.value or size != row.allocated_bytes:
                    await session.execute(
                        update(WritebackRow)
                        .where(WritebackRow.id == row.id)
                        .values(state=WritebackState.READY.value, allocated_bytes=size)
                    )
            return True

    async def _mark_failed(self, boot_id: int, reason: str) -> None:
        """failed, and what it made for itself (not a kept writeback) goes to the pass to remove."""
        async with self.core.db.transaction() as session:
            boot = await session.get(Boot, boot_id)
            if boot is None:
                return
            boot.state, boot.error, boot.ended_at, boot.end_reason = (
                BootState.FAILED.value,
                reason[:2000],
                utcnow(),
                "failed",
            )
            for wid in (boot.system_writeback_id, boot.game_writeback_id):
                row = await session.get(WritebackRow, wid) if wid else None
                if row is not None and not row.retained:
                    row.state = WritebackState.DISCARD.value
            name, mac = boot.machine_name, boot.mac
        self.core.events.publish("boot.failed", boot_id=boot_id, machine=name, mac=mac, error=reason[:2000])
