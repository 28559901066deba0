"""Images and their versions: import (qemu-img to raw), list, activate, remove, assign to machines.

An import converts outside any database transaction (it can take many minutes), into a file
whose name the code generates; the rows are written only once the file is complete and
hashed. A failed or cancelled import leaves neither a row nor a file, and the partial file of
an import whose process died is removed by the next sweep (core.storage.temps).

A version's ``sha256`` is the ggnet-disk-v1 digest of its raw file (core.storage.digest): the
SHA-256 of the disk's size and of the SHA-256 of each non-zero 1 MiB leaf with its index. It
identifies the disk's bytes exactly, holes and zeros alike, and is computed during the
conversion; it is not what `sha256sum` prints for the file.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..auth import Actor, Permission
from ..boot.ipxe import check_efi_loader
from ..config import Settings
from ..context import Core
from ..errors import Conflict, Fix, Invalid, NotFound
from ..log import get_logger
from ..models import CURRENT_BOOT_STATES, Boot, Image, ImageKind, ImageVersion, Machine, utcnow
from ..storage import IMAGES_DIR, qemu_img, temps
from ..storage.untrusted import quoted
from ..validation import ImageName, Notes, StrictInput, parse, shown
from .base import Operation, operation, reading, snapshot
from .views import MachineView, View

DIGEST_HELP = (
    "ggnet-disk-v1 digest of the raw disk: SHA-256 over its size and its non-zero 1 MiB leaves (not sha256sum)"
)
NOTES_MAX = 2000

ProgressCallback = Callable[[float], Any]


# --- views -------------------------------------------------------------------


class ImageVersionView(View):
    id: int
    image: str
    number: int
    is_active: bool
    source_format: str
    virtual_size: int
    sha256: str = Field(description=DIGEST_HELP)
    notes: str
    file_name: str
    created_at: datetime
    created_by: str | None
    pinned_by: list[str] = Field(default_factory=list)  # machines that pin this version
    in_use_by: list[str] = Field(default_factory=list)  # machines whose live session runs on it


class ImageView(View):
    id: int
    name: str
    kind: str
    description: str
    efi_loader: str | None = None  # Secure Boot: the signed loader uefi-secure machines start
    active_version: int | None
    version_count: int
    virtual_size: int | None  # of the active version
    sha256: str | None = Field(description=DIGEST_HELP)  # of the active version
    assigned_to: list[str]  # machines that boot this image
    created_at: datetime
    updated_at: datetime
    updated_by: str | None
    row_version: int
    versions: list[ImageVersionView] = Field(default_factory=list)  # filled by get_image only


# --- inputs --------------------------------------------------------------------


class ImportInput(StrictInput):
    name: ImageName | None = None
    kind: ImageKind = ImageKind.SYSTEM
    new_version_of: ImageName | None = None
    notes: Notes = ""
    activate: bool = True


def _check_import(data: ImportInput) -> None:
    if data.name is None and data.new_version_of is None:
        raise Invalid("name", "is required (or give new_version_of to add a version to an existing image)")
    if data.name is not None and data.new_version_of is not None:
        raise Invalid("name", "must not be given together with new_version_of")
    if data.new_version_of is None and not data.activate:
        raise Invalid("activate", "a new image's first version is always active")


# --- paths -----------------------------------------------------------------------


def images_dir(settings: Settings) -> Path:
    return settings.data_dir / IMAGES_DIR


def version_path(settings: Settings, version: ImageVersion) -> Path:
    """The served raw file of a version."""
    name = str(version.file_name)
    if not name or Path(name).name != name or name.startswith("."):
        raise Conflict(f"image version {version.id} has an unusable file name in the database")
    return images_dir(settings) / name


def _new_file_name() -> str:
    return f"{uuid.uuid4().hex}.raw"


def _remove_files(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            get_logger().warning("could not remove image file", path=str(path), reason=exc.strerror)


# --- queries ---------------------------------------------------------------------


async def _image_row(session: AsyncSession, name: str, lock: bool = False) -> Image:
    """The image called ``name``; ``lock`` holds its row until commit, so that changes to one image's
    versions (numbering, the active flag) happen one after another (SQLite serialises all writers anyway)."""
    image = None
    # a name no image can have (NUL, not text) is not sent to the database: PostgreSQL refuses NUL
    if isinstance(name, str) and "\x00" not in name:
        query = select(Image).where(Image.name == name.strip())
        image = (await session.execute(query.with_for_update() if lock else query)).scalar_one_or_none()
    if image is None:
        raise NotFound(f"no image named '{shown(str(name).strip())}'")
    return image


async def _versions(session: AsyncSession, image_id: int) -> list[ImageVersion]:
    query = select(ImageVersion).where(ImageVersion.image_id == image_id).order_by(ImageVersion.number)
    return list((await session.execute(query)).scalars())


async def _version_row(session: AsyncSession, image: Image, number: int) -> ImageVersion:
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number < 2**31:
        raise Invalid("version", "must be a version number (1 or more)")
    query = select(ImageVersion).where(ImageVersion.image_id == image.id, ImageVersion.number == int(number))
    version = (await session.execute(query)).scalar_one_or_none()
    if version is None:
        raise NotFound(f"image '{image.name}' has no version {number}")
    return version


async def _pinned_by(session: AsyncSession, version_ids: list[int]) -> dict[int, list[str]]:
    """Machines that pin one of these versions (for their system or game disk)."""
    if not version_ids:
        return {}
    found: dict[int, list[str]] = {}
    for column in (Machine.pinned_version_id, Machine.game_pinned_version_id):
        query = select(column, Machine.name).where(column.in_(version_ids)).order_by(Machine.name)
        for version_id, name in (await session.execute(query)).all():
            if version_id is not None:  # the query filters on it; said for the type
                found.setdefault(version_id, []).append(name)
    return found


async def _in_use_by(session: AsyncSession, version_ids: list[int]) -> dict[int, list[str]]:
    """Machines whose current boot runs on one of these versions (system or game disk)."""
    if not version_ids:
        return {}
    found: dict[int, list[str]] = {}
    current = [s.value for s in CURRENT_BOOT_STATES]
    for column in (Boot.image_version_id, Boot.game_version_id):
        query = (
            select(column, Boot.machine_name)
            .where(column.in_(version_ids), Boot.state.in_(current))
            .order_by(Boot.machine_name)
        )
        for version_id, name in (await session.execute(query)).all():
            if version_id is not None:  # the query filters on it; said for the type
                found.setdefault(version_id, []).append(name)
    return found


async def _assigned_to(session: AsyncSession, image_ids: list[int]) -> dict[int, list[str]]:
    """Machines that boot one of these images (as their system or game disk)."""
    if not image_ids:
        return {}
    found: dict[int, list[str]] = {}
    for column in (Machine.image_id, Machine.game_image_id):
        query = select(column, Machine.name).where(column.in_(image_ids)).order_by(Machine.name)
        for image_id, name in (await session.execute(query)).all():
            if image_id is not None:  # the query filters on it; said for the type
                found.setdefault(image_id, []).append(name)
    return found


def _version_view(
    image: Image, version: ImageVersion, pinned: list[str] | None = None, in_use: list[str] | None = None
) -> ImageVersionView:
    return ImageVersionView(
        id=version.id,
        image=image.name,
        number=version.number,
        is_active=version.is_active,
        source_format=version.source_format,
        virtual_size=version.virtual_size,
        sha256=version.sha256,
        notes=version.notes,
        file_name=version.file_name,
        created_at=version.created_at,
        created_by=version.created_by,
        pinned_by=pinned or [],
        in_use_by=in_use or [],
    )


def _image_view(
    image: Image, versions: list[ImageVersion], assigned: list[str], version_views: list[ImageVersionView] | None = None
) -> ImageView:
    active = next((v for v in versions if v.is_active), None)
    return ImageView(
        id=image.id,
        name=image.name,
        kind=image.kind,
        description=image.description,
        efi_loader=image.efi_loader,
        active_version=active.number if active else None,
        version_count=len(versions),
        virtual_size=active.virtual_size if active else None,
        sha256=active.sha256 if active else None,
        assigned_to=assigned,
        created_at=image.created_at,
        updated_at=image.updated_at,
        updated_by=image.updated_by,
        row_version=image.row_version,
        versions=version_views or [],
    )


# --- reads -----------------------------------------------------------------------


async def list_images(core: Core, actor: Actor) -> list[ImageView]:
    async with reading(core, actor) as session:
        images = list((await session.execute(select(Image).order_by(Image.name))).scalars())
        ids = [i.id for i in images]
        versions: dict[int, list[ImageVersion]] = {}
        if ids:
            rows = await session.execute(select(ImageVersion).where(ImageVersion.image_id.in_(ids)))
            for version in rows.scalars():
                versions.setdefault(version.image_id, []).append(version)
        assigned = await _assigned_to(session, ids)
        return [_image_view(i, versions.get(i.id, []), assigned.get(i.id, [])) for i in images]


async def list_versions(core: Core, actor: Actor, name: str) -> list[ImageVersionView]:
    async with reading(core, actor) as session:
        image = await _image_row(session, name)
        versions = await _versions(session, image.id)
        ids = [v.id for v in versions]
        pinned, in_use = await _pinned_by(session, ids), await _in_use_by(session, ids)
        return [_version_view(image, v, pinned.get(v.id), in_use.get(v.id)) for v in versions]


async def get_image(core: Core, actor: Actor, name: str) -> ImageView:
    """One image with its versions."""
    async with reading(core, actor) as session:
        image = await _image_row(session, name)
        versions = await _versions(session, image.id)
        ids = [v.id for v in versions]
        pinned, in_use = await _pinned_by(session, ids), await _in_use_by(session, ids)
        assigned = await _assigned_to(session, [image.id])
        views = [_version_view(image, v, pinned.get(v.id), in_use.get(v.id)) for v in versions]
        return _image_view(image, versions, assigned.get(image.id, []), views)


# --- import ------------------------------------------------------------------------


async def precheck_import(
    core: Core,
    actor: Actor,
    *,
    name: str | None = None,
    kind: str = "system",
    new_version_of: str | None = None,
    notes: str = "",
    activate: bool = True,
) -> ImportInput:
    """Refuse an import early (bad fields, no permission, the name taken), before minutes of
    converting or gigabytes of uploading; a refusal is audited under the import's action."""
    fields: dict[str, Any] = {"kind": kind, "notes": notes, "activate": activate}
    if name is not None:
        fields["name"] = name
    if new_version_of is not None:
        fields["new_version_of"] = new_version_of
    data = parse(ImportInput, fields)
    _check_import(data)
    action = "image.import" if data.new_version_of is None else "image.version.add"
    async with operation(core, actor, Permission.MANAGE_IMAGES, action) as op:
        if data.new_version_of is not None:
            await _image_row(op.session, data.new_version_of)
        elif (await op.session.execute(select(Image.id).where(Image.name == data.name))).first() is not None:
            raise Conflict(
                f"an image named '{data.name}' already exists; import the file as its next version instead",
                Fix("image.new_version", image=data.name),
            )
    return data


