"""`ggnet image ...`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from .base import State, details, emit_json, json_option, run, table

IMAGE_COLUMNS = ["name", "kind", "active_version", "version_count", "size", "efi_loader", "assigned_to"]
VERSION_COLUMNS = ["number", "active", "source_format", "size", "sha256", "created_at", "created_by", "used_by"]


def _size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


class _Progress:
    """A percentage on stderr, only when stderr is a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.shown = False
        self.enabled = sys.stderr.isatty()

    def __call__(self, percent: float) -> None:
        if self.enabled:
            click.echo(f"\r{self.label}: {percent:5.1f}%", err=True, nl=False)
            self.shown = True

    def done(self) -> None:
        if self.shown:
            click.echo("", err=True)
            self.shown = False


@click.group()
def image() -> None:
    """Import disk images and manage their versions."""


@image.command("import")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="Name of the new image.")
@click.option("--kind", type=click.Choice(["system", "game"]), default="system", show_default=True)
@click.option("--new-version-of", metavar="NAME", default=None, help="Add the file as the next version of NAME.")
@click.option("--no-activate", is_flag=True, help="With --new-version-of: do not make the new version active.")
@click.option("--notes", default="", help="Free text kept with the version.")
@json_option
@run
async def image_import(
    state: State,
    path: Path,
    name: str | None,
    kind: str,
    new_version_of: str | None,
    no_activate: bool,
    notes: str,
    as_json: bool,
) -> None:
    """Import PATH (VHD, VHDX, VMDK, QCOW2, VDI or raw; the format is detected from the content).

    The sha256 printed is the ggnet-disk-v1 digest of the served raw disk: SHA-256 over the
    disk's size and the SHA-256 of each non-zero 1 MiB block with its index. It identifies
    the disk's bytes (holes and zeros alike) but is not what sha256sum prints."""
    from core.services import images

    if (name is None) == (new_version_of is None):
        raise click.UsageError("give either --name NAME (a new image) or --new-version-of NAME")
    if no_activate and new_version_of is None:
        raise click.UsageError("--no-activate only applies with --new-version-of")
    core, actor = await state.login()
    progress = _Progress(f"importing {path.name}")
    try:
        version = await images.import_image(
            core,
            actor,
            path,
            name=name,
            kind=kind,
            progress=progress,
            new_version_of=new_version_of,
            notes=notes,
            activate=not no_activate,
        )
    except asyncio.CancelledError:
        progress.done()
        click.echo("import cancelled; nothing was kept", err=True)
        raise
    finally:
        progress.done()
    if as_json:
        emit_json(version.to_json())
        return
    state_word = "active" if version.is_active else "not active"
    click.echo(
        f"image '{version.image}' version {version.number} imported from {version.source_format} "
        f"({_size(version.virtual_size)}, {state_word}); sha256 (ggnet-disk-v1) {version.sha256}"
    )


@image.command("list")
@json_option
@run
async def image_list(state: State, as_json: bool) -> None:
    from core.services import images

    core, actor = await state.login()
    found = await images.list_images(core, actor)
    if as_json:
        emit_json([i.to_json() for i in found])
        return
    rows = [{**i.to_json(), "size": _size(i.virtual_size), "assigned_to": ", ".join(i.assigned_to)} for i in found]
    table(rows, IMAGE_COLUMNS)


@image.command("show")
@click.argument("name")
@json_option
@run
async def image_show(state: State, name: str, as_json: bool) -> None:
    from core.services import images

    core, actor = await state.login()
    found = await images.get_image(core, actor, name)
    if as_json:
        emit_json(found.to_json())
        return
    data = found.to_json()
    data.pop("versions")
    data["virtual_size"] = _size(found.virtual_size)
    data["assigned_to"] = ", ".join(found.assigned_to)
    details(data)
    click.echo("")
    _versions_table(found.versions)


def _versions_table(versions) -> None:  # type: ignore[no-untyped-def]
    rows = []
    for v in versions:
        used = [f"{m} (running)" for m in v.in_use_by] + [f"{m} (pinned)" for m in v.pinned_by]
        rows.append(
            {
                **v.to_json(),
                "active": "*" if v.is_active else "",
                "size": _size(v.virtual_size),
                "sha256": v.sha256[:16],
                "created_at": v.created_at.strftime("%Y-%m-%d %H:%M"),
                "used_by": ", ".join(used),
            }
        )
    table(rows, VERSION_COLUMNS)


@image.command("versions")
@click.argument("name")
@json_option
@run
async def image_versions(state: State, name: str, as_json: bool) -> None:
    """The versions of image NAME (sha256: the ggnet-disk-v1 digest, see `ggnet image import --help`)."""
    from core.services import images

    core, actor = await state.login()
    found = await images.list_versions(core, actor, name)
    emit_json([v.to_json() for v in found]) if as_json else _versions_table(found)


@image.command("activate")
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
@run
async def image_activate(state: State, name: str, version: int) -> None:
    """Make VERSION the one machines boot (machines that pin a version keep theirs)."""
    from core.services import images

    core, actor = await state.login()
    done = await images.activate_version(core, actor, name, version)
    click.echo(f"image '{done.image}' version {done.number} is now active")


@image.command("set")
@click.argument("name")
@click.option(
    "--efi-loader",
    metavar="PATH",
    default=None,
    help="The signed loader uefi-secure machines start from this image's disk, e.g. '\\EFI\\BOOT\\shimx64.efi'.",
)
@click.option("--no-efi-loader", is_flag=True, help="Start the disk's default loader (\\EFI\\BOOT\\BOOTX64.EFI).")
@json_option
@run
async def image_set(state: State, name: str, efi_loader: str | None, no_efi_loader: bool, as_json: bool) -> None:
    """Change an image; boots prepared from now on use the change."""
    from core.services import images

    if (efi_loader is None) == (not no_efi_loader):
        raise click.UsageError("give --efi-loader PATH or --no-efi-loader")
    core, actor = await state.login()
    changed = await images.set_efi_loader(core, actor, name, None if no_efi_loader else efi_loader)
    if as_json:
        emit_json(changed.to_json())
        return
    loader = changed.efi_loader or "the disk's default loader"
    click.echo(f"image '{changed.name}': uefi-secure machines start {loader}")


@image.command("rm")
@click.argument("name")
@click.option("--version", type=click.IntRange(min=1), default=None, help="Remove only this version.")
@run
async def image_rm(state: State, name: str, version: int | None) -> None:
    """Remove an image (all versions) or one version; refused while machines use it."""
    from core.services import images

    core, actor = await state.login()
    await images.remove_image(core, actor, name, version)
    click.echo(f"image '{name}' version {version} removed" if version else f"image '{name}' removed")
