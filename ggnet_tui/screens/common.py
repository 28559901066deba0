"""Small helpers shared by the screens: status colours, times, service calls with plain-word errors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.text import Text

from core.errors import GgnetError

STATUS_STYLE = {
    "offline": "red",
    "online": "yellow",
    "booting": "cyan",
    "booted": "bold green",
    "active": "green",
    "starting": "cyan",
    "stopping": "yellow",
    "stopped": "",
    "error": "bold red",
    "ok": "green",
    "denied": "bold red",
    "failed": "red",
    "ready": "green",
    "requested": "cyan",
    "preparing": "cyan",
    "ending": "yellow",
    "ended": "",
    "refused": "red",
    "disabled": "dim",
}


def status(text: str | None) -> Text:
    value = text or "-"
    return Text(value, style=STATUS_STYLE.get(value, ""))


def when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%m-%d %H:%M")


def full_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def attempt(screen: Any, coro: Any, done: str | None = None) -> Any:
    """Run a changing service call; refusals become a notification in core's own words.
    Returns the result, or None when it failed."""
    app = screen.app
    try:
        result = await app.run_work(coro)
    except GgnetError as exc:
        app.notify(exc.message, severity="error", timeout=8)
        return None
    except Exception as exc:
        app.notify(app.incident(exc), severity="error", timeout=12)
        return None
    if done:
        app.notify(done, timeout=4)
    return result if result is not None else True
