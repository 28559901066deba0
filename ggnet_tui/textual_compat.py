"""The one place the console relies on Textual internals (Textual is pinned; see pyproject.toml).

Textual has no public hook for an unhandled exception: it prints a traceback with the values
of local variables (a password being checked, a CHAP secret) when the app exits. The console
logs the error with an incident id instead and prints one line naming that id. For that it
overrides ``App._handle_exception`` and ``App._print_error_renderables`` and reads
``App._exit_renderables``. tests/tui/test_textual_compat.py fails loudly when they move.
"""

from __future__ import annotations

import sys
from typing import Any

from textual.app import App

PRIVATE_APP_API = ("_handle_exception", "_print_error_renderables", "_exit_renderables")


class IncidentOnCrash(App[Any]):
    """An App whose unhandled exceptions are reported by ``report_crash`` (returns an incident
    id) and leave one line on stderr instead of Textual's traceback."""

    crash_incident: str | None = None

    def report_crash(self, error: BaseException) -> str:
        raise NotImplementedError

    def _handle_exception(self, error: Exception) -> None:
        self.crash_incident = self.report_crash(error)
        super()._handle_exception(error)

    def _print_error_renderables(self) -> None:
        if self._exit_renderables and self.crash_incident:
            self._exit_renderables.clear()
            print(
                f"ggnet: unexpected error (incident {self.crash_incident}); details are in the ggnet log",
                file=sys.stderr,
            )
        super()._print_error_renderables()
