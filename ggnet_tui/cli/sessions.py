"""`ggnet session ...`, `ggnet target list` and `ggnet reconcile`."""

from __future__ import annotations

import click

from .base import State, emit_json, fail, json_option, run, table


@click.group()
def session() -> None:
    """Start, stop and list boot sessions."""


def _report(results) -> int:  # type: ignore[no-untyped-def]
    """One line per machine; exit 1 when any failed."""
    for result in results:
        click.echo(result.message) if result.ok else fail(result.message)
    return 0 if all(r.ok for r in results) else 1


@session.command("start")
@click.argument("machines", nargs=-1)
@click.option("--all", "all_machines", is_flag=True, help="Every machine with an image and no running session.")
@click.option("--keep-writeback", is_flag=True, help="Keep the writeback when the session stops.")
@click.option(
    "--maintenance", is_flag=True, help="A maintenance session, whose writeback can become a new image version."
)
@click.option("--parallel", type=click.IntRange(1, 64), default=4, show_default=True)
@run
async def session_start(
    state: State, machines: tuple[str, ...], all_machines: bool, keep_writeback: bool, maintenance: bool, parallel: int
) -> int:
    """Start sessions: writeback, then target, then boot script."""
    from core.services import sessions

    if keep_writeback and maintenance:
        raise click.UsageError("--keep-writeback and --maintenance exclude each other (maintenance keeps it anyway)")
    if not machines and not all_machines:
        raise click.UsageError("name at least one machine, or use --all")
    kind = "maintenance" if maintenance else "keep" if keep_writeback else "normal"
    core, actor = await state.login()
    return _report(
        await sessions.start_sessions(
            core, actor, list(machines), all_machines=all_machines, kind=kind, parallel=parallel
        )
    )


@session.command("stop")
@click.argument("machines", nargs=-1)
@click.option("--all", "all_machines", is_flag=True, help="Every running session.")
@click.option("--force", is_flag=True, help="Stop even while the client is logged in (cuts its disk off).")
@click.option("--apply", is_flag=True, help="Maintenance sessions: turn the writeback into the image's next version.")
@click.option("--no-activate", is_flag=True, help="With --apply: add the version without activating it.")
@click.option("--parallel", type=click.IntRange(1, 64), default=4, show_default=True)
@run
async def session_stop(
    state: State,
    machines: tuple[str, ...],
    all_machines: bool,
    force: bool,
    apply: bool,
    no_activate: bool,
    parallel: int,
) -> int:
    """Stop sessions: target removed, writeback discarded (or kept, or applied)."""
    from core.services import sessions

    if no_activate and not apply:
        raise click.UsageError("--no-activate goes with --apply")
    if not machines and not all_machines:
        raise click.UsageError("name at least one machine, or use --all")
    core, actor = await state.login()
    return _report(
        await sessions.stop_sessions(
            core,
            actor,
            list(machines),
            all_machines=all_machines,
            force=force,
            apply=apply,
            activate=not no_activate,
            parallel=parallel,
        )
    )


@session.command("list")
@click.option("--all", "include_ended", is_flag=True, help="Include ended sessions.")
@json_option
@run
async def session_list(state: State, include_ended: bool, as_json: bool) -> None:
    from core.services import sessions

    core, actor = await state.login()
    rows = [s.to_json() for s in await sessions.list_sessions(core, actor, include_ended=include_ended)]
    if as_json:
        emit_json(rows)
    else:
        table(
            rows,
            [
                "machine",
                "kind",
                "state",
                "image",
                "image_version",
                "logged_in",
                "client_address",
                "started_at",
                "error",
            ],
        )


@click.group()
def target() -> None:
    """What the iSCSI target stack holds."""


@target.command("list")
@json_option
@run
async def target_list(state: State, as_json: bool) -> None:
    """Actual targets: IQN, owner machine, LUN, ACL, logged-in initiator and address."""
    from core.services import targets

    core, actor = await state.login()
    rows = [t.to_json() for t in await targets.list_targets(core, actor)]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        row["acls"] = ",".join(row["acls"])
        row["initiators"] = ",".join(row["initiators"])
        row["addresses"] = ",".join(row["addresses"])
        row["drift"] = "stray" if row["owned"] and not row["wanted"] else ""
    table(rows, ["iqn", "machine", "lun", "acls", "initiators", "addresses", "drift"])


@click.command()
@click.option("--dry-run", is_flag=True, help="Only print the drift.")
@json_option
@run
async def reconcile(state: State, dry_run: bool, as_json: bool) -> int:
    """Make the target stack and writebacks match the database; print the drift."""
    from core.services import targets

    core, actor = await state.login()
    report = await targets.reconcile(core, actor, dry_run=dry_run)
    if as_json:
        emit_json(
            {
                "drift": [d.to_json() for d in report.drift],
                "repaired": report.repaired,
                "errors": report.errors,
                "dry_run": report.dry_run,
                "boot_files_changed": report.boot_files_changed,
            }
        )
    else:
        if not report.drift:
            click.echo("no drift: the target stack matches the database")
        for item in report.drift:
            click.echo(
                f"{item.kind:18} {item.subject}"
                + (f" ({item.machine})" if item.machine else "")
                + ("" if dry_run else f" -> {item.repair}")
            )
        for error in report.errors:
            fail(error)
    return 1 if report.errors else 0
