"""The shape of the code, checked: core never imports the UI, and heavy imports stay deferred."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def test_core_services_do_not_load_the_ui_or_rtslib() -> None:
    loaded = _modules_after(
        "import core.services.machines, core.services.boots, core.services.images, core.services.targets,"
        " core.engine.engine"
    )
    assert not {m for m in loaded if m.split(".")[0] in ("textual", "ggnet_tui", "rtslib_fb")}