async def import_image(
    core: Core,
    actor: Actor,
    path: str | Path,
    name: str | None = None,
    kind: str = "system",
    progress: ProgressCallback | None = None,
    new_version_of: str | None = None,
    notes: str = "",
    activate: bool = True,
    cancel: asyncio.Event | None = None,
    stage: Callable[[str], Any] | None = None,
) -> ImageVersionView:
    """Import a disk file as a new image (version 1, active) or as the next version of
    ``new_version_of`` (active unless ``activate`` is False). Returns the new version.

    ``progress`` gets the conversion's percentage; ``stage`` the name of each step as it begins:
    "converting", "checksum" (after 100 %: the last part hashed and everything flushed to disk,
    without a percentage), "recording"."""
    data = await precheck_import(
        core, actor, name=name, kind=kind, new_version_of=new_version_of, notes=notes, activate=activate
    )
    directory = images_dir(core.settings)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for orphan in temps.remove_orphans(directory):
        get_logger().warning("removed the partial file of an import whose process died", path=str(orphan))
    log = get_logger()
    with await qemu_img.probe(path) as probed:
        dest = directory / _new_file_name()
        log.info(
            "image import started",
            source=quoted(str(probed.path)),
            format=probed.format,
            virtual_size=probed.info.virtual_size,
            data=probed.data_size,
        )
        announce = stage or (lambda _name: None)

        def converted(percent: float) -> None:
            if progress is not None:
                progress(percent)
            if percent >= 100:  # all data converted: hashing its last part and the flush remain
                announce("checksum")

        try:
            announce("converting")
            digest = await qemu_img.convert_to_raw(probed, dest, converted, cancel)
            announce("recording")
            if probed.changed():
                raise Conflict(f"{probed.source.shown_as} changed while it was being imported; nothing was imported")
            return await _record_version(
                core,
                actor,
                data,
                dest.name,
                probed.info.kind,
                probed.info.virtual_size,
                digest,
                quoted(str(probed.path)),
            )
        except BaseException:
            _remove_files([dest])
            raise


