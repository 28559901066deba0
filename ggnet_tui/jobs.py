"""Background jobs: long work (an image import) runs in the console's own worker while the operator
goes on with other screens. The Jobs screen (0) lists them with their progress; a job can be
cancelled, and ends with a result sentence. Quitting asks first while any runs (``App.busy``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from time import monotonic
from typing import Any

from core.enums import EngineRequestState, ImageKind
from core.errors import GgnetError

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"

# what an import is doing, as core's import_image announces each step
STAGE_WORDS = {
    "starting": "starting",
    "converting": "converting",
    "checksum": "computing the checksum",
    "recording": "recording the version",
    "waiting": "waiting for the engine",
}
APPLY_WAIT_SECONDS = 3600.0  # an apply copies a whole disk on file systems without reflink


@dataclass
class Job:
    title: str
    started_at: datetime
    source_bytes: int = 0  # what the percentage is a share of (for the rate)
    id: int = 0  # given by Jobs.add: 1, 2 ... in this console
    state: str = RUNNING
    stage: str = "starting"
    percent: float = 0.0
    result: str = ""
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    clock: Any = monotonic  # the snapshot tests freeze it
    started: float = -1.0
    ended: float | None = None
    version: int = 0  # bumped at every change: the Jobs screen redraws a row only when it moved

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.clock()

    def progress(self, percent: float) -> None:
        self.percent = max(0.0, min(100.0, float(percent)))
        self.version += 1

    def set_stage(self, stage: str) -> None:
        self.stage = stage
        self.version += 1

    def finish(self, state: str, result: str) -> None:
        self.state, self.result, self.ended = state, result, self.clock()
        self.version += 1

    @property
    def elapsed(self) -> float:
        return (self.ended if self.ended is not None else self.clock()) - self.started

    @property
    def rate(self) -> float | None:
        """Source bytes per second while converting."""
        if self.stage != "converting" or self.percent <= 0 or not self.source_bytes:
            return None
        return self.source_bytes * self.percent / 100 / max(self.elapsed, 1e-6)

    @property
    def doing(self) -> str:
        """What the job does now, or how it ended: after 100 % of the conversion comes the checksum,
        which has no percentage, so it is said, not counted down."""
        if self.state != RUNNING:
            return self.state
        if self.cancel.is_set():
            return "cancelling"
        return STAGE_WORDS.get(self.stage, self.stage)

    @property
    def left(self) -> str:
        if self.state != RUNNING or self.stage != "converting" or self.percent <= 0 or self.percent >= 100:
            return "-"
        seconds = self.elapsed * (100 - self.percent) / self.percent
        return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class Jobs:
    """The console's jobs, newest first."""

    def __init__(self) -> None:
        self.all: list[Job] = []
        self._last_id = 0

    @property
    def running(self) -> list[Job]:
        return [j for j in self.all if j.state == RUNNING]

    def add(self, job: Job) -> Job:
        self._last_id += 1
        job.id = self._last_id
        self.all.insert(0, job)
        return job

    def get(self, job_id: int) -> Job | None:
        return next((j for j in self.all if j.id == job_id), None)

    def cancel_all(self) -> None:
        for job in self.running:
            job.cancel.set()
            job.version += 1


def start_import(app: Any, request: dict[str, str]) -> Job:
    """Import an image file as a job of ``app``; returns at once."""
    path = request["path"]
    try:
        source_bytes = Path(path).stat().st_size
    except OSError:
        source_bytes = 0
    target = request.get("version_of") or request.get("name") or Path(path).stem
    title = f"import {Path(path).name} as {'a new version of ' if request.get('version_of') else ''}{target}"
    job = app.jobs.add(Job(title=title, started_at=app.clock(), source_bytes=source_bytes))
    app.run_worker(_run_import(app, job, request), group="jobs", exit_on_error=False)
    return job


async def _run_import(app: Any, job: Job, request: dict[str, str]) -> None:
    from core.services import images

    from .screens.common import explain

    actor = app.actor
    try:
        version = await app.run_work(
            images.import_image(
                app.core,
                actor,
                request["path"],
                name=None if request.get("version_of") else (request.get("name") or None),
                new_version_of=request.get("version_of") or None,
                kind=request.get("kind") or ImageKind.SYSTEM.value,
                notes=request.get("notes", ""),
                progress=job.progress,
                stage=job.set_stage,
                cancel=job.cancel,
            )
        )
    except GgnetError as exc:
        if job.cancel.is_set():
            job.finish(CANCELLED, "cancelled; nothing was left behind")
            app.notify(f"Job {job.id} ({job.title}) cancelled; nothing was left behind.", severity="warning")
        else:
            job.finish(FAILED, explain(app, exc))
            app.notify(f"Job {job.id} failed: {job.result}", severity="error", timeout=10)
        return
    except asyncio.CancelledError:  # the console is leaving: core removed the partial file
        job.finish(CANCELLED, "cancelled as the console left")
        raise
    except Exception as exc:
        job.finish(FAILED, app.incident(exc))
        app.notify(f"Job {job.id} failed: {job.result}", severity="error", timeout=12)
        return
    job.progress(100)
    job.finish(
        DONE, f"imported {version.image} version {version.number} ({'active' if version.is_active else 'not active'})"
    )
    app.notify(f"Job {job.id}: {job.result}.", timeout=6)


def start_apply(app: Any, machine: str, request_id: int, activate: bool) -> Job:
    """Follow a maintenance apply the engine carries out; cancelling stops following, not the engine."""
    job = app.jobs.add(Job(title=f"apply {machine}'s maintenance as a new version", started_at=app.clock()))
    job.set_stage("waiting")
    app.run_worker(_follow_apply(app, job, machine, request_id, activate), group="jobs", exit_on_error=False)
    return job


async def _follow_apply(app: Any, job: Job, machine: str, request_id: int, activate: bool) -> None:
    from core.services import boots

    waiting = asyncio.ensure_future(boots.wait_request(app.core, request_id, timeout=APPLY_WAIT_SECONDS))
    cancelled = asyncio.ensure_future(job.cancel.wait())
    try:
        await asyncio.wait({waiting, cancelled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        cancelled.cancel()
    if not waiting.done():
        waiting.cancel()
        job.finish(CANCELLED, "stopped following; the engine goes on with the apply (see the image's versions)")
        return
    try:
        request = waiting.result()
    except Exception as exc:
        job.finish(FAILED, getattr(exc, "message", None) or app.incident(exc))
        app.notify(f"Job {job.id} failed: {job.result}", severity="error", timeout=10)
        return
    if request is None or request.state == EngineRequestState.PENDING.value:
        job.finish(FAILED, "the engine has not done it yet: is ggnet serve running?")
    elif request.state == EngineRequestState.FAILED.value:
        job.finish(FAILED, request.error or "the engine could not apply it")
    else:
        version = (request.result or {}).get("version")
        job.finish(DONE, f"{machine} applied as version {version}" + (" (active)" if activate else " (not activated)"))
    app.notify(f"Job {job.id}: {job.result}.", severity="error" if job.state == FAILED else "information", timeout=8)
