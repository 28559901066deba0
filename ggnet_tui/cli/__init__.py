"""The `ggnet` command line. It parses arguments, calls core services and prints results.

Exit status: 0 success; 1 refused, invalid, not found or denied (``error: <sentence>``
on stderr); 2 usage errors. One module per command group; each registers below.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

import click

from . import audit, boot, doctor, images, login, machines, serve, sessions, users
from .base import State, fail, not_utf8


class Ggnet(click.Group):
    """Arguments and GGNET_* variables must be UTF-8 before anything uses them."""

    def main(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        problem = not_utf8(list(sys.argv[1:] if args is None else args), os.environ)
        if problem is not None:
            fail(problem)
            sys.exit(1)
        return super().main(args, *rest, **kwargs)


@click.group(cls=Ggnet, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", metavar="FILE", help="TOML settings file (default: GGNET_CONFIG).")
@click.option("--user", "-u", metavar="NAME", help="Act as this ggnet user (default: GGNET_USER).")
@click.version_option(package_name="ggnet")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, user: str | None) -> None:
    """ggnet: the operator console of a diskless-boot server. Without a command, opens the console."""
    ctx.obj = State(config_file, user)
    if ctx.invoked_subcommand is not None:
        # Start-up (SQLAlchemy, pydantic, the models) creates a few hundred thousand objects that
        # live as long as the process: collecting garbage meanwhile is a tenth of a command's time
        # spent finding none. State.open turns collection back on once core is up (long commands
        # such as `serve` need it), and the end of the command in any case.
        gc.disable()
        ctx.call_on_close(gc.enable)
    if ctx.invoked_subcommand is None:
        from ..app import run_console

        sys.exit(run_console(ctx.obj))


main.add_command(users.init)
main.add_command(login.login)
main.add_command(login.logout)
main.add_command(users.user)
main.add_command(machines.machine)
main.add_command(audit.audit)
main.add_command(sessions.session)
main.add_command(sessions.target)
main.add_command(sessions.reconcile)
main.add_command(sessions.maintenance)
main.add_command(serve.serve)
main.add_command(images.image)
main.add_command(boot.boot)
main.add_command(doctor.doctor)
