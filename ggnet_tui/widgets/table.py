"""A DataTable updated by keyed diffs: only changed cells and rows are touched, so the
cursor and the scroll position stay where the operator left them. Columns give way by
priority when the terminal is narrow (the most important ones are never dropped)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual._two_way_dict import TwoWayDict
from textual.events import Resize
from textual.widgets import DataTable
from textual.widgets.data_table import RowKey

Cells = dict[str, Any]


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int
    priority: int = 0  # 0 is kept whatever the width; higher numbers give way first


class KeyedTable(DataTable):
    def __init__(self, columns: list[Column], **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        self.all_columns = columns
        self.shown: list[Column] = []
        self.rows_by_key: dict[str, Cells] = {}
        self.order: list[str] = []

    # --- columns ------------------------------------------------------------

    def _fit(self, width: int) -> list[Column]:
        budget = max(width - 2, 20)  # room for the scrollbar
        chosen: set[str] = set()
        for column in sorted(self.all_columns, key=lambda c: c.priority):
            need = column.width + 2 * self.cell_padding
            if column.priority == 0 or need <= budget:
                chosen.add(column.key)
                budget -= need
        return [c for c in self.all_columns if c.key in chosen]

    def on_mount(self) -> None:
        self._relayout(self.app.size.width)

    def on_resize(self, event: Resize) -> None:
        self._relayout(event.size.width)

    def _relayout(self, width: int) -> None:
        wanted = self._fit(width)
        if [c.key for c in wanted] == [c.key for c in self.shown]:
            return
        cursor = self.cursor_key
        self.clear(columns=True)
        self.shown = wanted
        for column in wanted:
            self.add_column(column.label, width=column.width, key=column.key)
        for key in self.order:
            self.add_row(*self._values(self.rows_by_key[key]), key=key)
        self._restore(cursor)

    def _values(self, cells: Cells) -> list[Any]:
        return [_cell(cells.get(c.key, "")) for c in self.shown]

    # --- rows ---------------------------------------------------------------

    @property
    def cursor_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:  # cursor outside the rows while they change
            return None

    def _restore(self, key: str | None) -> None:
        if key is not None and key in self.rows_by_key:
            index = self.get_row_index(key)
            if index != self.cursor_row:
                self.move_cursor(row=index, animate=False, scroll=False)

    def sync(self, rows: list[tuple[str, Cells]]) -> int:
        """Make the table show ``rows`` (in that order). Returns how many cells/rows changed."""
        new = dict(rows)
        order = [key for key, _ in rows]
        cursor = self.cursor_key
        changes = 0
        with self.app.batch_update():
            for key in [k for k in self.order if k not in new]:
                self.remove_row(key)
                changes += 1
            added = False
            for key, cells in rows:
                old = self.rows_by_key.get(key)
                if old is cells:  # the caller reused the row: nothing changed
                    continue
                if old is None:
                    self.add_row(*self._values(cells), key=key)
                    added = True
                    changes += 1
                    continue
                for column in self.shown:
                    value = cells.get(column.key, "")
                    if _differs(old.get(column.key, ""), value):
                        self.update_cell(key, column.key, _cell(value))
                        changes += 1
            self.rows_by_key = new
            if added or order != [k for k in self.order if k in new]:
                # place rows in the wanted order without rebuilding them (DataTable.sort does the
                # same, but can only order by cell values, not by a given key order)
                self._row_locations = TwoWayDict({RowKey(k): i for i, k in enumerate(order)})
                self._update_count += 1
                self.refresh()
            self.order = order
            self._restore(cursor)
        return changes


def _cell(value: Any) -> Any:
    # plain text, never markup: a machine's notes or an audit detail may contain "[...]"
    return Text(value, no_wrap=True, overflow="crop") if isinstance(value, str) else value


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, Text) and isinstance(b, Text):
        return a.plain != b.plain or a.style != b.style or a.spans != b.spans
    return type(a) is not type(b) or a != b
