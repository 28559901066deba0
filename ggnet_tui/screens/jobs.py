"""Jobs: the console's background work (image imports, maintenance applies) with its progress;
x cancels the one under the cursor, Enter shows its result in full."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from ..commands import bindings
from ..jobs import RUNNING, Job
from ..widgets.table import Cells, Column, KeyedTable
from .base import TableScreen
from .common import rate, status, when
from .modals import TextScreen

BAR = 10


def bar(job: Job, ascii_only: bool) -> Text:
    """[#####-----] on the Linux console, a block bar elsewhere; a step without a percentage says so."""
    if job.state == RUNNING and job.stage != "converting":
        return Text(job.doing, style="cyan")
    filled = round(job.percent / 100 * BAR)
    full, empty = ("#", "-") if ascii_only else ("█", "░")
    text = Text(full * filled, style="green")
    text.append(empty * (BAR - filled), style="dim")
    text.append(f" {job.percent:3.0f}%")
    return text


class JobsScreen(TableScreen):
    SCOPE = "jobs"
    TITLE = "Jobs"
    BINDINGS = bindings("table", "jobs")
    COLUMNS = [
        Column("id", "#", 2, 0),
        Column("title", "Job", 16, 0, max_width=40),
        Column("state", "State", 9, 0),
        Column("progress", "Progress", 15, 0),
        Column("rate", "Rate", 9, 2, max_width=12),
        Column("left", "Left", 5, 1),
        Column("started", "Started", 11, 3),
        Column("result", "Result", 10, 4, max_width=200),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._rows: dict[str, tuple[int, Cells]] = {}

    def refresh_interval(self) -> float:
        # progress moves: redraw often while a job runs (reading the console's own memory is free)
        running = bool(self.app.jobs.running)  # type: ignore[attr-defined]
        return min(super().refresh_interval(), 0.5) if running else super().refresh_interval()

    async def fetch(self) -> Any:
        return list(self.app.jobs.all)  # type: ignore[attr-defined]

    def show(self, jobs: Any) -> None:
        ascii_only = self.app.has_class("-linux")
        rows = []
        cache = {}
        for job in jobs:
            key = str(job.id)
            previous = self._rows.get(key)
            if previous is not None and previous[0] == job.version and job.state != RUNNING:
                cells = previous[1]
            else:
                cells = {
                    "id": str(job.id),
                    "title": job.title,
                    "state": status("cancelling" if job.state == RUNNING and job.cancel.is_set() else job.state),
                    "progress": bar(job, ascii_only),
                    "rate": rate(job.rate),
                    "left": job.left,
                    "started": when(job.started_at),
                    "result": job.result or "-",
                }
            cache[key] = (job.version, cells)
            rows.append((key, cells))
        self._rows = cache
        self.set_rows(rows)
        running = sum(1 for j in jobs if j.state == RUNNING)
        self.sub_title = f"{running} running, {len(jobs)} in all"
        if not jobs:
            self.set_notice("No jobs yet: an image import (a on Images, 3) runs here while you work on.")

    def _job(self) -> Job | None:
        key = self.cursor_key
        job = self.app.jobs.get(int(key)) if key else None  # type: ignore[attr-defined]
        if job is None:
            self.notify("No job under the cursor.", severity="warning")
        return job

    def action_cancel(self) -> None:
        job = self._job()
        if job is None:
            return
        if job.state != RUNNING:
            self.notify(f"Job {job.id} has already ended ({job.state}).", severity="warning")
            return
        job.cancel.set()
        job.version += 1
        self.notify(f"Cancelling job {job.id} ...", timeout=3)
        self.action_refresh_now()

    def on_keyed_table_row_selected(self, event: KeyedTable.RowSelected) -> None:
        self.action_show_job()

    def action_show_job(self) -> None:
        job = self._job()
        if job is None:
            return
        body = Text()
        for label, value in (
            ("job", job.title),
            ("state", job.doing),
            ("started", when(job.started_at)),
            ("took", f"{job.elapsed:.0f} s"),
            ("result", job.result or "-"),
        ):
            body.append(f"{label:>8}  ", style="bold")
            body.append(f"{value}\n")
        self.app.push_screen(TextScreen(f"Job {job.id}", body))
