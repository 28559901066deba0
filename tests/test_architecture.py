"""The shape of the code, checked: core never imports the UI, and heavy imports stay deferred."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cli import ADMIN_PW, ok, run_ggnet

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    """import-linter's contracts in pyproject.toml (core never imports ggnet_tui or textual)."""
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _modules_after(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(out.stdout))


def test_command_line_does_not_load_the_console_or_rtslib() -> None:
    """`ggnet machine list` must start fast: the CLI loads neither Textual nor rtslib-fb."""
    loaded = _modules_after("import ggnet_tui.cli")
    assert not {m for m in loaded if m.split(".")[0] in ("textual", "rtslib_fb", "rtslib", "alembic")}


def _modules_of_command(args: list[str], env: dict[str, str]) -> set[str]:
    """Modules loaded by the whole run of a ggnet command (in a fresh interpreter). Also checks that
    the command left garbage collection on (it is off only during start-up)."""
    code = (
        "import atexit, gc, json, sys\n"
        "atexit.register(lambda: print(json.dumps([gc.isenabled(), sorted(sys.modules)]),"
        " file=sys.stderr))\n"
        f"sys.argv = ['ggnet', *{args!r}]\n"
        "from ggnet_tui.cli import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    gc_enabled, modules = json.loads(result.stderr.splitlines()[-1])
    assert gc_enabled
    return set(modules)


def _packages(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


# loaded by a command only at a cost and for no use: the console, migrations, the development log renderer
NOT_FOR_COMMANDS = {"textual", "rich", "pygments", "alembic", "mako", "rtslib_fb", "fastapi", "starlette", "uvicorn"}


def test_machine_list_loads_no_console_migrations_or_log_renderer(site: dict[str, str]) -> None:
    loaded = _packages(
        _modules_of_command(["machine", "list"], {**site, "GGNET_USER": "admin", "GGNET_PASSWORD": ADMIN_PW})
    )
    assert "sqlalchemy" in loaded  # the probe sees what the command loaded
    assert loaded & NOT_FOR_COMMANDS == set()


def test_machine_list_after_ggnet_login_loads_no_password_hashing(site: dict[str, str]) -> None:
    ok(run_ggnet(["login"], site, GGNET_USER="admin", GGNET_PASSWORD=ADMIN_PW))
    modules = _modules_of_command(["machine", "list"], site)
    loaded = _packages(modules)
    assert "sqlalchemy" in loaded
    assert loaded & (NOT_FOR_COMMANDS | {"passlib", "bcrypt"}) == set()
    assert "structlog" not in loaded  # it logs nothing: the log's library loads at the first line (core.log)
    # about 20 ms: the partial indexes do not load it (core.models.PartialIndex)
    assert "sqlalchemy.dialects.sqlite" in modules
    assert "sqlalchemy.dialects.postgresql" not in modules


def test_core_services_do_not_load_the_ui_or_rtslib() -> None:
    loaded = _modules_after(
        "import core.services.machines, core.services.boots, core.services.images, core.services.targets,"
        " core.engine.engine"
    )
    assert not {m for m in loaded if m.split(".")[0] in ("textual", "ggnet_tui", "rtslib_fb")}
