"""Placeholder entry to the console until the TUI lands."""

from __future__ import annotations

from typing import Any


def run_console(state: Any) -> int:
    from textual.app import App, ComposeResult
    from textual.widgets import Footer, Header, Static

    class Placeholder(App[None]):
        BINDINGS = [("q", "quit", "Quit")]

        def compose(self) -> ComposeResult:
            yield Header()
            yield Static("ggnet console — coming soon. Use the `ggnet` command line meanwhile.")
            yield Footer()

    Placeholder().run()
    return 0
