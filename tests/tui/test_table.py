"""The console's keyed table: a refresh keeps cursor and scroll, redraws only what changed;
columns give way by priority; the filter matches MACs in any notation and resets the scroll."""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult

from core.models import Role
from core.services import machines
from ggnet_tui.screens.base import row_matcher
from ggnet_tui.widgets.table import Column, KeyedTable
from tests.conftest import make_user
from tests.tui.helpers import log_in, make_app, wait_for

COLUMNS = [
    Column("name", "Name", 8, 0),
    Column("status", "Status", 7, 0),
    Column("mac", "MAC", 17, 1),
    Column("boot", "Boot", 4, 2, max_width=11),
]


def row(i: int, state: str = "offline") -> tuple[str, dict]:
    return f"pc{i:04d}", {
        "name": f"pc{i:04d}",
        "status": Text(state, style="red"),
        "mac": f"52:54:00:00:{i >> 8:02x}:{i & 255:02x}",
        "boot": "bios",
    }


class TableApp(App[None]):
    def compose(self) -> ComposeResult:
        yield KeyedTable(COLUMNS, id="table")


def line_text(table: KeyedTable, y: int) -> str:
    return table.render_line(y).text


async def test_refresh_with_50_changes_keeps_cursor_and_scroll_and_redraws_only_changed_rows():
    app = TableApp()
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(KeyedTable)
        rows = [row(i) for i in range(1000)]
        table.sync(rows)
        table.focus()
        await pilot.pause()
        table.move_cursor(500)
        await pilot.pause()
        top, cursor = table.scroll_y, table.cursor_row
        assert top > 0 and table.cursor_key == "pc0500"
        first_visible = round(top)
        for y in range(1, table.visible_rows + 1):  # fill the line cache as a paint would
            line_text(table, y)

        drawn: list[str] = []
        draw = table._draw
        table._draw = lambda cells, base, over: (drawn.append(cells["name"]), draw(cells, base, over))[1]  # type: ignore[method-assign]
        changed = set(range(first_visible, first_visible + 25)) | set(range(900, 925))  # 50: half on screen
        rows = [row(i, "online") if i in changed else rows[i] for i in range(1000)]
        assert table.sync(rows) == 50
        await pilot.pause()
        assert (table.scroll_y, table.cursor_row, table.cursor_key) == (top, cursor, "pc0500")
        shown = [line_text(table, y) for y in range(1, table.visible_rows + 1)]
        assert "online" in shown[0] and "offline" in shown[30]
        # only the changed rows on screen (and the cursor's line) were drawn again
        assert set(drawn) <= {f"pc{i:04d}" for i in changed} | {"pc0500"}
        assert len(set(drawn)) <= 26

        # a row added above the cursor: the cursor stays on its machine
        rows.insert(0, ("pc-new", {"name": "pc-new", "status": "offline", "mac": "", "boot": ""}))
        table.sync(rows)
        await pilot.pause()
        assert table.cursor_key == "pc0500" and table.cursor_row == 501


async def test_columns_give_way_by_priority_and_grow_into_spare_room():
    app = TableApp()
    async with app.run_test(size=(36, 10)) as pilot:
        table = app.query_one(KeyedTable)
        table.sync([("pc01", {"name": "pc01", "status": "online", "mac": "52:54:00:aa:00:01", "boot": "uefi-secure"})])
        await pilot.pause()
        assert [c.key for c in table.shown] == ["name", "status", "mac"]  # boot gives way first
        assert "52:54:00:aa:00:01" in line_text(table, 1)
        await pilot.resize_terminal(120, 10)
        await pilot.pause()
        assert [c.key for c in table.shown] == ["name", "status", "mac", "boot"]
        assert "uefi-secure" in line_text(table, 1)  # wider than its 4-cell minimum, room to spare


def test_filter_matches_a_mac_in_any_notation():
    cells = {"name": "pc01", "mac": "52:54:00:aa:bb:cc"}
    extra = "525400aabbcc"
    for needle in ("aa:bb", "AA-BB-CC", "aabbcc", "5254.00AA.BBCC", "00:AA", "pc01"):
        assert row_matcher(needle)(cells, extra), needle
    for needle in ("aa:cc", "pc02", "bb-aa"):
        assert not row_matcher(needle)(cells, extra), needle
    assert row_matcher("  ") is None


async def test_filter_shows_n_of_m_from_the_top_and_matches_macs(fast_settings):
    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    for i in range(1, 61):
        await machines.add_machine(core, admin, name=f"pc{i:02d}", mac=f"52:54:00:aa:00:{i:02x}")
    app = make_app(core)
    async with app.run_test(size=(80, 24)) as pilot:
        await log_in(pilot, "root-admin")
        await wait_for(pilot, lambda: app.actor)
        await pilot.press("2")
        await wait_for(
            pilot, lambda: type(app.screen).__name__ == "MachinesScreen" and app.screen.table.row_count == 60
        )
        table = app.screen.table
        await pilot.press("end")
        assert table.cursor_key == "pc60" and table.scroll_y > 0
        await pilot.press("slash", *"5254.00AA.003")  # Cisco notation, upper case: pc48-pc60 (0x30-0x3c)
        await wait_for(pilot, lambda: table.row_count == 13)
        assert table.order[0] == "pc48" and table.scroll_y == 0
        assert str(app.screen.query_one("#filter-count").render()) == "13 of 60"
        assert "pc48" in line_text(table, 1)  # the first match is on screen, not above it
        await pilot.press("escape")
        await wait_for(pilot, lambda: table.row_count == 60)
