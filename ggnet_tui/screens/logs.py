"""Logs: ggnet's own JSON-lines log file, newest lines appended as they are written."""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import RichLog

from ..commands import bindings
from .base import GgnetScreen

TAIL_BYTES = 64 * 1024
LEVEL_STYLE = {"error": "bold red", "warning": "yellow", "info": "", "debug": "dim"}


def format_line(line: str) -> Text:
    try:
        record = json.loads(line)
    except ValueError:
        return Text(line)
    stamp = str(record.pop("timestamp", ""))[:19].replace("T", " ")
    level = str(record.pop("level", ""))
    event = str(record.pop("event", ""))
    record.pop("exception", None)  # tracebacks stay in the file; the id is enough here
    text = Text(f"{stamp} ", style="dim")
    text.append(f"{level:<7} ", style=LEVEL_STYLE.get(level, ""))
    text.append(event)
    if record:
        text.append("  " + " ".join(f"{k}={v}" for k, v in record.items()), style="dim")
    return text


class LogsScreen(GgnetScreen):
    SCOPE = "logs"
    TITLE = "Logs"
    BINDINGS = bindings("logs")

    def __init__(self) -> None:
        super().__init__()
        self.position = 0
        self.follow = True

    def compose_body(self) -> ComposeResult:
        yield RichLog(id="log", max_lines=2000, wrap=False)

    async def fetch(self) -> Any:
        path = self.core.settings.log_file
        try:
            with open(path, "rb") as handle:
                handle.seek(0, 2)
                size = handle.tell()
                if size < self.position:  # rotated or truncated
                    self.position = 0
                start = max(self.position, size - TAIL_BYTES)
                handle.seek(start)
                data = handle.read(size - start)
        except OSError as exc:
            return [f"cannot read {path}: {exc.strerror}"]
        skip_partial = start > self.position and start > 0
        self.position = size
        lines = data.decode("utf-8", "replace").splitlines()
        return lines[1:] if skip_partial else lines

    def show(self, lines: Any) -> None:
        log = self.query_one(RichLog)
        for line in lines:
            log.write(format_line(line), scroll_end=self.follow)

    def action_follow(self) -> None:
        self.follow = not self.follow
        self.notify("Following new lines." if self.follow else "Stopped following.", timeout=2)
