"""The console's table: rows addressed by key, drawn with Textual's line API.

Why not DataTable: any DataTable change (one cell) invalidates its render caches for every
row, so a refresh in which a few statuses change re-renders every visible cell through Rich
(about 0.1-0.2 ms each), and placing rows in a given order needs its private internals. Here
each row's rendered line is cached against the very ``cells`` dict it was drawn from: a sync
re-draws only the rows whose cells changed, and only the lines of those rows are repainted.
The cursor follows its row's key and the scroll position stays where the operator left it.

Columns give way by priority when the terminal is narrow (priority 0 is never dropped), and
space left over goes to the columns whose content is wider than their minimum width. The
operator may hide columns (``set_hidden``); the sorted column's header carries an arrow, and a
click on a header posts ``HeaderClicked`` (the screen sorts: the table shows rows in the order given).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

Cells = dict[str, Any]  # column key -> str or rich Text (plain text, never markup)

PAD = 1  # blank cells on each side of a column
_CONTROL = {code: " " for code in range(32)}  # a newline in a note must not break a row


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int  # the narrowest useful width: below it the column is dropped (priority > 0)
    priority: int = 0  # 0 is kept whatever the width; higher numbers give way first
    max_width: int | None = None  # how wide it may grow for long content (default: width)
    default: bool = True  # shown until the operator chooses the columns (C)

    @property
    def cap(self) -> int:
        return max(self.max_width or self.width, self.width, cell_len(self.label))


_ABSENT = object()


class KeyedTable(ScrollView, can_focus=True):
    """Rows keyed by a string; ``sync(rows)`` makes the table show exactly those rows."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "first", "First", show=False),
        Binding("end", "last", "Last", show=False),
        Binding("enter", "select", "Select", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {"keyed-table--header", "keyed-table--cursor"}
    DEFAULT_CSS = """
    KeyedTable {
        background: $surface;
        color: $foreground;
        height: 1fr;
        & > .keyed-table--header { text-style: bold; background: $panel; color: $foreground; }
        &:ansi > .keyed-table--header { background: ansi_bright_blue; color: ansi_default; }
        & > .keyed-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        &:focus > .keyed-table--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: $block-cursor-text-style;
        }
    }
    """

    class RowHighlighted(Message):
        """The cursor moved to another row (``key`` is None when the table is empty)."""

        def __init__(self, table: KeyedTable, key: str | None) -> None:
            super().__init__()
            self.table = table
            self.key = key

        @property
        def control(self) -> KeyedTable:
            return self.table

    class HeaderClicked(Message):
        """A click on a column's header."""

        def __init__(self, table: KeyedTable, column: str) -> None:
            super().__init__()
            self.table = table
            self.column = column

        @property
        def control(self) -> KeyedTable:
            return self.table

    class RowSelected(Message):
        """Enter, or a click on the row under the cursor."""

        def __init__(self, table: KeyedTable, key: str) -> None:
            super().__init__()
            self.table = table
            self.key = key

        @property
        def control(self) -> KeyedTable:
            return self.table

    def __init__(self, columns: list[Column], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.all_columns = columns
        self.shown: list[Column] = []
        self.widths: dict[str, int] = {}
        self.rows_by_key: dict[str, Cells] = {}
        self.order: list[str] = []
        self._index: dict[str, int] = {}
        self.cursor_row = 0
        self._natural = {c.key: min(cell_len(c.label), c.cap) for c in columns}
        self._caps = {c.key: c.cap for c in columns}
        self._strips: dict[str, tuple[Cells, Strip]] = {}  # key -> (the cells drawn, their line)
        self._header: Strip | None = None
        self._fitted_width = -1
        self.hidden: set[str] = set()  # columns the operator chose not to see
        self.sort_column: str | None = None  # only the header's arrow: the screen orders the rows
        self.sort_reverse = False
        self.ascii_arrows = False  # the Linux console's font: ^ and v
        self._paint: tuple[Style, int] | None = None  # (base style, width) while render_lines runs

    # --- what the screens read ------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self.order)

    @property
    def cursor_key(self) -> str | None:
        return self.order[self.cursor_row] if 0 <= self.cursor_row < len(self.order) else None

    def get_row_index(self, key: str) -> int:
        return self._index[key]

    @property
    def visible_rows(self) -> int:
        """Rows that fit under the header."""
        return max(self.scrollable_content_region.height - 1, 1)

    # --- columns ------------------------------------------------------------

    def _fit(self, width: int) -> dict[str, int]:
        """Column widths for ``width`` cells: by priority, each at its natural width if it fits,
        else at what is left if that is at least its minimum; then spare room to the truncated."""
        budget = width
        widths: dict[str, int] = {}
        by_priority = sorted((c for c in self.all_columns if c.key not in self.hidden), key=lambda c: c.priority)
        for column in by_priority:
            natural = max(self._natural[column.key], 1)
            room = budget - 2 * PAD
            size = min(natural, room)
            if size < min(column.width, natural):
                if column.priority:
                    continue
                size = min(column.width, natural)
            widths[column.key] = size
            budget -= size + 2 * PAD
        for column in by_priority:
            if column.key in widths and budget > 0:
                grow = min(self._natural[column.key] - widths[column.key], budget)
                if grow > 0:
                    widths[column.key] += grow
                    budget -= grow
        return widths

    def _relayout(self, force: bool = False) -> None:
        width = self.scrollable_content_region.width or self.app.size.width
        widths = self._fit(width)
        if not force and widths == self.widths and width == self._fitted_width:
            return
        self._fitted_width = width
        self.widths = widths
        self.shown = [c for c in self.all_columns if c.key in widths]
        self._strips.clear()
        self._header = None
        self._resize_virtual()
        self.refresh()

    def _resize_virtual(self) -> None:
        total = sum(self.widths.values()) + 2 * PAD * len(self.widths)
        self.virtual_size = Size(total, len(self.order) + 1)

    def on_mount(self) -> None:
        self.ascii_arrows = self.app.has_class("-linux")
        self._relayout(force=True)

    def set_hidden(self, keys: set[str]) -> None:
        """Hide these columns."""
        keys = set(keys)
        if keys != self.hidden:
            self.hidden = keys
            self._relayout(force=True)

    def set_sort_mark(self, column: str | None, reverse: bool) -> None:
        if (column, reverse) == (self.sort_column, self.sort_reverse):
            return
        self.sort_column, self.sort_reverse = column, reverse
        if column is not None:  # room for the arrow beside the label
            self._natural[column] = max(self._natural[column], self._label_width(column))
        self._header = None
        self._relayout(force=True)

    def _label(self, column: Column) -> str:
        if column.key != self.sort_column:
            return column.label
        arrow = ("v" if self.sort_reverse else "^") if self.ascii_arrows else ("▼" if self.sort_reverse else "▲")
        return f"{column.label} {arrow}"

    def _label_width(self, key: str) -> int:
        column = next(c for c in self.all_columns if c.key == key)
        return cell_len(self._label(column))

    def on_resize(self, event: events.Resize) -> None:
        self._relayout()
        self._keep_cursor_visible()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()  # theme or CSS changed: every line is drawn again
        self._header = None

    # --- rows ---------------------------------------------------------------

    def sync(self, rows: list[tuple[str, Cells]]) -> int:
        """Make the table show ``rows`` (in that order); a row whose cells are the same object
        as last time is skipped at once. Returns how many rows were added, changed or removed."""
        cursor = self.cursor_key
        new = dict(rows)
        order = [key for key, _ in rows]
        shown_before = self.rows_by_key
        changed = [key for key, cells in rows if shown_before.get(key) is not cells]
        grown = self._grow([new[key] for key in changed]) if changed else False
        removed = [key for key in self.rows_by_key if key not in new]
        for key in removed:
            self._strips.pop(key, None)
        self.rows_by_key = new
        reordered = order != self.order
        if reordered:
            self.order = order
            self._index = {key: i for i, key in enumerate(order)}
            self._resize_virtual()
        if cursor is not None and cursor in self._index:
            self.cursor_row = self._index[cursor]
        else:
            self.cursor_row = min(self.cursor_row, max(len(order) - 1, 0))
        if grown:
            self._relayout()
        if reordered:
            self.scroll_to(y=self.validate_scroll_y(self.scroll_y), animate=False, immediate=True)
            self._keep_cursor_visible()
            self.refresh()
        else:
            for key in changed:  # repaint only the lines that show a changed row
                self.refresh_line(self._index[key] + 1)
        if self.cursor_key != cursor:
            self.post_message(self.RowHighlighted(self, self.cursor_key))
        return len(changed) + len(removed)

    def _grow(self, changed: list[Cells]) -> bool:
        """Widen the columns whose content is wider than shown so far (up to their cap); True if any grew.
        Column by column, each distinct text measured once: a history repeats its addresses and outcomes."""
        caps, natural = self._caps, self._natural
        growing = [column for column, cap in caps.items() if natural[column] < cap]
        if not growing:
            return False
        grown = False
        for column in growing:
            texts = {
                value.plain if isinstance(value, Text) else str(value)
                for cells in changed
                if (value := cells.get(column, _ABSENT)) is not _ABSENT
            }
            widest = min(max(map(cell_len, texts), default=0), caps[column])
            if widest > natural[column]:
                natural[column] = widest
                grown = True
        return grown

    # --- cursor ---------------------------------------------------------------

    def move_cursor(self, row: int, *, scroll: bool = True) -> None:
        if not self.order:
            return
        row = max(0, min(row, len(self.order) - 1))
        if row == self.cursor_row:
            if scroll:
                self._keep_cursor_visible()
            return
        self.refresh_line(self.cursor_row + 1)
        self.cursor_row = row
        self.refresh_line(row + 1)
        if scroll:
            self._keep_cursor_visible()
        self.post_message(self.RowHighlighted(self, self.cursor_key))

    def _keep_cursor_visible(self) -> None:
        top = round(self.scroll_y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False, immediate=True)
        elif self.cursor_row >= top + self.visible_rows:
            self.scroll_to(y=self.cursor_row - self.visible_rows + 1, animate=False, immediate=True)

    def action_cursor(self, step: int) -> None:
        self.move_cursor(self.cursor_row + step)

    def action_page(self, step: int) -> None:
        self.move_cursor(self.cursor_row + step * self.visible_rows)

    def action_first(self) -> None:
        self.move_cursor(0)

    def action_last(self) -> None:
        self.move_cursor(len(self.order) - 1)

    def action_select(self) -> None:
        key = self.cursor_key
        if key is not None:
            self.post_message(self.RowSelected(self, key))

    def column_at(self, x: int) -> str | None:
        """The column drawn at content offset ``x`` (scrolling included)."""
        left = round(self.scroll_x)
        position = 0
        for column in self.shown:
            position += self.widths[column.key] + 2 * PAD
            if x + left < position:
                return column.key
        return None

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        if offset.y == 0:
            column = self.column_at(offset.x)
            if column is not None:
                self.post_message(self.HeaderClicked(self, column))
            return
        row = offset.y - 1 + round(self.scroll_y)
        if row >= len(self.order):
            return
        if row == self.cursor_row:
            self.action_select()
        else:
            self.move_cursor(row)

    def on_focus(self) -> None:
        self.refresh_line(self.cursor_row + 1)  # the cursor's colours differ with focus

    def on_blur(self) -> None:
        self.refresh_line(self.cursor_row + 1)

    # --- drawing ------------------------------------------------------------

    def _draw(self, cells: Cells, base: Style, over: Style | None) -> Strip:
        console = self.app.console
        segments: list[Segment] = []
        blank = Segment(" " * PAD, base)
        for column in self.shown:
            width = self.widths[column.key]
            value = cells.get(column.key, "")
            segments.append(blank)
            if isinstance(value, Text) and value.spans:
                text = value.copy()
                text.plain = text.plain.translate(_CONTROL)
                text.truncate(width, overflow="crop", pad=True)
                segments.extend(Segment(s.text, base + s.style if s.style else base) for s in text.render(console, ""))
            elif isinstance(value, Text):
                style = base + console.get_style(value.style) if value.style else base
                segments.append(Segment(set_cell_size(value.plain.translate(_CONTROL), width), style))
            else:
                segments.append(Segment(set_cell_size(str(value).translate(_CONTROL), width), base))
            segments.append(blank)
        if over is not None:
            segments = [Segment(s.text, (s.style or base) + over) for s in segments]
        return Strip(segments, sum(self.widths[c.key] + 2 * PAD for c in self.shown))

    def render_lines(self, crop: Region) -> list[Strip]:
        # the style and width every line needs, worked out once for the lines of one paint (as
        # properties they walk the DOM again for each line: a third of a line's cost)
        self._paint = (self.rich_style, self.scrollable_content_region.width)
        try:
            return super().render_lines(crop)
        finally:
            self._paint = None

    def render_line(self, y: int) -> Strip:
        base, width = self._paint or (self.rich_style, self.scrollable_content_region.width)
        scroll_x = round(self.scroll_x)
        if y == 0:
            if self._header is None:
                header = self.get_component_rich_style("keyed-table--header")
                self._header = self._draw({c.key: self._label(c) for c in self.shown}, base + header, None)
            return self._header.crop_extend(scroll_x, scroll_x + width, base)
        index = y - 1 + round(self.scroll_y)
        if index >= len(self.order):
            return Strip.blank(width, base)
        key = self.order[index]
        cells = self.rows_by_key[key]
        if index == self.cursor_row:
            strip = self._draw(cells, base, self.get_component_rich_style("keyed-table--cursor"))
        else:
            cached = self._strips.get(key)
            if cached is not None and cached[0] is cells:
                strip = cached[1]
            else:
                strip = self._draw(cells, base, None)
                self._strips[key] = (cells, strip)
        return strip.crop_extend(scroll_x, scroll_x + width, base)
