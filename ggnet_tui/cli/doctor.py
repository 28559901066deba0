"""`ggnet doctor`: check this server's readiness; runs without logging in (it reads no secrets)."""

from __future__ import annotations

import click

from .base import State, emit_json, json_option, run

_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


@click.command()
@json_option
@run
async def doctor(state: State, as_json: bool) -> int:
    """Check qemu-img, the iSCSI target stack, the data directory, the TFTP root and the database.

    Exit status 0 when nothing failed (warnings allowed), 1 otherwise.
    """
    from core.config import load_settings
    from core.doctor import failed, run_checks
    from core.log import configure_logging

    settings = load_settings(state.config_file)
    # log to the usual file only if its directory exists: the doctor creates nothing
    log_file = settings.log_file
    configure_logging(log_file if log_file is not None and log_file.parent.is_dir() else None)
    checks = await run_checks(settings)
    if as_json:
        emit_json({"ok": not failed(checks), "checks": [c.to_json() for c in checks]})
    else:
        width = max(len(c.name) for c in checks)
        for check in checks:
            click.echo(f"{_MARK[check.status]}  {check.name.ljust(width)}  {check.detail}")
        fails = sum(c.status == "fail" for c in checks)
        warns = sum(c.status == "warn" for c in checks)
        click.echo(f"\n{fails} failed, {warns} warnings" if fails or warns else "\nall checks passed")
    return 1 if failed(checks) else 0
