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
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from ..boot.ipxe import MachineScript, SanBoot, Why, render_machine_script, render_unregistered
from ..errors import BackendUnavailable, GgnetError
from ..files import private_dir
from ..iscsi.base import TargetSpec
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

if TYPE_CHECKING:
    from .engine import Engine

_CURRENT = [s.value for s in CURRENT_BOOT_STATES]


@dataclass(frozen=True)
class BootAnswer:
    script: str
    state: str  # ready, refused, failed, unregistered
    boot_id: int | None = None
    machine: str | None = None


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


class Preparer:
    """The boot path of one engine: its requests are serialised per machine, not globally."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.core = engine.core
        self.settings = engine.core.settings
        self._machine_locks: dict[int, asyncio.Lock] = {}

    def _lock(self, machine_id: int) -> asyncio.Lock:
        return self._machine_locks.setdefault(machine_id, asyncio.Lock())

    # --- the PC's request -------------------------------------------------------------

    async def boot_request(self, mac_text: str, client_address: str | None) -> BootAnswer:
        try:
            mac = normalize_mac(mac_text)
        except ValueError:
            return BootAnswer("#!ipxe\necho GGNET-NOT-BOOTING: not a MAC address\nexit 1\n", "invalid")
        async with self.core.db.transaction() as session:
            machine = (await session.execute(select(Machine).where(Machine.mac == mac))).scalar_one_or_none()
            if machine is None:
                await self._discovered(session, mac, client_address)
                get_logger().info("boot request from an unregistered MAC", mac=mac, client=client_address)
                unregistered = True
            else:
                unregistered = False
                machine_id = machine.id
        if unregistered:
            self.core.events.publish("boot.unregistered", mac=mac, client_address=client_address)
            return BootAnswer(render_unregistered(mac), "unregistered")
        async with self._lock(machine_id):
            boot_id, refusal, name = await self.record(machine_id, "pc", "pc", client_address)
            self.core.events.publish(
                "boot.refused" if refusal is not None else "boot.requested",
                boot_id=boot_id,
                machine=name,
                mac=mac,
                client_address=client_address,
                **({"error": refusal.detail or refusal.why.value} if refusal is not None else {}),
            )
            if refusal is not None:
                script = MachineScript(name, mac, why=refusal.why, detail=refusal.detail)
                return BootAnswer(render_machine_script(script), "refused", boot_id, name)
            assert boot_id is not None
            return await self._prepare_and_answer(boot_id)

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
        self, machine_id: int, origin: str, requested_by: str, client_address: str | None
    ) -> tuple[int | None, Refusal | None, str]:
        """Record a boot of the machine (superseding its current one); a Refusal is recorded as such."""
        async with self.core.db.transaction() as session:
            # locked: an operator's disable (which ends the current boot) commits before or after this
            # boot, never beside it (PostgreSQL; SQLite serialises writers anyway)
            machine = await session.get(Machine, machine_id, with_for_update=True)
            if machine is None:
                return None, Refusal(Why.FAILED, "the machine was removed meanwhile"), "unknown"
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
            if refusal is None:
                # the PC rebooted: its previous boot is over (the pass cleans up what it no longer needs)
                await session.execute(
                    update(Boot)
                    .where(Boot.machine_id == machine.id, Boot.state.in_(_CURRENT))
                    .values(state=BootState.ENDING.value, end_reason="superseded", ended_by=requested_by)
                )
            session.add(boot)
            try:
                await session.flush()
            except IntegrityError:
                # another boot of this machine was recorded at the same instant by another process
                raise BackendUnavailable(f"{machine.name} was booted twice at once; try again") from None
            return boot.id, refusal, machine.name

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

    async def _prepare_and_answer(self, boot_id: int) -> BootAnswer:
        boot, machine, efi_loader = await self.prepare(boot_id)
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
        script = render_machine_script(MachineScript(machine.name, machine.mac, sanboot))
        self.engine.watch_login(boot.id, boot.target_iqn, machine.initiator_iqn)
        self.engine.poke()  # the pass ends the boot this one superseded
        return BootAnswer(script, "ready", boot.id, machine.name)

    async def prepare(self, boot_id: int) -> tuple[Boot, Machine | None, str | None]:
        """Make a recorded boot ready (or failed); returns the boot row as it ended up."""
        started = time.monotonic()
        self.engine.in_flight_boots.add(boot_id)
        try:
            try:
                machine, writebacks, efi_loader = await self._claim(boot_id)
                if machine is None:
                    return await self._reload(boot_id)
                for row in writebacks:
                    await self._ensure_writeback(row)
                spec = await self.spec_for_boot(boot_id)
                backend = self.engine.backend
                if backend is None:
                    raise BackendUnavailable(self.engine.backend_detail or "no iSCSI target stack")
                async with self.engine.target_lock(spec.iqn):
                    # the last pass's view (tgtd can only show every target at once); a stale one is re-read
                    await backend.apply(spec, self.engine.view.get(spec.iqn.lower()))
                    self.engine.remember(spec)
                await self._mark_ready(boot_id, int((time.monotonic() - started) * 1000))
            except (GgnetError, OSError) as exc:
                reason = exc.message if isinstance(exc, GgnetError) else f"{exc.strerror or exc}"
                get_logger().warning("boot could not be prepared", boot=boot_id, reason=reason)
                await self._mark_failed(boot_id, reason)
            boot, machine, _ = await self._reload(boot_id)
            return boot, machine, efi_loader if boot.state == BootState.READY.value else None
        finally:
            self.engine.in_flight_boots.discard(boot_id)

    async def _reload(self, boot_id: int) -> tuple[Boot, Machine | None, str | None]:
        async with self.core.db.session() as session:
            boot = await session.get(Boot, boot_id)
            assert boot is not None
            machine = await session.get(Machine, boot.machine_id) if boot.machine_id else None
            return boot, machine, None

    async def _claim(self, boot_id: int) -> tuple[Machine | None, list[WritebackRow], str | None]:
        """preparing, with the writeback rows it needs (new ones ``creating``); None if no longer wanted."""
        async with self.core.db.transaction() as session:
            boot = await session.get(Boot, boot_id)
            if boot is None or boot.state not in (BootState.REQUESTED.value, BootState.PREPARING.value):
                return None, [], None
            machine = await session.get(Machine, boot.machine_id) if boot.machine_id else None
            if machine is None:
                boot.state, boot.error, boot.ended_at = BootState.FAILED.value, "the machine was removed", utcnow()
                return None, [], None
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
                    return None, [], None
            boot.state = BootState.PREPARING.value
            needed: list[WritebackRow] = []
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
                needed.append(row)
            efi_loader = None
            if boot.image_version_id is not None:
                version = await session.get(ImageVersion, boot.image_version_id)
                image = await session.get(Image, version.image_id) if version else None
                efi_loader = image.efi_loader if image else None
            session.expunge_all()
            return machine, needed, efi_loader

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

    async def _ensure_writeback(self, row: WritebackRow) -> None:
        """Clone a ``creating`` writeback (again, if a crash interrupted it); a complete file is kept."""
        from ..services.images import version_path
        from ..storage.writeback import choose_driver

        path = disks.writeback_file(self.settings, row.file_name)
        if row.state == WritebackState.READY.value and path.is_file():
            return
        if not path.is_file():  # a rename is the last step of a clone: an existing file is complete
            async with self.core.db.session() as session:
                version = await session.get(ImageVersion, row.image_version_id) if row.image_version_id else None
            if version is None:
                raise BackendUnavailable(f"the image version of writeback {row.file_name} no longer exists")
            source = version_path(self.settings, version)
            private_dir(path.parent)
            driver = await choose_driver(self.settings.data_dir, self.settings.writeback_driver)
            self.engine.in_flight_files.add(path)
            try:
                await driver.create(source, path)
            finally:
                self.engine.in_flight_files.discard(path)
        async with self.core.db.transaction() as session:
            await session.execute(
                update(WritebackRow)
                .where(WritebackRow.id == row.id)
                .values(state=WritebackState.READY.value, allocated_bytes=disks.allocated_bytes(path))
            )

    async def spec_for_boot(self, boot_id: int) -> TargetSpec:
        async with self.core.db.session() as session:
            boot = await session.get(Boot, boot_id)
            assert boot is not None and boot.machine_id is not None
            machine = await session.get(Machine, boot.machine_id)
            assert machine is not None
            rows = {
                slot: await session.get(WritebackRow, wid) if wid else None
                for slot, wid in (("system", boot.system_writeback_id), ("game", boot.game_writeback_id))
            }
        return self.engine.spec(boot, machine, rows["system"], rows["game"])

    async def _mark_ready(self, boot_id: int, ms: int) -> None:
        async with self.core.db.transaction() as session:
            result = await session.execute(
                update(Boot)
                .where(Boot.id == boot_id, Boot.state == BootState.PREPARING.value)
                .values(state=BootState.READY.value, prepared_at=utcnow(), prepare_ms=ms, error=None)
                .returning(Boot.machine_name, Boot.mac, Boot.origin)
            )
            row = result.first()
        if row is not None:
            self.core.events.publish(
                "boot.ready", boot_id=boot_id, machine=row.machine_name, mac=row.mac, origin=row.origin, prepare_ms=ms
            )

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
