"""`ggnet session ...`, `ggnet maintenance ...`, `ggnet target list` and `ggnet reconcile`.

They record intent; the engine (`ggnet serve`) acts on it within a second. When no engine runs
for this server, the command runs one pass itself, so it also works on a server without
`ggnet serve` (a PC still needs `ggnet serve`, or a console, to answer its boot request).
"""

from __future__ import annotations

from typing import Any

import click

from .base import State, emit_json, fail, json_option, run, table, with_fix

wait_option = click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until the engine has acted (or just record the intent).",
)


@click.group()
def session() -> None:
    """Prepare machines' boots ahead of power-on, take them offline, list them."""


async def _converge(core: Any) -> None:
    """Let the engine act now: here, when no engine runs for this server."""
    from core.services import boots

    await boots.converge_now(core)


@session.command("start")
@click.argument("machines", nargs=-1)
@click.option("--all", "all_machines", is_flag=True, help="Every machine that has an image.")
@click.option("--keep-writeback", is_flag=True, help="Keep the machines' writebacks across boots from now on.")
@click.option("--maintenance", is_flag=True, help="Maintenance (one machine): see `ggnet maintenance start`.")
@wait_option
@run
async def session_start(
    state: State, machines: tuple[str, ...], all_machines: bool, keep_writeback: bool, maintenance: bool, wait: bool
) -> int:
    """Prepare boots now (writeback, target), before the PCs are switched on; PCs that are simply
    switched on are prepared by their own boot request."""
    from core.services import boots

    if keep_writeback and maintenance:
        raise click.UsageError("--keep-writeback and --maintenance exclude each other (maintenance keeps it anyway)")
    if not machines and not all_machines:
        raise click.UsageError("name at least one machine, or use --all")
    core, actor = await state.login()
    if maintenance:
        if all_machines or len(machines) != 1:
            raise click.UsageError("--maintenance takes exactly one machine")
        click.echo(await boots.maintenance_start(core, actor, machines[0]))
    results, boot_ids = await boots.prepare(
        core, actor, list(machines), all_machines=all_machines, policy="keep" if keep_writeback else None
    )
    failed = [r for r in results if not r.ok]
    for result in failed:
        fail(with_fix(result.message, result.fix))
    if not wait or not boot_ids:
        for result in results:
            if result.ok:
                click.echo(result.message)
        return 1 if failed else 0
    await _converge(core)
    rows = await boots.wait_boots(core, boot_ids)
    for boot in sorted(rows.values(), key=lambda b: b.machine_name):
        if boot.state == "ready":
            click.echo(f"{boot.machine_name}: ready ({boot.target_iqn})")
        elif boot.state in ("requested", "preparing"):
            fail(f"{boot.machine_name}: still {boot.state}; is `ggnet serve` running on this server?")
            failed.append(boot)  # type: ignore[arg-type]
        else:
            fail(f"{boot.machine_name}: {boot.state}: {boot.error or boot.end_reason}")
            failed.append(boot)  # type: ignore[arg-type]
    return 1 if failed else 0


@session.command("stop")
@click.argument("machines", nargs=-1)
@click.option("--all", "all_machines", is_flag=True, help="Every machine that is booted or being prepared.")
@click.option("--force", is_flag=True, help="Even while the client is logged in (cuts its disk off).")
@click.option("--apply", is_flag=True, help="Maintenance: then apply the writeback as the image's next version.")
@click.option("--no-activate", is_flag=True, help="With --apply: add the version without activating it.")
@wait_option
@run
async def session_stop(
    state: State,
    machines: tuple[str, ...],
    all_machines: bool,
    force: bool,
    apply: bool,
    no_activate: bool,
    wait: bool,
) -> int:
    """Take machines offline now: their targets go (and fresh writebacks with them)."""
    from core.services import boots

    if no_activate and not apply:
        raise click.UsageError("--no-activate goes with --apply")
    if not machines and not all_machines:
        raise click.UsageError("name at least one machine, or use --all")
    core, actor = await state.login()
    results = await boots.take_offline(core, actor, list(machines), all_machines=all_machines, force=force)
    code = 0
    for result in results:
        if result.ok:
            click.echo(result.message)
        else:
            fail(with_fix(result.message, result.fix))
            code = 1
    if wait:
        await _converge(core)
    if apply and code == 0:
        for name in machines:
            code |= await _apply(core, actor, name, activate=not no_activate, notes="", wait=wait)
    return code


