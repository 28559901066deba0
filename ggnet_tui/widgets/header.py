"""The first line of every screen: which server, which database, the target stack and who is logged in."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget


class StatusHeader(Widget):
    DEFAULT_CSS = "StatusHeader { dock: top; height: 1; }"

    def __init__(self, title: str) -> None:
        super().__init__()
        self.title = title

    def render(self) -> Text:
        app = self.app
        actor = getattr(app, "actor", None)
        ok = getattr(app, "backend_ok", None)
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(" ggnet ", style="bold reverse")
        text.append(f" {self.title} ", style="bold")
        text.append(f"| {getattr(app, 'hostname', '?')} ")
        text.append(f"| {getattr(app, 'db_kind', '?')} ")
        text.append("| target ")
        text.append(getattr(app, "backend_text", "?"), style="green" if ok else ("red" if ok is False else ""))
        if actor is not None:
            text.append(f" | {actor.username} ({actor.role.value})", style="bold")
        return text
