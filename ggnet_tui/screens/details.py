"""One machine's details (Enter on Machines): what the engine saw of it (status and why, login,
disk policy and writeback size, its images, bytes through its target and their rate) and its boot
history (when, which version, how long until its client logged in, from where, how it ended).
From here: prepare, take offline, edit, maintenance start / apply (as a job) / discard, reset disk."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from functools import lru_cache, partial
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from core.enums import MachineStatus, WritebackPolicy
from core.errors import GgnetError
from core.monitor import Throughput

from ..commands import bindings
from ..widgets.header import StatusHeader
from ..widgets.table import Cells, Column, KeyedTable
from .base import TableScreen
from .common import explain, full_time, rate, size, status, summarise, when
from .machines import image_text, open_machine_form
from .modals import ConfirmScreen, Field, FormScreen, TextScreen

HISTORY = 1000  # boots loaded; the count says how many there are in all
INSTALLED_AS = "machine-details"


async def open_details(app: Any, name: str) -> None:
    """Show machine ``name``'s details. One screen, installed at the first opening, serves every
    machine until logout: composing its header, table and footer anew cost more than reading and
    showing 1,000 boots. Turning to another machine, the history is read before the screen comes
    back, so it is laid out and painted once (not emptied, painted, filled and painted again)."""
    if not app.is_screen_installed(INSTALLED_AS):
        app.install_screen(MachineDetailsScreen(name), INSTALLED_AS)
    screen = app.get_screen(INSTALLED_AS)
    if screen in app.screen_stack:
        screen.follow(name)
        return
    if screen.is_mounted and name != screen.machine_name:
        fetched = None
        try:
            fetched = await screen.read(name)
        except Exception:  # the screen's own read says why (or files an incident), once shown
            pass
        screen.follow(name, fetched)
        if fetched is not None:
            screen.refreshes += 1
            screen.fresh = True
        # Painted once, when it has restyled itself on coming back: painted at once, it was painted
        # again (3-5 ms, some 20 ms later) for the widgets that reported their new content after
        # the restyle, and for the screen below, which the push refreshes
        with app.batch_update():
            app.push_screen(INSTALLED_AS)
            restyled = asyncio.Event()
            if screen.call_later(restyled.set):  # runs after the screen's ScreenResume
                with suppress(TimeoutError):  # never a console that stops painting
                    await asyncio.wait_for(restyled.wait(), 1)
        screen.refresh()
        return
    app.push_screen(INSTALLED_AS)


async def forget_details(app: Any) -> None:
    """At logout (once no mode's stack holds it): the next user gets a fresh screen."""
    if app.is_screen_installed(INSTALLED_AS):
        screen = app.get_screen(INSTALLED_AS)
        app.uninstall_screen(INSTALLED_AS)
        await screen.remove()


YES, NO = "yes", "no"


def login_after(boot: Any) -> str:
    """How long from the boot request to its client's iSCSI login."""
    if boot.login_at is None:
        return "-"
    seconds = max((boot.login_at - boot.requested_at).total_seconds(), 0)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def outcome(boot: Any) -> Text:
    return _outcome(boot.state, boot.end_reason, boot.error)


@lru_cache(maxsize=512)
def _outcome(state: str, end_reason: str | None, error: str | None) -> Text:
    # shared between rows: a history repeats a few outcomes (the table copies a cell to crop it)
    if error:
        return Text(f"{state}: {error}", style="red")
    if end_reason:
        return Text(f"{state} ({end_reason})", style=status(state).style)
    return status(state)


class MachineDetailsScreen(TableScreen):
    SCOPE = "details"
    TITLE = "Machine"
    BINDINGS = bindings("table", "details")
    COLUMNS = [
        Column("when", "Requested", 11, 0),
        Column("image", "Image", 8, 0, max_width=20),
        Column("login", "Login", 5, 1),  # how long from the boot request to the client's login
        Column("client", "Client", 9, 2, max_width=15),
        Column("outcome", "Outcome", 10, 0, max_width=34),
        Column("by", "By", 6, 3, max_width=16),
        Column("games", "Games", 6, 4, max_width=20),
        Column("prepare", "Prepared in", 6, 5, default=False),
        Column("ended", "Ended", 11, 5, default=False),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.machine_name = name
        self.machine: Any = None
        self.boots: dict[str, Any] = {}
        self._rows: dict[str, tuple[Any, Cells]] = {}
        self.io: Throughput | None = None
        self._summary_lines = 1  # "loading ..."

    @property
    def header_title(self) -> str:
        return f"Machine {self.machine_name}"

    def follow(self, name: str, fetched: Any = None) -> None:
        """Show machine ``name`` from now on; another machine's rows, filter and cursor go at once.
        With its details ``fetched`` already, they take the last machine's place in one step (the
        table is not emptied and laid out in between)."""
        if name == self.machine_name:
            return
        self.machine_name = name
        self.machine = None
        self.boots, self._rows, self.io = {}, {}, None
        if not self.is_mounted:
            return
        header = self.query_one(StatusHeader)
        header.title = self.header_title
        header.refresh()
        self.sub_title = ""
        self.clear_filter(apply=False)
        table = self.table
        table.move_cursor(0)  # the newest boot, at the top, as on a first opening
        table.scroll_home(animate=False, immediate=True, x_axis=False)
        if fetched is None:
            self.query_one("#summary", Static).update("loading ...")
            self._summary_lines = 1
            self.set_rows([])
        else:
            self.show(fetched)

    def compose_body(self) -> ComposeResult:
        yield Static("loading ...", id="summary")
        yield from super().compose_body()

    async def fetch(self) -> Any:
        return await self.read(self.machine_name)

    async def read(self, name: str) -> tuple[str, Any]:
        from core.services import boots

        return name, await boots.machine_details(self.core, self.actor, name, limit=HISTORY)

    def show(self, fetched: Any) -> None:
        asked, data = fetched
        if asked != self.machine_name:
            return  # read before the screen turned to another machine
        m = self.machine = data.machine
        self.machine_name = m.name  # renamed meanwhile: follow it
        if self.io is None:
            self.io = Throughput(2 * float(self.core.settings.observe_seconds))
        self.io.update(m.read_bytes, m.written_bytes, m.observed_at, self.app.clock())  # type: ignore[attr-defined]
        summary = self._summary(m, data)
        lines = summary.plain.count("\n") + 1
        # as tall as before (its lines never wrap): repainted without laying the screen out again
        self.query_one("#summary", Static).update(summary, layout=lines != self._summary_lines)
        self._summary_lines = lines
        rows: list[tuple[str, Cells]] = []
        cache: dict[str, tuple[Any, Cells]] = {}
        self.boots = {}
        for b in data.boots:
            key = str(b.id)
            self.boots[key] = b
            signature = (b.state, b.login_at, b.login_address, b.ended_at, b.end_reason, b.error, b.prepare_ms)
            previous = self._rows.get(key)
            if previous is not None and previous[0] == signature:
                cells = previous[1]
            else:
                cells = {
                    "when": when(b.requested_at),
                    "image": image_text(b.image, b.image_version),
                    "games": image_text(b.game_image, b.game_version) if b.game_image else "-",
                    "login": login_after(b),
                    "client": b.login_address or b.client_address or "-",
                    "outcome": outcome(b),
                    "by": b.requested_by or b.origin,
                    "prepare": f"{b.prepare_ms} ms" if b.prepare_ms is not None else "-",
                    "ended": when(b.ended_at),
                }
            cache[key] = (signature, cells)
            rows.append((key, cells))
        self._rows = cache
        self.set_rows(rows)
        shown = len(data.boots)
        self.sub_title = f"{data.boots_total} boots" + (f", newest {shown} shown" if shown < data.boots_total else "")

    def _summary(self, m: Any, data: Any) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(m.name, style="bold")
        text.append(f"  {m.mac}  {m.ip or 'no IP'}  {m.boot_mode}")
        text.append("" if m.boot_enabled else "  may not boot", style="bold red")
        text.append("\nStatus  ", style="bold")
        text.append_text(status(m.status))
        if m.status == MachineStatus.FAILED.value and m.status_detail:
            text.append(f": {m.status_detail}", style="red")
        if m.logged_in:
            text.append(f", logged in from {m.client_address or '?'}")
        if m.last_seen_at:
            text.append(f", last seen {full_time(m.last_seen_at)}", style="dim")
        text.append("\nImage   ", style="bold")
        text.append(image_text(m.image, m.pinned_version) + (" (pinned)" if m.pinned_version else ""))
        text.append(f"   games {image_text(m.game_image, m.game_pinned_version)}")
        text.append("\nDisk    ", style="bold")
        policy = m.writeback_policy
        text.append(policy, style="bold yellow" if policy == WritebackPolicy.MAINTENANCE.value else "")
        text.append(f", writeback {size(m.writeback_bytes)}")
        io = self.io
        text.append("\nI/O     ", style="bold")
        if m.read_bytes is None:
            text.append("no target, or the target stack does not count bytes", style="dim")
        else:
            text.append(f"read {size(m.read_bytes)} ({rate(io.read_per_second if io else None)})")
            text.append(f"   written {size(m.written_bytes)} ({rate(io.written_per_second if io else None)})")
        return text

    # --- actions ---------------------------------------------------------------

    def key_escape(self) -> None:
        if self.filter_text or self.query_one("#filter").has_focus:
            super().key_escape()
        else:
            self.action_back()

    def action_back(self) -> None:
        self.dismiss()

    def on_keyed_table_row_selected(self, event: KeyedTable.RowSelected) -> None:
        self.action_boot()

    def action_boot(self) -> None:
        b = self.boots.get(self.cursor_key or "")
        if b is None:
            return
        body = Text()
        for label, value in (
            (
                "requested",
                f"{full_time(b.requested_at)} by {b.requested_by or b.origin} from {b.client_address or '-'}",
            ),
            ("state", b.state),
            ("image", image_text(b.image, b.image_version)),
            ("games", image_text(b.game_image, b.game_version) if b.game_image else "-"),
            ("disk", b.policy),
            ("target", b.target_iqn or "-"),
            ("prepared", f"{full_time(b.prepared_at)} in {b.prepare_ms} ms" if b.prepared_at else "-"),
            ("logged in", f"{full_time(b.login_at)} from {b.login_address or '?'}" if b.login_at else "-"),
            ("login after", login_after(b)),
            ("logged out", full_time(b.logout_at)),
            ("ended", f"{full_time(b.ended_at)} ({b.end_reason or '-'})" if b.ended_at else "-"),
            ("error", b.error or "-"),
        ):
            body.append(f"{label:>12}  ", style="bold")
            body.append(f"{value}\n")
        self.app.push_screen(TextScreen(f"Boot {b.id} of {b.machine}", body))

    def _done(self, verb: str, results: Any) -> None:
        if results and results is not True:
            bad = [r for r in results if not r.ok]
            self.notify(summarise(results, verb, self.app), severity="error" if bad else "information", timeout=8)
        self.action_refresh_now()

    async def _call(self, coro: Any, done: str | None = None) -> Any:
        from .common import attempt

        result = await attempt(self, coro, done)
        self.action_refresh_now()
        return result

    def action_start(self) -> None:
        from core.services import boots

        async def go() -> None:
            answer = await self._call(boots.prepare(self.core, self.actor, [self.machine_name]))
            if answer:
                self._done("prepared", answer[0])

        self.run_worker(go(), group="work")

    def action_stop(self) -> None:
        from .sessions import stop_with_confirmation

        stop_with_confirmation(self, [self.machine_name], partial(self._done, "taken offline"))

    def action_edit(self) -> None:
        if self.machine is not None:
            open_machine_form(self, self.machine, lambda _result: self.action_refresh_now())

    def action_maintenance(self) -> None:
        from core.services import boots

        async def go() -> None:
            said = await self._call(boots.maintenance_start(self.core, self.actor, self.machine_name))
            if said:
                self.notify(str(said), timeout=8)

        def answer(yes: bool | None) -> None:
            if yes:
                self.run_worker(go(), group="work")

        self.app.push_screen(
            ConfirmScreen(
                f"Start maintenance on {self.machine_name}? Its changes then survive its reboots, until you apply "
                "them as the image's next version or discard them.",
                yes="Start",
            ),
            answer,
        )

    def action_apply(self) -> None:
        from core.services import boots

        from ..jobs import start_apply

        async def submit(values: dict[str, str]) -> Any:
            activate = values["activate"] == YES
            request_id = await self.app.run_work(  # type: ignore[attr-defined]
                boots.maintenance_apply(
                    self.core, self.actor, self.machine_name, activate=activate, notes=values["notes"]
                )
            )
            return (request_id, activate)

        def submitted(result: Any) -> None:
            if result and result is not True:
                request_id, activate = result
                job = start_apply(self.app, self.machine_name, request_id, activate)
                self.notify(f"Job {job.id}: {job.title}; see Jobs (0).", timeout=5)
                self.action_refresh_now()

        self.app.push_screen(
            FormScreen(
                f"Apply {self.machine_name}'s maintenance as the image's next version",
                [
                    Field("activate", "Activate", YES, choices=(YES, NO)),
                    Field("notes", "Note", "", placeholder="what changed, e.g. GPU driver 551.23"),
                ],
                submit,
                "Apply",
            ),
            submitted,
        )

    def action_discard(self) -> None:
        from core.services import boots

        self._forced(
            lambda force: boots.maintenance_discard(self.core, self.actor, self.machine_name, force=force),
            f"Discard {self.machine_name}'s maintenance writeback? Its changes are lost; it boots fresh again.",
            "Discard",
        )

    def action_reset(self) -> None:
        from core.services import boots

        async def reset(force: bool) -> Any:
            results = await boots.reset_writeback(self.core, self.actor, [self.machine_name], force=force)
            refused = next((r for r in results if not r.ok), None)
            if refused is not None:
                raise GgnetError(refused.message, refused.fix)
            return results[0].message

        self._forced(
            reset,
            f"Reset {self.machine_name}'s disk? Its kept writeback is dropped: the next boot starts clean.",
            "Reset",
        )

    def _forced(self, call: Any, question: str, yes: str) -> None:
        """Ask, then act; if core refuses because the client is logged in, ask again with the
        machine's name to type, and act with force."""

        async def go(force: bool) -> None:
            try:
                said = await self.app.run_work(call(force))  # type: ignore[attr-defined]
            except GgnetError as exc:
                if exc.fix is not None and exc.fix.action == "force" and not force:
                    self.app.push_screen(
                        ConfirmScreen(
                            f"{exc.message}: going on cuts its disk off while it runs.",
                            yes=f"{yes} anyway",
                            type_to_confirm=self.machine_name,
                        ),
                        partial(self._if_sure, go(True)),
                    )
                else:
                    self.notify(explain(self.app, exc), severity="error", timeout=8)
                return
            except Exception as exc:
                self.notify(self.app.incident(exc), severity="error", timeout=12)  # type: ignore[attr-defined]
                return
            self.notify(str(said), timeout=6)
            self.action_refresh_now()

        self.app.push_screen(ConfirmScreen(question, yes=yes), partial(self._if_sure, go(False)))

    def _if_sure(self, work: Any, sure: bool | None) -> None:
        if sure:
            self.run_worker(work, group="work")
        else:
            work.close()  # the coroutine never runs