async def _record_version(
    core: Core,
    actor: Actor,
    data: ImportInput,
    file_name: str,
    source_format: str,
    virtual_size: int,
    digest: str,
    source: str,
) -> ImageVersionView:
    new_image = data.new_version_of is None
    action = "image.import" if new_image else "image.version.add"
    async with operation(core, actor, Permission.MANAGE_IMAGES, action) as op:
        now = utcnow()
        if new_image:
            image = Image(
                name=data.name,
                kind=data.kind.value,
                description="",
                created_at=now,
                updated_at=now,
                updated_by=actor.username,
            )
            op.session.add(image)
            await op.flush(conflict=f"an image named '{data.name}' was just added by another console")
            number = 1
        else:
            image = await _image_row(op.session, str(data.new_version_of), lock=True)
            latest = await op.session.execute(
                select(func.max(ImageVersion.number)).where(ImageVersion.image_id == image.id)
            )
            number = (latest.scalar_one() or 0) + 1
        version = await _add_version(
            op, image, number, file_name, source_format, virtual_size, digest, data.notes, data.activate
        )
        after = snapshot(version)
        after["source"] = source
        op.audit("image", image.id, f"{image.name} v{number}", None, after)
        return _version_view(image, version)


async def _add_version(
    op: Operation,
    image: Image,
    number: int,
    file_name: str,
    source_format: str,
    virtual_size: int,
    digest: str,
    notes: str,
    activate: bool,
) -> ImageVersion:
    if activate:
        await _deactivate_all(op, image)
    version = ImageVersion(
        image_id=image.id,
        number=number,
        file_name=file_name,
        source_format=source_format,
        virtual_size=virtual_size,
        sha256=digest,
        notes=notes,
        is_active=activate,
        created_at=utcnow(),
        created_by=op.actor.username,
    )
    op.session.add(version)
    op.stamp(image)
    await op.flush(conflict=f"image '{image.name}' got a version {number} from another console meanwhile; retry")
    return version


