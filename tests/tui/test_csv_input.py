"""The console's CSV import reads through core's untrusted-input opener, off the UI thread: a FIFO or
a device is refused at once with the sentence, and the screen keeps answering."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from textual.widgets import Static

from core.models import Role
from core.services import machines
from tests.conftest import make_user
from tests.tui.helpers import fill, log_in, make_app, wait_for


async def test_csv_import_refuses_a_fifo_and_a_device_and_reads_off_the_ui_thread(
    fast_settings: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    from ggnet_tui.screens.modals import CsvImportScreen

    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    readers: list[bool] = []
    real = machines.read_csv_file

    def spy(path: Path) -> str:
        readers.append(threading.current_thread() is threading.main_thread())
        return real(path)

    monkeypatch.setattr(machines, "read_csv_file", spy)
    os.mkfifo(tmp_path / "fifo.csv")  # no writer: a plain open() would hang the console
    (tmp_path / "zero.csv").symlink_to("/dev/zero")  # a plain read() would eat all memory
    app = make_app(core)
    async with app.run_test(size=(100, 30)) as pilot:
        await log_in(pilot, "root-admin")
        await wait_for(pilot, lambda: app.actor)
        await pilot.press("2")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "MachinesScreen")
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, CsvImportScreen) and app.screen.query("#path"))
        report = lambda: str(app.screen.query_one("#report", Static).render())  # noqa: E731
        await fill(pilot, "#path", str(tmp_path / "fifo.csv"))
        await pilot.press("enter")
        await wait_for(pilot, lambda: "is a FIFO (named pipe), not a regular file" in report())
        await fill(pilot, "#path", str(tmp_path / "zero.csv"))
        await pilot.press("enter")
        await wait_for(pilot, lambda: "is a character device, not a regular file" in report())
        assert app.screen.query_one("#import").disabled
    assert readers == [False, False]  # both reads ran in a worker thread
    assert await machines.list_machines(core, admin) == []
