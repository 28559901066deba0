"""`ggnet boot ...`: the iPXE scripts in the TFTP root and a dnsmasq configuration."""

from __future__ import annotations

from pathlib import Path

import click

from .base import State, emit_json, fail, json_option, run, table


@click.group()
def boot() -> None:
    """Boot files: iPXE scripts and the dnsmasq configuration."""


@boot.command("render")
@run
async def boot_render(state: State) -> int:
    """Write boot.ipxe into the TFTP root now (the engine does it on every pass anyway)."""
    from core.boot.ipxe import boot_url
    from core.engine.report import PassReport
    from core.services import boots

    core, actor = await state.login_or_system()
    request_id = await boots.request_pass(core, actor)
    await boots.converge_now(core)
    request = await boots.wait_request(core, request_id)
    report = PassReport.from_json(request.result or {}) if request is not None else None
    host = core.settings.boot_host
    if host is not None:
        click.echo(f"{core.settings.tftp_root}/boot.ipxe chains {boot_url(host, core.settings.http_listen[1])}")
    errors = [e for e in (report.errors if report else ["the engine did not answer"]) if "boot" in e]
    for line in errors:
        fail(line)
    return 1 if errors else 0


@boot.command("history")
@click.argument("machine", required=False)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
@run
async def boot_history(state: State, machine: str | None, limit: int, as_json: bool) -> None:
    """The latest boots (of one machine, or all), newest first."""
    from core.services import boots

    core, actor = await state.login()
    rows = [b.to_json() for b in await boots.boot_history(core, actor, machine, limit)]
    if as_json:
        emit_json(rows)
        return
    table(rows, HISTORY_COLUMNS)


HISTORY_COLUMNS = [
    "requested_at",
    "machine",
    "state",
    "image",
    "image_version",
    "policy",
    "prepare_ms",
    "login_at",
    "login_address",
    "logout_at",
    "error",
]


@boot.command("dnsmasq")
@click.option(
    "--mode",
    type=click.Choice(["proxy", "full"]),
    required=True,
    help="proxy: another DHCP server gives addresses; full: dnsmasq is the DHCP server.",
)
@click.option("--subnet", required=True, metavar="CIDR", help="The clients' LAN, such as 192.168.1.0/24.")
@click.option("--interface", metavar="IF", default=None, help="Serve only on this interface (e.g. eth0).")
@click.option(
    "--range",
    "pool",
    metavar="START-END",
    default=None,
    help="Full mode: address pool for clients without a reservation (default: reservations only).",
)
@click.option("--router", metavar="IP", default=None, help="Full mode: default gateway handed to clients.")
@click.option("--dns", metavar="IP", multiple=True, help="Full mode: DNS server handed to clients (repeatable).")
@click.option(
    "--uefi-binary",
    type=click.Choice(["ipxe.efi", "snponly.efi"]),
    default="ipxe.efi",
    show_default=True,
    help="iPXE build for UEFI clients.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Write here (atomically, after dnsmasq --test) instead of printing: a regular file or a new "
    "name in an existing directory.",
)
@run
async def boot_dnsmasq(
    state: State,
    mode: str,
    subnet: str,
    interface: str | None,
    pool: str | None,
    router: str | None,
    dns: tuple[str, ...],
    uefi_binary: str,
    output: Path | None,
) -> None:
    """A dnsmasq configuration for PXE (BIOS, UEFI, Secure Boot) → iPXE → boot.ipxe."""
    from core.services import boot as service

    options = {
        "mode": mode,
        "subnet": subnet,
        "interface": interface,
        "range": pool,
        "router": router,
        "dns": dns,
        "uefi_binary": uefi_binary,
    }
    core, actor = await state.login()
    if output is None:
        rendered = await service.dnsmasq_config(core, actor, **options)
        click.echo(rendered.text, nl=False)
        skipped: tuple[str, ...] | list[str] = rendered.skipped
    else:
        written = await service.write_dnsmasq_config(core, actor, output, **options)
        checked = "checked with dnsmasq --test" if written.tested else "NOT checked: dnsmasq is not installed here"
        click.echo(f"wrote {written.path} ({mode} mode, {written.machines} machines; {checked})")
        skipped = written.skipped
    for reason in skipped:
        click.echo(f"warning: {reason}", err=True)