async def _deactivate_all(op: Operation, image: Image) -> None:
    # flushed on its own: the one-active-version index is checked row by row on PostgreSQL
    for version in await _versions(op.session, image.id):
        version.is_active = False
    await op.flush(conflict=f"image '{image.name}' was changed by another console meanwhile; retry")


async def record_applied_version(
    core: Core,
    actor: Actor,
    image_id: int,
    file: Path,
    *,
    activate: bool,
    notes: str,
    machine_id: int,
    writeback_id: int,
) -> int:
    """The engine's last step of a maintenance apply: ``file`` (a clone of the machine's maintenance
    writeback, already in the images directory) becomes the image's next version, the writeback is
    given up and the machine boots fresh again. Idempotent: a second call finds the version."""
    from ..models import CURRENT_BOOT_STATES, Boot, BootState, WritebackPolicy, WritebackState
    from ..models import Writeback as WritebackRow

    size = file.stat().st_size
    digest = await qemu_img.digest(file)
    async with operation(core, actor, Permission.MANAGE_IMAGES, "image.version.apply") as op:
        existing = (
            await op.session.execute(select(ImageVersion).where(ImageVersion.file_name == file.name))
        ).scalar_one_or_none()
        if existing is not None:
            return existing.number
        image = await op.session.get(Image, image_id, with_for_update=True)
        if image is None:
            raise NotFound(f"image {image_id} was removed meanwhile")
        latest = await op.session.execute(
            select(func.max(ImageVersion.number)).where(ImageVersion.image_id == image.id)
        )
        number = (latest.scalar_one() or 0) + 1
        version = await _add_version(op, image, number, file.name, "raw", size, digest, notes[:NOTES_MAX], activate)
        writeback = await op.session.get(WritebackRow, writeback_id)
        if writeback is not None:
            writeback.state = WritebackState.DISCARD.value
        machine = await op.session.get(Machine, machine_id)
        if machine is not None:
            before = snapshot(machine)
            machine.writeback_policy = WritebackPolicy.FRESH.value
            op.stamp(machine)
            for boot in (
                await op.session.execute(
                    select(Boot).where(
                        Boot.machine_id == machine.id, Boot.state.in_([s.value for s in CURRENT_BOOT_STATES])
                    )
                )
            ).scalars():
                boot.state, boot.end_reason, boot.ended_by = BootState.ENDING.value, "applied", actor.username
            op.audit("machine", machine.id, machine.name, before, snapshot(machine), detail="maintenance ended")
        op.audit(
            "image",
            image.id,
            f"{image.name} v{number}",
            None,
            snapshot(version),
            detail=f"applied from the maintenance writeback of {machine.name if machine else 'a removed machine'}",
        )
        op.intent_changed()
        return number


