"""Sessions: what is running, with the live iSCSI login state; stop with an explicit confirmation
when a client is still logged in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text

from core.errors import GgnetError

from ..commands import bindings
from ..widgets.table import Column
from .base import TableScreen
from .common import status, when
from .modals import ConfirmScreen, Field, FormScreen


def stop_with_confirmation(screen: Any, names: list[str], done: Callable[[Any], None]) -> None:
    """Ask for options; if a client is still logged in, the operator types its name to force."""
    from core.services import sessions as module

    app = screen.app

    async def stop(options: dict[str, str], force: bool) -> Any:
        apply = options.get("after") == "apply as new version"
        return await app.run_work(module.stop_sessions(app.core, app.actor, names, force=force, apply=apply))

    async def check_then_stop(options: dict[str, str]) -> None:
        try:
            live = await module.list_sessions(app.core, app.actor, live_state=True)
        except GgnetError as exc:
            app.notify(exc.message, severity="error")
            return
        logged_in = [s.machine for s in live if s.machine in names and s.logged_in]
        if not logged_in:
            done(await _guarded(app, stop(options, False)))
            return
        who = ", ".join(logged_in)
        word = logged_in[0] if len(logged_in) == 1 else "stop"

        def answer(yes: bool | None) -> None:
            if yes:
                app.run_worker(_finish(app, stop(options, True), done), group="work")

        app.push_screen(
            ConfirmScreen(
                f"The client of {who} is still logged in: stopping cuts its disk off while it runs.",
                yes="Stop anyway",
                type_to_confirm=word,
            ),
            answer,
        )

    async def submit(values: dict[str, str]) -> dict[str, str]:
        return values

    def chosen(values: Any) -> None:
        if values:
            app.run_worker(check_then_stop(values), group="work")

    app.push_screen(
        FormScreen(
            f"Stop sessions on {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}",
            [
                Field(
                    "after",
                    "Writeback",
                    "discard or keep by kind",
                    choices=("discard or keep by kind", "apply as new version"),
                )
            ],
            submit,
            "Stop",
        ),
        chosen,
    )


async def _guarded(app: Any, coro: Any) -> Any:
    try:
        return await coro
    except GgnetError as exc:
        app.notify(exc.message, severity="error", timeout=8)
    except Exception as exc:
        app.notify(app.incident(exc), severity="error", timeout=12)
    return None


async def _finish(app: Any, coro: Any, done: Callable[[Any], None]) -> None:
    done(await _guarded(app, coro))


class SessionsScreen(TableScreen):
    SCOPE = "sessions"
    TITLE = "Sessions"
    BINDINGS = bindings("table", "sessions")
    COLUMNS = [
        Column("machine", "Machine", 15, 0),
        Column("state", "State", 8, 0),
        Column("kind", "Kind", 11, 1),
        Column("login", "iSCSI", 9, 0),
        Column("client", "Client", 15, 2),
        Column("image", "Image", 14, 3),
        Column("since", "Since", 11, 4),
        Column("by", "By", 10, 5),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.show_ended = False

    async def fetch(self) -> Any:
        from core.services import sessions as module

        return await module.list_sessions(self.core, self.actor, include_ended=self.show_ended)

    def show(self, data: Any) -> None:
        rows = []
        for s in data:
            login = "-" if s.logged_in is None else ("logged in" if s.logged_in else "no")
            image = f"{s.image} v{s.image_version}" if s.image else "-"
            rows.append(
                (
                    str(s.id),
                    {
                        "machine": s.machine,
                        "state": status(s.state),
                        "kind": s.kind,
                        "login": Text(login, style="bold green" if s.logged_in else ""),
                        "client": s.client_address or "-",
                        "image": image,
                        "since": when(s.started_at),
                        "by": s.started_by or "-",
                    },
                )
            )
        self.set_rows(rows)
        self.sub_title = f"{len(rows)} sessions"
        errors = [s for s in data if s.state == "error" and s.error]
        if errors:
            self.set_notice("; ".join(f"{s.machine}: {s.error}" for s in errors[:3]))

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
            for r in results:
                self.notify(r.message, severity="information" if r.ok else "error", timeout=6)
        self.action_refresh_now()
