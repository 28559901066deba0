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
import contextlib
import errno
import os
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..auth import Actor, Permission
from ..config import Settings
from ..context import Core
from ..errors import Conflict, Invalid, NotFound
from ..files import fsync_dir
from ..log import get_logger
from ..models import LIVE_SESSION_STATES, BootSession, Image, ImageKind, ImageVersion, Machine, utcnow
from ..storage import qemu_img, temps
from ..storage.untrusted import quoted
from ..validation import ImageName, Notes, StrictInput, parse, shown
from .base import Operation, operation, reading, snapshot
from .views import MachineView, View

IMAGES_DIR = "images"
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
    if not version_ids:
        return {}
    query = (
        select(Machine.pinned_version_id, Machine.name)
        .where(Machine.pinned_version_id.in_(version_ids))
        .order_by(Machine.name)
    )
    found: dict[int, list[str]] = {}
    for version_id, name in (await session.execute(query)).all():
        found.setdefault(version_id, []).append(name)
    return found


async def _in_use_by(session: AsyncSession, version_ids: list[int]) -> dict[int, list[str]]:
    if not version_ids:
        return {}
    query = (
        select(BootSession.image_version_id, Machine.name)
        .join(Machine, Machine.id == BootSession.machine_id)
        .where(
            BootSession.image_version_id.in_(version_ids), BootSession.state.in_([s.value for s in LIVE_SESSION_STATES])
        )
        .order_by(Machine.name)
    )
    found: dict[int, list[str]] = {}
    for version_id, name in (await session.execute(query)).all():
        found.setdefault(version_id, []).append(name)
    return found


