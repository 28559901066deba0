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


MACHINE_COLUMNS = [
    "name",
    "mac",
    "ip",
    "boot_mode",
    "image",
    "pinned_version",
    "game_image",
    "writeback_policy",
    "status",
]
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
@click.option("--boots", type=click.IntRange(0, 1000), default=5, show_default=True, help="Latest boots to show.")
@json_option
@run
async def machine_show(state: State, name: str, boots: int, as_json: bool) -> None:
    """A machine, what the engine last saw of it, and its latest boots."""
    from core.services import boots as boot_service
    from core.services import machines

    from .boot import HISTORY_COLUMNS

    core, actor = await state.login()
    data = (await machines.get_machine(core, actor, name)).to_json()
    history = [b.to_json() for b in await boot_service.boot_history(core, actor, name, max(boots, 1))][:boots]
    if as_json:
        emit_json({**data, "boots": history})
        return
    details(data)
    if boots:
        click.echo("\nlatest boots:")
        table(history, [c for c in HISTORY_COLUMNS if c != "machine"])


@machine.command("set")
@click.argument("name")
@click.option("--name", "new_name", default=None, help="Rename the machine.")
@click.option("--mac", default=None)
@click.option("--ip", default=None, help="IPv4 address; an empty string clears it.")
@click.option("--boot-mode", type=BOOT_MODES, default=None)
@click.option("--initiator-iqn", default=None)
@click.option("--enable/--disable", "boot_enabled", default=None, help="May the machine boot at all.")
@click.option(
    "--keep-writeback/--discard-writeback",
    default=None,
    help="Keep the machine's writeback across reboots (policy keep), or a fresh one at every boot (fresh).",
)
@click.option("--image", "image_name", metavar="IMAGE", default=None, help="Boot this system image.")
@click.option("--no-image", is_flag=True, help="Assign no image.")
@click.option("--pin-version", type=click.IntRange(min=1), default=None, help="Boot this version, not the active one.")
@click.option("--unpin", is_flag=True, help="Follow the image's active version again.")
@click.option("--game-image", metavar="IMAGE", default=None, help="Serve this game image as a second disk.")
@click.option("--no-game-image", is_flag=True, help="No game disk.")
@click.option("--game-pin-version", type=click.IntRange(min=1), default=None, help="Pin the game image's version.")
@click.option("--game-unpin", is_flag=True, help="Follow the game image's active version again.")
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
    boot_enabled: bool | None,
    keep_writeback: bool | None,
    image_name: str | None,
    no_image: bool,
    pin_version: int | None,
    unpin: bool,
    game_image: str | None,
    no_game_image: bool,
    game_pin_version: int | None,
    game_unpin: bool,
    as_json: bool,
) -> None:
    """Change a machine; only the options given are changed, all or nothing."""
    from core.services import machines

    options = {
        "name": new_name,
        "mac": mac,
        "boot_mode": boot_mode,
        "initiator_iqn": initiator_iqn,
        "boot_enabled": boot_enabled,
        "keep_writeback": keep_writeback,
    }
    fields: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if ip is not None:
        fields["ip"] = ip.strip() or None
    pairs = (
        ("image", image_name, no_image, "--image/--no-image"),
        ("pin_version", pin_version, unpin, "--pin-version/--unpin"),
        ("game_image", game_image, no_game_image, "--game-image/--no-game-image"),
        ("game_pin_version", game_pin_version, game_unpin, "--game-pin-version/--game-unpin"),
    )
    for key, value, clear, names in pairs:
        if value is not None and clear:
            raise click.UsageError(f"{names} take one of the two")
        if value is not None or clear:
            fields[key] = value
    if not fields:
        raise click.UsageError("nothing to change: give at least one option")
    core, actor = await state.login()
    changed = await machines.update_machine(core, actor, name, **fields)
    emit_json(changed.to_json()) if as_json else click.echo(f"machine '{changed.name}' changed")


@machine.command("discovered")
@json_option
@run
async def machine_discovered(state: State, as_json: bool) -> None:
    """PCs that asked to boot but are not registered (adopt them with `ggnet machine adopt`)."""
    from core.services import boots

    core, actor = await state.login()
    rows = [d.to_json() for d in await boots.discovered(core, actor)]
    emit_json(rows) if as_json else table(rows, ["mac", "first_seen_at", "last_seen_at", "requests", "last_address"])


@machine.command("adopt")
@click.argument("mac")
@click.argument("name")
@click.option("--image", "image_name", metavar="IMAGE", default=None, help="Boot this system image.")
@click.option("--boot-mode", type=BOOT_MODES, default=None)
@click.option("--ip", default=None)
@run
async def machine_adopt(
    state: State, mac: str, name: str, image_name: str | None, boot_mode: str | None, ip: str | None
) -> None:
    """Register a discovered PC as machine NAME."""
    from core.services import boots

    core, actor = await state.login()
    item = {"mac": mac, "name": name, "image": image_name, "boot_mode": boot_mode, "ip": ip}
    names = await boots.adopt(core, actor, [item])
    click.echo(f"machine '{names[0]}' adopted ({mac})")


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
    """Add machines from a CSV file with a header (name,mac[,ip][,boot_mode][,game_image]); all or nothing."""
    from core.services import machines

    text = machines.read_csv_file(file)
    core, actor = await state.login()
    names = await machines.import_csv(core, actor, text, source=file.name)
    click.echo(f"imported {len(names)} machines from {file}")
