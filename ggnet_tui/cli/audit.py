"""`ggnet audit ...`."""

from __future__ import annotations

import click

from .base import State, emit_json, json_option, run, table

# --- audit ------------------------------------------------------------------


@click.group()
def audit() -> None:
    """Read the audit trail."""


@audit.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--actor", "actor_name", default=None, help="Only events by this user.")
@click.option("--action", default=None, help="Only this action or family (e.g. machine, machine.create).")
@click.option("--object", "object_name", default=None, help="Only events whose object name contains this.")
@json_option
@run
async def audit_list(
    state: State,
    limit: int,
    offset: int,
    actor_name: str | None,
    action: str | None,
    object_name: str | None,
    as_json: bool,
) -> None:
    from core.services import audit as audit_service

    core, actor = await state.login()
    events, total = await audit_service.list_events(
        core, actor, limit=limit, offset=offset, actor_name=actor_name, action=action, object_name=object_name
    )
    rows = [e.to_json() for e in events]
    if as_json:
        emit_json(rows)
    else:
        table(rows, ["at", "actor", "action", "object_type", "object_name", "outcome", "detail"])
        click.echo(f"({len(rows)} of {total})")