@session.command("list")
@json_option
@run
async def session_list(state: State, as_json: bool) -> None:
    """Current boots, as the engine last saw them."""
    from core.services import boots

    core, actor = await state.login()
    rows = [b.to_json() for b in await boots.current_boots(core, actor)]
    if as_json:
        emit_json(rows)
    else:
        table(
            rows,
            ["machine", "state", "policy", "image", "image_version", "logged_in", "login_address", "prepared_at"],
        )


# --- maintenance -------------------------------------------------------------------------------


@click.group()
def maintenance() -> None:
    """A machine whose changes become its image's next version (one machine per image)."""


@maintenance.command("start")
@click.argument("machine")
@run
async def maintenance_start(state: State, machine: str) -> None:
    """From its next boot the machine keeps its writeback across reboots."""
    from core.services import boots

    core, actor = await state.login()
    click.echo(await boots.maintenance_start(core, actor, machine))


async def _apply(core: Any, actor: Any, machine: str, *, activate: bool, notes: str, wait: bool) -> int:
    from core.services import boots

    request_id = await boots.maintenance_apply(core, actor, machine, activate=activate, notes=notes)
    if not wait:
        click.echo(f"{machine}: apply requested")
        return 0
    await _converge(core)
    request = await boots.wait_request(core, request_id)
    if request is None or request.state == "pending":
        fail(f"{machine}: the apply is still pending; is `ggnet serve` running on this server?")
        return 1
    if request.state == "failed":
        fail(f"{machine}: {request.error}")
        return 1
    version = (request.result or {}).get("version")
    click.echo(f"{machine}: applied as version {version}" + (" (active)" if activate else " (not activated)"))
    return 0


@maintenance.command("apply")
@click.argument("machine")
@click.option("--no-activate", is_flag=True, help="Add the version without activating it.")
@click.option("--note", default="", help="A note on the new version.")
@wait_option
@run
async def maintenance_apply(state: State, machine: str, no_activate: bool, note: str, wait: bool) -> int:
    """The machine's writeback becomes its image's next version (its client must be shut down)."""
    core, actor = await state.login()
    return await _apply(core, actor, machine, activate=not no_activate, notes=note, wait=wait)


@maintenance.command("discard")
@click.argument("machine")
@click.option("--force", is_flag=True, help="Even while the client is logged in.")
@run
async def maintenance_discard(state: State, machine: str, force: bool) -> None:
    """Drop the machine's maintenance writeback; it boots fresh again."""
    from core.services import boots

    core, actor = await state.login()
    click.echo(await boots.maintenance_discard(core, actor, machine, force=force))


# --- targets and reconcile ------------------------------------------------------------------------


@click.group()
def target() -> None:
    """What the iSCSI target stack holds."""


@target.command("list")
@json_option
@run
async def target_list(state: State, as_json: bool) -> None:
    """Actual targets: IQN, owner machine, LUNs, ACL, logged-in initiator and address."""
    from core.services import targets

    core, actor = await state.login()
    rows = [t.to_json() for t in await targets.list_targets(core, actor)]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        row["luns"] = ",".join(str(k) for k in row["luns"])
        row["acls"] = ",".join(row["acls"])
        row["initiators"] = ",".join(row["initiators"])
        row["addresses"] = ",".join(row["addresses"])
        row["drift"] = "stray" if row["owned"] and not row["wanted"] else ""
    table(rows, ["iqn", "machine", "luns", "acls", "initiators", "addresses", "drift"])


@click.command()
@click.option("--dry-run", is_flag=True, help="Only show what differs.")
@json_option
@run
async def reconcile(state: State, dry_run: bool, as_json: bool) -> int:
    """One engine pass now: make the target stack, writebacks and boot files match the database.
    As root on the boot server it needs no ggnet login (it acts as the local system)."""
    from core.engine.report import PassReport
    from core.services import boots

    core, actor = await state.login_or_system()
    request_id = await boots.request_pass(core, actor, dry_run=dry_run)
    await _converge(core)
    request = await boots.wait_request(core, request_id)
    if request is None or request.state == "pending":
        fail("the engine did not answer; is `ggnet serve` stuck? (see its log)")
        return 1
    if request.state == "failed":
        fail(request.error or "the pass failed")
        return 1
    report = PassReport.from_json(request.result or {})
    if as_json:
        emit_json(report.to_json())
        return 0 if report.ok else 1
    if not report.drift:
        click.echo("no drift: the target stack, writebacks and boot files match the database")
    for item in report.drift:
        click.echo(("would repair: " if dry_run else "drift: ") + item.describe())
    for line in report.repaired:
        click.echo(f"repaired: {line}")
    for line in report.errors:
        fail(line)
    return 0 if report.ok else 1
