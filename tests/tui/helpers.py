"""Shared pieces of the console tests: an app on a test database, a replaced PC probe, and
waiting for the console to reach a state (Pilot steps, never wall-clock assertions)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from textual.widgets import Input

from core.iscsi.base import BackendHealth
from core.monitor import Host
from ggnet_tui.app import GgnetApp

FROZEN = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)
PASSWORD = "correct-horse-1"


class FakeProbe:
    """The PC probe replaced at core's boundary: pinging PCs that do not exist cannot be reached."""

    def __init__(self, online: set[str] | None = None) -> None:
        self.online = set(online or ())

    async def __call__(self, hosts: list[Host]) -> set[str]:
        return {h.name for h in hosts} & self.online


def random_disk(path: Any, megabytes: int) -> str:
    """A file of random bytes (real data, so qemu-img has something to convert)."""
    import os

    with open(path, "wb") as handle:
        for _ in range(megabytes):
            handle.write(os.urandom(1 << 20))
    return str(path)


def make_app(core: Any, probe: FakeProbe | None = None, **kwargs: Any) -> GgnetApp:
    # no target stack in these tests: a deterministic "unavailable" instead of probing the host
    core.use_backend(None, BackendHealth(False, "no iSCSI target stack (test)"))
    app = GgnetApp(core, probe=probe or FakeProbe(), hostname="bootsrv", clock=lambda: FROZEN, **kwargs)
    app.animation_level = "none"
    return app


async def wait_for(pilot: Any, condition: Callable[[], Any], steps: int = 200, delay: float = 0.05) -> Any:
    """Let the app run until ``condition()`` holds (bounded number of steps, not a time assertion)."""
    for _ in range(steps):
        value = condition()
        if value:
            return value
        await pilot.pause(delay)
    raise AssertionError(f"the console never reached the expected state: {condition}")


async def type_text(pilot: Any, text: str) -> None:
    await pilot.press(*text)


async def fill(pilot: Any, selector: str, text: str, typed: bool = False) -> None:
    """Focus an Input and put ``text`` in it: typed key by key, or set at once (faster; the
    submission still goes through the keyboard)."""
    box = pilot.app.screen.query_one(selector, Input)
    box.focus()
    box.value = "" if typed else text
    box.cursor_position = len(box.value)
    await pilot.pause()
    if typed:
        await type_text(pilot, text)


async def log_in(pilot: Any, username: str, password: str = PASSWORD) -> None:
    app = pilot.app
    await wait_for(
        pilot,
        lambda: app.opened.is_set() and type(app.screen).__name__ == "LoginScreen" and app.screen.query("#password"),
    )
    await fill(pilot, "#username", username)
    await pilot.press("enter")
    await fill(pilot, "#password", password)
    await pilot.press("enter")


def quiet(app: Any) -> None:
    """No blinking cursors and no toasts: screenshots must not depend on timing."""
    for screen in app.screen_stack:
        for box in screen.query(Input):
            box.cursor_blink = False
    app.clear_notifications()


def message(app: Any) -> str:
    from textual.widgets import Static

    return str(app.screen.query_one("#message", Static).render())