async def _assigned_to(session: AsyncSession, image_ids: list[int]) -> dict[int, list[str]]:
    if not image_ids:
        return {}
    query = select(Machine.image_id, Machine.name).where(Machine.image_id.in_(image_ids)).order_by(Machine.name)
    found: dict[int, list[str]] = {}
    for image_id, name in (await session.execute(query)).all():
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
) -> ImageVersionView:
    """Import a disk file as a new image (version 1, active) or as the next version of
    ``new_version_of`` (active unless ``activate`` is False). Returns the new version."""
    fields: dict[str, Any] = {"kind": kind, "notes": notes, "activate": activate}
    if name is not None:
        fields["name"] = name
    if new_version_of is not None:
        fields["new_version_of"] = new_version_of
    data = parse(ImportInput, fields)
    _check_import(data)
    # refuse early (a refusal is audited under this action) before spending minutes converting;
    # the conversion itself runs outside any transaction
    action = "image.import" if data.new_version_of is None else "image.version.add"
    async with operation(core, actor, Permission.MANAGE_IMAGES, action) as op:
        if data.new_version_of is not None:
            await _image_row(op.session, data.new_version_of)
        elif (await op.session.execute(select(Image.id).where(Image.name == data.name))).first() is not None:
            raise Conflict(
                f"an image named '{data.name}' already exists; use --new-version-of {data.name} to add a version"
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
        try:
            digest = await qemu_img.convert_to_raw(probed, dest, progress, cancel)
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


async def add_version_from_writeback(
    core: Core, actor: Actor, image_id: int, writeback: Path, *, activate: bool = True, notes: str = ""
) -> int:
    """Turn a (no longer served) writeback into the image's next version; the file is moved,
    not copied. Returns the new version number."""
    writeback = Path(writeback)
    async with operation(core, actor, Permission.MANAGE_IMAGES, "image.version.apply") as op:
        image = await op.session.get(Image, image_id)
        if image is None:
            raise NotFound(f"no image with id {image_id}")
    if not writeback.is_file():
        raise NotFound(f"the writeback {writeback.name} does not exist")
    size = writeback.stat().st_size
    digest = await qemu_img.digest(writeback)
    directory = images_dir(core.settings)
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / _new_file_name()
    moved = await _move(writeback, dest)
    try:
        async with operation(core, actor, Permission.MANAGE_IMAGES, "image.version.apply") as op:
            image = await op.session.get(Image, image_id, with_for_update=True)
            if image is None:
                raise NotFound(f"image {image_id} was removed meanwhile")
            latest = await op.session.execute(
                select(func.max(ImageVersion.number)).where(ImageVersion.image_id == image.id)
            )
            number = (latest.scalar_one() or 0) + 1
            version = await _add_version(op, image, number, dest.name, "raw", size, digest, notes[:NOTES_MAX], activate)
            op.audit(
                "image",
                image.id,
                f"{image.name} v{number}",
                None,
                snapshot(version),
                detail=f"from writeback {writeback.name}",
            )
            return number
    except BaseException:
        if moved:  # give the writeback back, so the session's work is not lost
            with contextlib.suppress(OSError):
                os.replace(dest, writeback)
        _remove_files([dest])
        raise


async def _move(source: Path, dest: Path) -> bool:
    """Rename (constant time); across file systems, copy then remove. True if renamed."""
    try:
        os.replace(source, dest)
        fsync_dir(dest.parent)
        return True
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    from ..storage.writeback import CopyDriver

    await CopyDriver().create(source, dest)
    source.unlink()
    return False


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
                + f" is in use by the running sessions of {_names(in_use)}; stop them first"
            )
        pinned = sorted({m for names in (await _pinned_by(op.session, ids)).values() for m in names})
        if pinned:
            raise Conflict(
                f"image '{image.name}'"
                + (f" version {version}" if version else "")
                + f" is pinned by {_names(pinned)}; unpin first (ggnet machine set NAME --unpin)"
            )
        if version is None:
            assigned = (await _assigned_to(op.session, [image.id])).get(image.id, [])
            if assigned:
                raise Conflict(
                    f"image '{image.name}' is assigned to {_names(assigned)}; assign them another "
                    "image first (ggnet machine set NAME --image OTHER or --no-image)"
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
                        f"another one first (version {' or '.join(others)}), e.g. "
                        f"ggnet image activate {image.name} {others[-1]}"
                    )
                raise Conflict(
                    f"version {version} is the only version of image '{image.name}'; "
                    f"remove the whole image instead (ggnet image rm {image.name})"
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
    core: Core, actor: Actor, machine_name: str, image: str | None = UNCHANGED, pin_version: int | None = UNCHANGED
) -> MachineView:
    """Set what a machine boots. ``image``: a name, or None for no image. ``pin_version``: a
    version number to boot instead of the active one, or None to follow the active version.
    Choosing another image drops an old pin unless a new one is given."""
    from .machines import get_machine, get_row

    if image is UNCHANGED and pin_version is UNCHANGED:
        raise Invalid("image", "give an image (or none) or a version to pin (or unpin)")
    if (
        pin_version is not UNCHANGED
        and pin_version is not None
        and (isinstance(pin_version, bool) or not isinstance(pin_version, int) or pin_version < 1)
    ):
        raise Invalid("pin_version", "must be a version number (1 or more)")
    async with operation(core, actor, Permission.MANAGE_MACHINES, "machine.assign_image") as op:
        machine = await get_row(op.session, machine_name)
        before = snapshot(machine)
        image_id = machine.image_id
        if image is not UNCHANGED:
            image_id = None if image is None else (await _image_row(op.session, image)).id
            if image_id != machine.image_id:
                machine.pinned_version_id = None
            machine.image_id = image_id
        if pin_version is None:
            machine.pinned_version_id = None
        elif pin_version is not UNCHANGED:
            if image_id is None:
                raise Invalid(
                    "pin_version", f"machine '{machine.name}' has no image; give an image to pin a version of"
                )
            chosen = await op.session.get(Image, image_id)
            assert chosen is not None
            machine.pinned_version_id = (await _version_row(op.session, chosen, pin_version)).id
        op.stamp(machine)
        await op.flush(conflict=f"machine '{machine.name}' or its image was changed by another console; retry")
        op.audit("machine", machine.id, machine.name, before, snapshot(machine))
    return await get_machine(core, actor, machine.name)


async def resolve_version_for_machine(session: AsyncSession, machine: Machine) -> ImageVersion:
    """The version a machine boots: its pinned one, else its image's active one."""
    if machine.pinned_version_id is not None:
        version = await session.get(ImageVersion, machine.pinned_version_id)
        if version is not None:
            return version
    if machine.image_id is None:
        raise Conflict(
            f"machine '{machine.name}' has no image assigned; run 'ggnet machine set {machine.name} --image NAME'"
        )
    query = select(ImageVersion).where(ImageVersion.image_id == machine.image_id, ImageVersion.is_active.is_(True))
    version = (await session.execute(query)).scalar_one_or_none()
    if version is None:
        image = await session.get(Image, machine.image_id)
        label = image.name if image else str(machine.image_id)
        raise Conflict(
            f"image '{label}' of machine '{machine.name}' has no active version; run 'ggnet image activate {label} N'"
        )
    return version