# --- changes -------------------------------------------------------------------------


async def activate_version(core: Core, actor: Actor, name: str, number: int) -> ImageVersionView:
    """Make ``number`` the version machines boot (unless they pin another). Running sessions keep theirs."""
    async with operation(core, actor, Permission.MANAGE_IMAGES, "image.activate") as op:
        image = await _image_row(op.session, name, lock=True)
        version = await _version_row(op.session, image, number)
        versions = await _versions(op.session, image.id)
        previous = next((v.number for v in versions if v.is_active), None)
        if version.is_active:
            raise Conflict(f"version {number} of image '{image.name}' is already active")
        await _deactivate_all(op, image)
        version.is_active = True
        op.stamp(image)
        await op.flush(conflict=f"image '{image.name}' was changed by another console meanwhile; retry")
        op.audit("image", image.id, f"{image.name} v{number}", {"active_version": previous}, {"active_version": number})
        return _version_view(image, version)


async def set_efi_loader(core: Core, actor: Actor, name: str, efi_loader: str | None) -> ImageView:
    """The EFI file ``uefi-secure`` machines booting this system image start (``sanboot --filename``),
    e.g. its Microsoft-signed shim; None: the firmware's default loader of the disk. Boots prepared
    from now on use it (a running one keeps what it booted)."""
    if efi_loader is not None:
        efi_loader = check_efi_loader(efi_loader.strip() if isinstance(efi_loader, str) else efi_loader)
    async with operation(core, actor, Permission.MANAGE_IMAGES, "image.update") as op:
        image = await _image_row(op.session, name, lock=True)
        if image.kind != ImageKind.SYSTEM.value and efi_loader is not None:
            raise Invalid(
                "efi_loader", f"'{image.name}' is a {image.kind} image; only a system image is started by firmware"
            )
        before = {"efi_loader": image.efi_loader}
        image.efi_loader = efi_loader
        op.stamp(image)
        await op.flush(conflict=f"image '{image.name}' was changed by another console meanwhile; retry")
        op.audit("image", image.id, image.name, before, {"efi_loader": efi_loader})
        op.intent_changed()
    return await get_image(core, actor, image.name)


def _names(machines: list[str]) -> str:
    return ", ".join(machines)


async def remove_image(core: Core, actor: Actor, name: str, version: int | None = None) -> None:
    """Remove an image with all its versions, or one version. Anything a live session runs on,
    a machine pins or (for a whole image) a machine is assigned to is refused, naming the machines."""
    async with operation(
        core, actor, Permission.MANAGE_IMAGES, "image.delete" if version is None else "image.version.delete"
    ) as op:
        image = await _image_row(op.session, name, lock=True)
        versions = await _versions(op.session, image.id)
        doomed = versions if version is None else [await _version_row(op.session, image, version)]
        ids = [v.id for v in doomed]
        in_use = sorted({m for names in (await _in_use_by(op.session, ids)).values() for m in names})
        if in_use:
            raise Conflict(
                f"image '{image.name}'"
                + (f" version {version}" if version else "")
                + f" is in use by the current boots of {_names(in_use)}; take them offline first",
                Fix("session.stop", in_use[0] if len(in_use) == 1 else None),
            )
        pinned = sorted({m for names in (await _pinned_by(op.session, ids)).values() for m in names})
        if pinned:
            raise Conflict(
                f"image '{image.name}'"
                + (f" version {version}" if version else "")
                + f" is pinned by {_names(pinned)}; unpin first",
                Fix("machine.unpin", pinned[0] if len(pinned) == 1 else None),
            )
        if version is None:
            assigned = (await _assigned_to(op.session, [image.id])).get(image.id, [])
            if assigned:
                raise Conflict(
                    f"image '{image.name}' is assigned to {_names(assigned)}; assign them another image (or none) first",
                    Fix("machine.assign", assigned[0] if len(assigned) == 1 else None),
                )
            before = snapshot(image)
            before["versions"] = [v.number for v in versions]
            await op.session.delete(image)
            op.audit("image", image.id, image.name, before, None)
        else:
            target = doomed[0]
            if target.is_active:
                others = [str(v.number) for v in versions if v.id != target.id]
                if others:
                    raise Conflict(
                        f"version {version} is the active version of image '{image.name}'; activate "
                        f"another one first (version {' or '.join(others)})",
                        Fix("image.activate", image=image.name, version=int(others[-1])),
                    )
                raise Conflict(
                    f"version {version} is the only version of image '{image.name}'; remove the whole image instead",
                    Fix("image.delete", image=image.name),
                )
            before = snapshot(target)
            await op.session.delete(target)
            op.stamp(image)
            op.audit("image", image.id, f"{image.name} v{version}", before, None)
        files = [version_path(core.settings, v) for v in doomed]
    # after the commit: a file without a row is garbage, a row without its file would be broken
    _remove_files(files)


