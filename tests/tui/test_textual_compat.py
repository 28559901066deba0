"""Fails loudly when Textual moves the internals ggnet_tui/textual_compat.py relies on: the
console must keep printing one line with an incident id, never a traceback with locals."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

from textual.app import App

from ggnet_tui.textual_compat import PRIVATE_APP_API

CRASHING_APP = """
import sys
from ggnet_tui.textual_compat import IncidentOnCrash

class Crashing(IncidentOnCrash):
    def report_crash(self, error):
        print(f"reported {type(error).__name__}", file=sys.stderr)
        return "cafe0123"

    def on_mount(self):
        password = "hunter2-secret"  # a local that Textual's traceback would print
        raise RuntimeError(f"boom {len(password)}")

Crashing().run(headless=True)
"""


def test_the_private_app_api_is_where_the_console_expects_it():
    app = App()
    for name in PRIVATE_APP_API:
        assert hasattr(app, name), f"Textual no longer has App.{name}: update ggnet_tui/textual_compat.py"
    assert list(inspect.signature(App._handle_exception).parameters) == ["self", "error"]
    assert list(inspect.signature(App._print_error_renderables).parameters) == ["self"]
    assert isinstance(app._exit_renderables, list)


def test_an_unhandled_error_leaves_one_line_with_the_incident_and_no_traceback(tmp_path: Path):
    script = tmp_path / "crashing.py"
    script.write_text(CRASHING_APP)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert "reported RuntimeError" in result.stderr
    assert "ggnet: unexpected error (incident cafe0123); details are in the ggnet log" in result.stderr
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
