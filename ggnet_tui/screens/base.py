"""What every console screen shares: header, footer, permission-aware keys from the command
table, and a refresh loop that never overlaps and sleeps while the screen is hidden."""

from __future__ import annotations

import re
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Input, Static

from core.errors import GgnetError

from ..commands import BY_ACTION, bindings
from ..widgets.footer import KeyFooter
from ..widgets.header import StatusHeader
from ..widgets.table import Cells, Column, KeyedTable


class GgnetScreen(Screen):
    SCOPE = ""
    TITLE = ""
    REFRESH = True  # poll while shown

    def __init__(self) -> None:
        super().__init__()
        self._timer: Timer | None = None
        self._fetching = False
        self._again = False
        self._active = False
        self.refreshes = 0  # completed fetches (tests wait on it)
        self.fresh = False  # shown with data just read: no read when it comes back

    @property
    def core(self) -> Any:
        return self.app.core  # type: ignore[attr-defined]

    @property
    def actor(self) -> Any:
        return self.app.actor  # type: ignore[attr-defined]

    @property
    def header_title(self) -> str:
        return self.TITLE

    def compose(self) -> ComposeResult:
        yield StatusHeader(self.header_title)
        with Vertical(id="body"):
            yield from self.compose_body()
        # compact, without the palette's key (? lists it): at 80 columns every key that matters shows
        yield KeyFooter(compact=True, show_command_palette=False)

    def compose_body(self) -> ComposeResult:
        yield from ()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Hide what this user may not do (core refuses it anyway)."""
        command = BY_ACTION.get((self.SCOPE, action)) or BY_ACTION.get(("table", action))
        if command is not None and command.permission is not None:
            actor = self.actor
            return bool(actor and actor.can(command.permission))
        return True

    # --- refresh loop -------------------------------------------------------

    def on_screen_resume(self) -> None:
        self._active = True
        self.query_one(StatusHeader).refresh()
        if self.REFRESH:
            if self.fresh:  # shown with data read just before it came back: the next read at the interval
                self.fresh = False
                self._timer = self.set_timer(self.refresh_interval(), self.action_refresh_now)
            else:
                self.action_refresh_now()

    def on_screen_suspend(self) -> None:
        self._active = False
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def action_refresh_now(self) -> None:
        if self._fetching:  # one fetch at a time; ask for another when this one ends
            self._again = True
            return
        if self.app.actor is None:  # type: ignore[attr-defined]
            return
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._fetching = True
        self.run_worker(self._refresh_once(), group="refresh", exit_on_error=False)

    async def _refresh_once(self) -> None:
        try:
            data = await self.fetch()
            self.show(data)
        except GgnetError as exc:
            self.unavailable(exc.message)
        except Exception as exc:  # logged with an incident id; never a traceback on screen
            self.unavailable(self.app.incident(exc))  # type: ignore[attr-defined]
        finally:
            self.refreshes += 1
            self._fetching = False
            if self._active and self.REFRESH:
                if self._again:  # someone asked while this fetch ran: one more, right away
                    self._again = False
                    self.action_refresh_now()
                else:  # re-armed after each fetch, so fetches never overlap
                    self._timer = self.set_timer(self.refresh_interval(), self.action_refresh_now)

    def refresh_interval(self) -> float:
        return float(self.app.refresh_seconds)  # type: ignore[attr-defined]

    @property
    def settled(self) -> bool:
        """No fetch running or asked for (tests wait on it)."""
        return not self._fetching and not self._again

    async def fetch(self) -> Any:
        return None

    def show(self, data: Any) -> None:
        pass

    def unavailable(self, message: str) -> None:
        self.notify(message, severity="error", timeout=6)


class TableScreen(GgnetScreen):
    """A screen whose body is one keyed table with a `/` filter, sorting by any column (o, O, a
    click on a header) and a choice of columns (C), both remembered per screen (ggnet_tui.prefs)."""

    COLUMNS: list[Column] = []
    KEEP: tuple[str, ...] = ()  # columns that cannot be hidden (default: the first, which names the row)
    BINDINGS = bindings("table")
    AUTO_FOCUS = "#table"

    def __init__(self) -> None:
        super().__init__()
        self.filter_text = ""
        self.all_rows: list[tuple[str, Cells]] = []
        self.sort_column: str | None = None
        self.sort_reverse = False
        self._sort_keys: dict[str, tuple[Cells, str, Any]] = {}  # row key -> (cells, column, sort key)
        self._notice = ""

    @property
    def prefs(self) -> Any:
        return self.app.prefs  # type: ignore[attr-defined]

    def on_mount(self) -> None:
        chosen = self.prefs.columns(self.SCOPE)
        shown = set(chosen) if chosen is not None else {c.key for c in self.COLUMNS if c.default}
        self.table.set_hidden({c.key for c in self.COLUMNS} - shown - set(self.kept))
        column, reverse = self.prefs.sort(self.SCOPE)
        if column in {c.key for c in self.COLUMNS}:
            self.sort_column, self.sort_reverse = column, reverse
            self.table.set_sort_mark(column, reverse)

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="filterbar", classes="hidden"):
            yield Input(placeholder="filter: type text, Enter to keep, Esc to clear", id="filter", compact=True)
            yield Static("", id="filter-count")
        yield Static("", id="notice", classes="hidden")
        yield self.make_table()
        yield from self.compose_extra()

    def make_table(self) -> KeyedTable:
        return KeyedTable(self.COLUMNS, id="table")

    def compose_extra(self) -> ComposeResult:
        yield from ()

    @property
    def table(self) -> KeyedTable:
        return self.query_one("#table", KeyedTable)

    def set_notice(self, text: str | None) -> None:
        if (text or "") == self._notice:
            return  # an update lays the screen out again, even with the same text
        self._notice = text or ""
        notice = self.query_one("#notice", Static)
        notice.update(self._notice)
        notice.set_class(not text, "hidden")

    def unavailable(self, message: str) -> None:
        self.set_notice(message)

    def set_rows(self, rows: list[tuple[str, Cells]]) -> None:
        self.set_notice(None)
        self.all_rows = rows
        self._apply_filter()

    def search_extra(self, key: str, cells: Cells) -> str:
        """More text the filter matches a row by (the Machines screen adds the MAC's bare hex digits)."""
        return ""

    def _apply_filter(self) -> None:
        matches = row_matcher(self.filter_text)
        shown = self.all_rows
        if matches is not None:
            shown = [(k, c) for k, c in self.all_rows if matches(c, self.search_extra(k, c))]
        if self.sort_column is not None:
            shown = self.sort_rows(shown, self.sort_column)
        self.table.sync(shown)
        self.query_one("#filter-count", Static).update(
            f"{len(shown)} of {len(self.all_rows)}" if matches is not None else ""
        ) if self.filter_text else None
        self.on_rows_shown()

    def on_rows_shown(self) -> None:
        pass

    # --- sorting and columns -----------------------------------------------------

    def sort_value(self, key: str, column: str, cells: Cells) -> Any:
        """What a row sorts by in ``column``: its text in natural order (pc2 before pc10); a
        screen returns numbers where the text would mislead (sizes in different units)."""
        return natural_key(cells.get(column, ""))

    def sort_rows(self, rows: list[tuple[str, Cells]], column: str) -> list[tuple[str, Cells]]:
        cache = self._sort_keys
        keyed = []
        for key, cells in rows:
            cached = cache.get(key)
            if cached is not None and cached[0] is cells and cached[1] == column:
                value = cached[2]  # unchanged row: its sort key is not computed again
            else:
                value = self.sort_value(key, column, cells)
                cache[key] = (cells, column, value)
            keyed.append((value, key, cells))
        keyed.sort(key=lambda item: item[0], reverse=self.sort_reverse)
        return [(key, cells) for _value, key, cells in keyed]

    def set_sort(self, column: str | None, reverse: bool = False) -> None:
        self.sort_column, self.sort_reverse = column, reverse
        self.table.set_sort_mark(column, reverse)
        self.prefs.set_sort(self.SCOPE, column, reverse)
        self._apply_filter()

    def action_sort_next(self) -> None:
        """The next column to the right; after the last, back to the screen's own order."""
        keys = [c.key for c in self.table.shown if c.label.strip()]
        if self.sort_column not in keys:
            self.set_sort(keys[0] if keys else None)
        else:
            following = keys.index(self.sort_column) + 1
            self.set_sort(keys[following] if following < len(keys) else None)
        self.notify(self._sort_said(), timeout=2)

    def action_sort_reverse(self) -> None:
        labelled = [c.key for c in self.table.shown if c.label.strip()]
        column = self.sort_column or (labelled[0] if labelled else None)
        self.set_sort(column, not self.sort_reverse if self.sort_column else True)
        self.notify(self._sort_said(), timeout=2)

    def _sort_said(self) -> str:
        if self.sort_column is None:
            return "Rows in their own order."
        label = next(c.label for c in self.COLUMNS if c.key == self.sort_column)
        return f"Sorted by {label.strip() or self.sort_column}, {'descending' if self.sort_reverse else 'ascending'}."

    def on_keyed_table_header_clicked(self, event: KeyedTable.HeaderClicked) -> None:
        if event.column == self.sort_column:
            self.set_sort(event.column, not self.sort_reverse)
        else:
            self.set_sort(event.column)

    @property
    def kept(self) -> tuple[str, ...]:
        return self.KEEP or (self.COLUMNS[0].key,)

    def action_choose_columns(self) -> None:
        from .modals import ColumnsScreen

        def chosen(keys: list[str] | None) -> None:
            if keys:
                self.prefs.set_columns(self.SCOPE, keys)
                self.table.set_hidden({c.key for c in self.COLUMNS} - set(keys) - set(self.kept))

        visible = [c.key for c in self.COLUMNS if c.key not in self.table.hidden]
        self.app.push_screen(ColumnsScreen(self.TITLE, self.COLUMNS, visible, self.kept), chosen)

    def action_filter(self) -> None:
        self.query_one("#filterbar").remove_class("hidden")
        self.query_one("#filter", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.filter_text = event.value.strip()
            self._apply_filter()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            if not event.value.strip():
                self.query_one("#filterbar").add_class("hidden")
            self.table.focus()

    def key_escape(self) -> None:
        if self.query_one("#filter", Input).has_focus or self.filter_text:
            self.clear_filter()

    def clear_filter(self, apply: bool = True) -> None:
        """No filter; ``apply=False`` when new rows are set right after (they are filtered then)."""
        self.query_one("#filter", Input).value = ""
        self.filter_text = ""
        self.query_one("#filterbar").add_class("hidden")
        if apply:
            self._apply_filter()
        self.table.focus()

    @property
    def cursor_key(self) -> str | None:
        return self.table.cursor_key


class MarkingTableScreen(TableScreen):
    """A table whose rows can be marked (space, and all shown with one key) to act on together."""

    def __init__(self) -> None:
        super().__init__()
        self.marked: set[str] = set()

    def rebuild(self) -> None:
        """Lay the rows out again from the last fetched data (marks shown)."""
        raise NotImplementedError

    def chosen(self) -> list[str]:
        """The marked rows in the table's order, or the one under the cursor."""
        if self.marked:
            return [k for k in self.table.order if k in self.marked] or sorted(self.marked)
        key = self.cursor_key
        return [key] if key else []

    def action_mark(self) -> None:
        key = self.cursor_key
        if key is None:
            return
        self.marked ^= {key}
        self.rebuild()
        if self.table.cursor_row < self.table.row_count - 1:
            self.table.move_cursor(self.table.cursor_row + 1)

    def action_mark_all(self) -> None:
        """Mark every shown row; when all are marked already, clear the marks."""
        shown = set(self.table.order)
        self.marked = set() if shown and shown <= self.marked else shown
        self.rebuild()


_DIGITS = re.compile(r"(\d+)")


def natural_key(value: Any) -> tuple[Any, ...]:
    """Text split into words and numbers, compared as such: pc2 < pc10, 10.0.0.9 < 10.0.0.21."""
    text = value.plain if isinstance(value, Text) else str(value)
    parts = _DIGITS.split(text.lower())
    return tuple(int(part) if index % 2 else part for index, part in enumerate(parts))


_MAC_LIKE = re.compile(r"[0-9a-f:.\-]+")
_MAC_SEPARATORS = re.compile(r"[:.\-]")


def mac_digits(text: str) -> str:
    """A MAC (or part of one) in any notation as bare lower-case hex: 52-54-00-AA -> 525400aa."""
    return _MAC_SEPARATORS.sub("", text.lower())


def row_matcher(text: str) -> Any:
    """A predicate over (cells, extra) for the filter text, or None when nothing is filtered.
    Plain text matches any cell; text that could be part of a MAC (hex pairs with or without
    ``:`` ``-`` ``.`` separators) also matches the bare hex digits in ``extra``."""
    needle = text.strip().lower()
    if not needle:
        return None
    digits = mac_digits(needle) if _MAC_LIKE.fullmatch(needle) else ""

    def matches(cells: Cells, extra: str) -> bool:
        if needle in " ".join(str(v) for v in cells.values()).lower():
            return True
        return len(digits) >= 2 and digits in extra

    return matches