# --- machines ---------------------------------------------------------------------------


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()


async def assign_image(
    core: Core,
    actor: Actor,
    machine_name: str,
    image: str | None = UNCHANGED,
    pin_version: int | None = UNCHANGED,
    game_image: str | None = UNCHANGED,
    game_pin_version: int | None = UNCHANGED,
) -> MachineView:
    """Set what a machine boots: see ``assign``."""
    from .machines import get_machine, get_row

    async with operation(core, actor, Permission.MANAGE_MACHINES, "machine.assign_image") as op:
        machine = await get_row(op.session, machine_name)
        before = snapshot(machine)
        await assign(op, machine, image, pin_version, game_image, game_pin_version)
        op.audit("machine", machine.id, machine.name, before, snapshot(machine))
    return await get_machine(core, actor, machine.name)


async def assign_images(core: Core, actor: Actor, machine_names: list[str], image: str | None) -> list[str]:
    """Give several machines one system image, all or none (one audit event each)."""
    from .machines import get_row

    if not machine_names:
        raise Invalid("machines", "name at least one machine")
    async with operation(core, actor, Permission.MANAGE_MACHINES, "machine.assign_image") as op:
        done = []
        for name in dict.fromkeys(machine_names):
            machine = await get_row(op.session, name)
            before = snapshot(machine)
            await assign(op, machine, image)
            op.audit("machine", machine.id, machine.name, before, snapshot(machine))
            done.append(machine.name)
        return done


def _check_pin(value: Any, field: str) -> None:
    if (
        value is not UNCHANGED
        and value is not None
        and (isinstance(value, bool) or not isinstance(value, int) or value < 1)
    ):
        raise Invalid(field, "must be a version number (1 or more)")


async def assign(
    op: Operation,
    machine: Machine,
    image: str | None = UNCHANGED,
    pin_version: int | None = UNCHANGED,
    game_image: str | None = UNCHANGED,
    game_pin_version: int | None = UNCHANGED,
) -> None:
    """Within the caller's operation: set a machine's system image (``image``: a name, or None for
    none) and pinned version (a number, or None to follow the active version), and likewise its game
    disk. Choosing another image drops an old pin unless a new one is given. Only system images can
    be a machine's image, only game images its game image."""
    if all(v is UNCHANGED for v in (image, pin_version, game_image, game_pin_version)):
        raise Invalid("image", "give an image (or none) or a version to pin (or unpin)")
    _check_pin(pin_version, "pin_version")
    _check_pin(game_pin_version, "game_pin_version")
    for kind, name_value, pin_value, image_attr, pin_attr, field, pin_field in (
        (ImageKind.SYSTEM, image, pin_version, "image_id", "pinned_version_id", "image", "pin_version"),
        (
            ImageKind.GAME,
            game_image,
            game_pin_version,
            "game_image_id",
            "game_pinned_version_id",
            "game_image",
            "game_pin_version",
        ),
    ):
        image_id = getattr(machine, image_attr)
        if name_value is not UNCHANGED:
            chosen = None if name_value is None else await _image_row(op.session, name_value)
            if chosen is not None and chosen.kind != kind.value:
                raise Invalid(
                    field, f"'{chosen.name}' is a {chosen.kind} image; a machine's {field} must be a {kind.value} image"
                )
            image_id = None if chosen is None else chosen.id
            if image_id != getattr(machine, image_attr):
                setattr(machine, pin_attr, None)
            setattr(machine, image_attr, image_id)
        if pin_value is None:
            setattr(machine, pin_attr, None)
        elif pin_value is not UNCHANGED:
            if image_id is None:
                raise Invalid(pin_field, f"machine '{machine.name}' has no {field}; give one to pin a version of")
            target = await op.session.get(Image, image_id)
            assert target is not None
            setattr(machine, pin_attr, (await _version_row(op.session, target, pin_value)).id)
    op.stamp(machine)
    await op.flush(conflict=f"machine '{machine.name}' or its image was changed by another console; retry")
    op.intent_changed()
