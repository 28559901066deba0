"""Boots: every machine's current boot as the engine last saw it (or the boot history); take a
machine offline with an explicit confirmation when its client is still logged in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text

from core.enums import BootState
from core.errors import GgnetError

from ..commands import bindings
from ..widgets.table import Column
from .base import TableScreen
from .common import explain, status, summarise, when
from .modals import ConfirmScreen


def stop_with_confirmation(screen: Any, names: list[str], done: Callable[[Any], None]) -> None:
    """Take machines offline; if a client is still logged in, the operator types its name to force."""
    from core.services import boots

    app = screen.app

    async def stop(force: bool) -> Any:
        return await app.run_work(boots.take_offline(app.core, app.actor, names, force=force))

    async def check_then_stop() -> None:
        try:
            current = await boots.current_boots(app.core, app.actor)
        except GgnetError as exc:
            app.notify(explain(app, exc), severity="error")
            return
        logged_in = [b.machine for b in current if b.machine in names and b.logged_in]
        if not logged_in:
            done(await _guarded(app, stop(False)))
            return
        who = ", ".join(logged_in)
        word = logged_in[0] if len(logged_in) == 1 else "offline"

        def answer(yes: bool | None) -> None:
            if yes:
                app.run_worker(_finish(app, stop(True), done), group="work")

        app.push_screen(
            ConfirmScreen(
                f"The client of {who} is still logged in: taking it offline cuts its disk off while it runs.",
                yes="Offline anyway",
                type_to_confirm=word,
            ),
            answer,
        )

    app.run_worker(check_then_stop(), group="work")


async def _guarded(app: Any, coro: Any) -> Any:
    try:
        return await coro
    except GgnetError as exc:
        app.notify(explain(app, exc), severity="error", timeout=8)
    except Exception as exc:
        app.notify(app.incident(exc), severity="error", timeout=12)
    return None


async def _finish(app: Any, coro: Any, done: Callable[[Any], None]) -> None:
    done(await _guarded(app, coro))


class SessionsScreen(TableScreen):
    SCOPE = "sessions"
    TITLE = "Boots"
    BINDINGS = bindings("table", "sessions")
    COLUMNS = [
        Column("machine", "Machine", 15, 0),
        Column("state", "State", 9, 0),
        Column("login", "iSCSI", 9, 0),
        Column("client", "Client", 15, 2),
        Column("image", "Image", 14, 1),
        Column("policy", "Disk", 5, 3),
        Column("since", "Since", 11, 4),
        Column("by", "By", 10, 5),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.show_ended = False

    async def fetch(self) -> Any:
        from core.services import boots

        if self.show_ended:
            return await boots.boot_history(self.core, self.actor, limit=500)
        return await boots.current_boots(self.core, self.actor)

    def show(self, data: Any) -> None:
        rows = []
        for b in data:
            if b.logged_in is None:
                login = "yes" if b.login_at and not b.logout_at else "-"
            else:
                login = "logged in" if b.logged_in else "no"
            image = f"{b.image} v{b.image_version}" if b.image else "-"
            rows.append(
                (
                    str(b.id),
                    {
                        "machine": b.machine,
                        "state": status(b.state),
                        "login": Text(login, style="bold green" if login in ("logged in", "yes") else ""),
                        "client": b.login_address or b.client_address or "-",
                        "image": image,
                        "policy": b.policy[:5],
                        "since": when(b.requested_at),
                        "by": b.requested_by or "-",
                    },
                )
            )
        self.set_rows(rows)
        self.sub_title = f"{len(rows)} {'boots in the history' if self.show_ended else 'current boots'}"
        failed = [b for b in data if b.state in (BootState.FAILED.value, BootState.REFUSED.value) and b.error]
        if failed:
            self.set_notice("; ".join(f"{b.machine}: {b.error}" for b in failed[:3]))

    def action_toggle_ended(self) -> None:
        self.show_ended = not self.show_ended
        self.action_refresh_now()

    def action_stop(self) -> None:
        key = self.cursor_key
        if key is None:
            return
        cells = self.table.rows_by_key.get(key, {})
        name = str(cells.get("machine", ""))
        if name:
            stop_with_confirmation(self, [name], self._done)

    def _done(self, results: Any) -> None:
        if results:
            bad = [r for r in results if not r.ok]
            self.notify(
                summarise(results, "taken offline", self.app), severity="error" if bad else "information", timeout=6
            )
        self.action_refresh_now()
