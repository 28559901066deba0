"""`ggnet machine ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .base import State, details, emit_json, json_option, run, table

# --- machines ---------------------------------------------------------------


@click.group()
def machine() -> None:
    """Register and edit client PCs."""


MACHINE_COLUMNS = ["name", "mac", "ip", "boot_mode", "image", "pinned_version"]
BOOT_MODES = click.Choice(["bios", "uefi", "uefi-secure"])


@machine.command("add")
@click.argument("name")
@click.option("--mac", required=True, help="MAC address in any common notation.")
@click.option("--ip", default=None, help="IPv4 address (optional).")
@click.option("--boot-mode", type=BOOT_MODES, default="bios", show_default=True)
@click.option("--initiator-iqn", default=None, help="Initiator IQN (default: generated from the name).")
@json_option
@run
async def machine_add(
    state: State, name: str, mac: str, ip: str | None, boot_mode: str, initiator_iqn: str | None, as_json: bool
) -> None:
    from core.services import machines

    core, actor = await state.login()
    fields: dict[str, Any] = {"name": name, "mac": mac, "boot_mode": boot_mode}
    if ip is not None:
        fields["ip"] = ip
    if initiator_iqn is not None:
        fields["initiator_iqn"] = initiator_iqn
    created = await machines.add_machine(core, actor, **fields)
    emit_json(created.to_json()) if as_json else click.echo(f"machine '{created.name}' added ({created.mac})")


@machine.command("list")
@json_option
@run
async def machine_list(state: State, as_json: bool) -> None:
    from core.services import machines

    core, actor = await state.login()
    rows = [m.to_json() for m in await machines.list_machines(core, actor)]
    emit_json(rows) if as_json else table(rows, MACHINE_COLUMNS)


@machine.command("show")
@click.argument("name")
@json_option
@run
async def machine_show(state: State, name: str, as_json: bool) -> None:
    from core.services import machines

    core, actor = await state.login()
    data = (await machines.get_machine(core, actor, name)).to_json()
    emit_json(data) if as_json else details(data)


@machine.command("set")
@click.argument("name")
@click.option("--name", "new_name", default=None, help="Rename the machine.")
@click.option("--mac", default=None)
@click.option("--ip", default=None, help="IPv4 address; an empty string clears it.")
@click.option("--boot-mode", type=BOOT_MODES, default=None)
@click.option("--initiator-iqn", default=None)
@click.option(
    "--keep-writeback/--discard-writeback",
    default=None,
    help="Keep the machine's writeback across reboots, or discard it each time.",
)
@click.option("--image", "image_name", metavar="IMAGE", default=None, help="Boot this image.")
@click.option("--no-image", is_flag=True, help="Assign no image.")
@click.option("--pin-version", type=click.IntRange(min=1), default=None, help="Boot this version, not the active one.")
@click.option("--unpin", is_flag=True, help="Follow the image's active version again.")
@json_option
@run
async def machine_set(
    state: State,
    name: str,
    new_name: str | None,
    mac: str | None,
    ip: str | None,
    boot_mode: str | None,
    initiator_iqn: str | None,
    keep_writeback: bool | None,
    image_name: str | None,
    no_image: bool,
    pin_version: int | None,
    unpin: bool,
    as_json: bool,
) -> None:
    """Change a machine; only the options given are changed."""
    from core.services import images, machines

    options = {
        "name": new_name,
        "mac": mac,
        "boot_mode": boot_mode,
        "initiator_iqn": initiator_iqn,
        "keep_writeback": keep_writeback,
    }
    fields: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if ip is not None:
        fields["ip"] = ip.strip() or None
    assignment: dict[str, Any] = {}
    if (image_name is not None and no_image) or (pin_version is not None and unpin):
        raise click.UsageError("--image/--no-image and --pin-version/--unpin each take one of the two")
    if image_name is not None or no_image:
        assignment["image"] = image_name
    if pin_version is not None or unpin:
        assignment["pin_version"] = pin_version
    if not fields and not assignment:
        raise click.UsageError("nothing to change: give at least one option")
    core, actor = await state.login()
    if fields:
        changed = await machines.update_machine(core, actor, name, **fields)
        name = changed.name
    if assignment:
        changed = await images.assign_image(core, actor, name, **assignment)
    emit_json(changed.to_json()) if as_json else click.echo(f"machine '{changed.name}' changed")


@machine.command("rm")
@click.argument("name")
@run
async def machine_rm(state: State, name: str) -> None:
    from core.services import machines

    core, actor = await state.login()
    await machines.remove_machine(core, actor, name)
    click.echo(f"machine '{name.strip().lower()}' removed")


@machine.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@run
async def machine_import(state: State, file: Path) -> None:
    """Add machines from a CSV file with a header (name,mac[,ip][,boot_mode]); all or nothing."""
    from core.services import machines

    text = machines.read_csv_file(file)
    core, actor = await state.login()
    names = await machines.import_csv(core, actor, text, source=file.name)
    click.echo(f"imported {len(names)} machines from {file}")
