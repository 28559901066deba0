"""Dashboard: machines online/offline/booted, sessions, images, targets, health, alerts, latest audit."""

from __future__ import annotations

import importlib
from collections import Counter
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from core.errors import GgnetError
from core.services import audit as audit_service
from core.services import machines as machine_service

from ..commands import bindings
from .base import GgnetScreen
from .common import status, when

LOW_DISK_FRACTION = 0.10


class DashboardScreen(GgnetScreen):
    SCOPE = "dashboard"
    TITLE = "Dashboard"
    BINDINGS = bindings("dashboard")

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="dash-top"):
            yield Static("", id="counts", classes="panel")
            yield Static("", id="health", classes="panel")
        yield Static("", id="alerts", classes="panel")
        yield Static("", id="recent", classes="panel")

    async def _optional(self, name: str, call: str, *args: Any, **kwargs: Any) -> tuple[Any, str | None]:
        """A panel's data, or why it is missing; one failing service never blanks the dashboard."""
        module = importlib.import_module(f"core.services.{name}")
        try:
            return await getattr(module, call)(self.core, *args, **kwargs), None
        except GgnetError as exc:
            return None, exc.message
        except Exception as exc:
            return None, self.app.incident(exc)  # type: ignore[attr-defined]

    async def fetch(self) -> Any:
        core, actor = self.core, self.actor
        data: dict[str, Any] = {}
        data["machines"] = await machine_service.list_machines(core, actor)
        data["events"], _ = await audit_service.list_events(core, actor, limit=8)
        data["sessions"], data["sessions_error"] = await self._optional("boots", "current_boots", actor)
        data["images"], data["images_error"] = await self._optional("images", "list_images", actor)
        engine, data["drift_error"] = await self._optional("boots", "engine_status", actor)
        data["drift"] = [d for d in (engine.drift if engine else []) if d.get("kind")]
        data["engine"] = engine
        try:
            usage = self.app.disk_usage(core.settings.data_dir if core.settings.data_dir.exists() else "/")  # type: ignore[attr-defined]
            data["disk"] = (usage.free, usage.total)
        except OSError:
            data["disk"] = None
        return data

    def show(self, data: Any) -> None:
        statuses = self.app.monitor.statuses  # type: ignore[attr-defined]
        states = Counter(statuses[m.name].state if m.name in statuses else "offline" for m in data["machines"])
        sessions = data["sessions"] or []
        by_state = Counter(s.state for s in sessions)
        counts = Table.grid(padding=(0, 1))
        for justify in ("right", "left", "right", "left"):
            counts.add_column(justify=justify)
        sessions_text = "-" if data["sessions"] is None else str(by_state.get("ready", 0))
        failed = [m for m in data["machines"] if m.status == "failed"]
        failed_text = str(len(failed))
        images_text = "-" if data["images"] is None else str(len(data["images"]))
        preparing = by_state.get("requested", 0) + by_state.get("preparing", 0)
        targets_text = "-" if data["sessions"] is None else str(preparing)
        counts.add_row(
            Text("Machines", style="bold"), str(len(data["machines"])), Text("Boots", style="bold"), sessions_text
        )
        counts.add_row(status("booted"), str(states.get("booted", 0)), status("failed"), failed_text)
        counts.add_row(status("booting"), str(states.get("booting", 0)), Text("Images", style="bold"), images_text)
        counts.add_row(status("online"), str(states.get("online", 0)), Text("Preparing", style="bold"), targets_text)
        counts.add_row(status("offline"), str(states.get("offline", 0)), "", "")
        self.query_one("#counts", Static).update(counts)

        app = self.app
        health = Text()
        health.append("Engine: ", style="bold")
        health.append(f"{app.engine_text}\n")  # type: ignore[attr-defined]
        health.append("Target stack: ", style="bold")
        health.append(f"{app.backend_text}\n", style="green" if app.backend_ok else "red")  # type: ignore[attr-defined]
        health.append("Database: ", style="bold")
        health.append(f"{app.db_kind}\n")  # type: ignore[attr-defined]
        health.append("Writeback: ", style="bold")
        health.append(f"{self.core.settings.writeback_driver}\n")
        if data["disk"]:
            free, total = data["disk"]
            health.append("Free space: ", style="bold")
            health.append(
                f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB\n",
                style="red" if free < total * LOW_DISK_FRACTION else "",
            )
        self.query_one("#health", Static).update(health)

        alerts = Text(no_wrap=True, overflow="ellipsis")
        alerts.append("Alerts\n", style="bold")
        lines = []
        if data["drift"]:
            lines.append(
                (f"{len(data['drift'])} difference(s) between database and target stack: see Targets (5)", "red")
            )
        if data["disk"] and data["disk"][0] < data["disk"][1] * LOW_DISK_FRACTION:
            lines.append(("Low disk space in the data directory", "red"))
        for m in failed:
            lines.append((f"{m.name} did not boot: {m.status_detail or 'see its boot history'}", "red"))
        for key in ("sessions_error", "images_error", "drift_error"):
            if data[key]:
                lines.append((data[key], "yellow"))
        if app.backend_ok is False:  # type: ignore[attr-defined]
            what = "Engine not running" if app.backend_text == "no engine" else f"Target stack {app.backend_text}"  # type: ignore[attr-defined]
            lines.insert(0, (f"{what}: {app.backend_detail}", "yellow"))  # type: ignore[attr-defined]
        width = max(self.size.width - 4, 20)
        for line, style in lines[:3] or [("None.", "green")]:
            line = " ".join(str(line).split())
            alerts.append((line if len(line) <= width else line[: width - 3] + "...") + "\n", style=style)
        alerts.rstrip()
        self.query_one("#alerts", Static).update(alerts)

        recent = Table(title="Latest audit events", title_justify="left", expand=True, box=None, padding=(0, 1))
        for name, width in (("When", 11), ("Actor", 12), ("Action", 16), ("Object", 16), ("Outcome", 7)):
            recent.add_column(name, width=width, no_wrap=True)
        for e in data["events"]:
            recent.add_row(when(e.at), e.actor, e.action, e.object_name or "-", status(e.outcome))
        self.query_one("#recent", Static).update(recent)
