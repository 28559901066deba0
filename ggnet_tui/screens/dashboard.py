"""Dashboard: machines by state, boots, images, health, the alerts (with what to do about each),
and the latest audit events.

The alerts are what ``ggnet doctor`` says of this site (core.doctor: missing iPXE binaries per
boot mode, no reflink, the target stack and the engine as the engine recorded them, free space),
machines whose last boot failed, drift, PCs waiting to be adopted. They show the current truth: an
alert goes when its cause does (a failed machine's next good boot clears it). ``k`` acknowledges
the alert under the cursor: hidden until it changes.
"""

from __future__ import annotations

import importlib
from collections import Counter
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from core import doctor
from core.enums import BootState, MachineStatus
from core.errors import GgnetError
from core.services import audit as audit_service
from core.services import machines as machine_service

from ..commands import BY_ID, bindings, key_of
from ..widgets.table import Column, KeyedTable
from .base import GgnetScreen
from .common import status, when

ALERT_ROWS = 5  # at 80x24 the latest audit events keep their room
LEVEL_STYLE = {"fail": "bold red", "warn": "yellow", "info": "cyan"}
LIVE_CHECKS = ("engine", "target stack")  # from the engine's record at every refresh, not the minute's checks


class DashboardScreen(GgnetScreen):
    SCOPE = "dashboard"
    TITLE = "Dashboard"
    BINDINGS = bindings("dashboard")
    AUTO_FOCUS = "#alerts"

    def __init__(self) -> None:
        super().__init__()
        self.alerts: dict[str, tuple[str, str]] = {}  # key -> (level, sentence), acknowledged ones included

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="dash-top"):
            yield Static("", id="counts", classes="panel")
            yield Static("", id="health", classes="panel")
        yield KeyedTable([Column("level", "", 4, 0), Column("alert", "Alerts", 20, 0, max_width=1000)], id="alerts")
        yield Static("", id="alert-detail")  # the alert under the cursor in full: its fix is at its end
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
        data["discovered"], data["discovered_error"] = await self._optional("boots", "discovered", actor)
        engine, data["drift_error"] = await self._optional("boots", "engine_status", actor)
        data["drift"] = [d for d in (engine.drift if engine else []) if d.get("kind")]
        data["engine"] = engine
        try:
            where = core.settings.data_dir if core.settings.data_dir.exists() else "/"
            usage = self.app.disk_usage(where)  # type: ignore[attr-defined]
            data["space"] = doctor.free_space_check(core.settings.data_dir, usage.free, usage.total)
            data["disk"] = (usage.free, usage.total)
        except OSError:
            data["space"], data["disk"] = None, None
        return data

    def show(self, data: Any) -> None:
        statuses = self.app.monitor.statuses  # type: ignore[attr-defined]
        states = Counter(statuses[m.name].state if m.name in statuses else "offline" for m in data["machines"])
        sessions = data["sessions"] or []
        by_state = Counter(s.state for s in sessions)
        counts = Table.grid(padding=(0, 1))
        for justify in ("right", "left", "right", "left"):
            counts.add_column(justify=justify)
        sessions_text = "-" if data["sessions"] is None else str(by_state.get(BootState.READY.value, 0))
        failed = [m for m in data["machines"] if m.status == MachineStatus.FAILED.value]
        images_text = "-" if data["images"] is None else str(len(data["images"]))
        preparing = by_state.get(BootState.REQUESTED.value, 0) + by_state.get(BootState.PREPARING.value, 0)
        targets_text = "-" if data["sessions"] is None else str(preparing)
        counts.add_row(
            Text("Machines", style="bold"), str(len(data["machines"])), Text("Boots", style="bold"), sessions_text
        )
        counts.add_row(
            status(MachineStatus.BOOTED.value),
            str(states.get(MachineStatus.BOOTED.value, 0)),
            status(MachineStatus.FAILED.value),
            str(len(failed)),
        )
        counts.add_row(
            status(MachineStatus.BOOTING.value),
            str(states.get(MachineStatus.BOOTING.value, 0)),
            Text("Images", style="bold"),
            images_text,
        )
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
            low = data["space"] is not None and data["space"].status != "ok"
            health.append(f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB\n", style="red" if low else "")
        self.query_one("#health", Static).update(health)

        self.alerts = self._alerts(data, failed)
        self._show_alerts()

        recent = Table(title="Latest audit events", title_justify="left", expand=True, box=None, padding=(0, 1))
        for name, width in (("When", 11), ("Actor", 12), ("Action", 16), ("Object", 16), ("Outcome", 7)):
            recent.add_column(name, width=width, no_wrap=True)
        for e in data["events"]:
            recent.add_row(when(e.at), e.actor, e.action, e.object_name or "-", status(e.outcome))
        self.query_one("#recent", Static).update(recent)

    def _alerts(self, data: Any, failed: list[Any]) -> dict[str, tuple[str, str]]:
        """Every current alert by a key that changes when its cause does."""
        app = self.app
        keymap = dict(self.core.settings.keys)
        alerts: dict[str, tuple[str, str]] = {}
        engine = data["engine"]
        if engine is not None:
            checks = [doctor.engine_check(engine.running)]
            if engine.running:
                checks.append(doctor.engine_target_check(engine.backend, engine.backend_detail or engine.last_error))
        else:
            checks = []
        checks += [c for c in app.site_checks if c.name not in LIVE_CHECKS]  # type: ignore[attr-defined]
        if data["space"] is not None:
            checks.append(data["space"])
        for check in checks:
            if check.status != "ok":
                alerts[f"check:{check.name}:{check.detail}"] = (check.status, f"{check.name}: {check.detail}")
        for m in failed:
            why = m.status_detail or "see its boot history"
            details = key_of(BY_ID["machines.details"], keymap)
            alerts[f"failed:{m.name}:{why}"] = (
                "fail",
                f"{m.name} did not boot: {why} (its details: {details} on Machines)",
            )
        if data["drift"]:
            count = len(data["drift"])
            alerts[f"drift:{count}"] = (
                "fail",
                f"{count} difference(s) between database and target stack: see Targets (5)",
            )
        if data["discovered"]:
            count = len(data["discovered"])
            adopt = key_of(BY_ID["discovered.adopt"], keymap)
            alerts[f"discovered:{count}"] = (
                "info",
                f"{count} unknown PC(s) asked to boot: adopt them with {adopt} on Discovered (9)",
            )
        for key in ("sessions_error", "images_error", "drift_error", "discovered_error"):
            if data[key]:
                alerts[f"error:{key}:{data[key]}"] = ("warn", data[key])
        acknowledged = app.acknowledged  # type: ignore[attr-defined]
        acknowledged &= set(alerts)  # a cause that went and came back is a new alert
        return alerts

    def _show_alerts(self) -> None:
        acknowledged = self.app.acknowledged  # type: ignore[attr-defined]
        rows = []
        by_level = sorted(self.alerts.items(), key=lambda item: list(LEVEL_STYLE).index(item[1][0]))
        for key, (level, sentence) in by_level:
            if key in acknowledged:
                continue
            rows.append(
                (key, {"level": Text(level, style=LEVEL_STYLE.get(level, "")), "alert": " ".join(sentence.split())})
            )
        hidden = len(acknowledged)
        if not rows:
            rows = [
                (
                    "none",
                    {
                        "level": Text("ok", style="green"),
                        "alert": "None." if not hidden else f"None new ({hidden} acknowledged).",
                    },
                )
            ]
        table = self.query_one("#alerts", KeyedTable)
        table.sync(rows)
        table.styles.height = min(len(rows), ALERT_ROWS) + 1
        self.sub_title = f"{hidden} alert(s) acknowledged" if hidden else ""
        self._show_alert_detail()

    def on_keyed_table_row_highlighted(self, event: KeyedTable.RowHighlighted) -> None:
        self._show_alert_detail()

    def _show_alert_detail(self) -> None:
        key = self.query_one("#alerts", KeyedTable).cursor_key
        alert = self.alerts.get(key or "")
        detail = self.query_one("#alert-detail", Static)
        if alert is None:
            detail.update("")
            detail.add_class("hidden")
            return
        level, sentence = alert
        keymap = dict(self.core.settings.keys)
        text = Text(" ".join(sentence.split()), style=LEVEL_STYLE.get(level, ""))
        text.append(f"  ({key_of(BY_ID['dashboard.ack'], keymap)}: acknowledge)", style="dim")
        detail.update(text)
        detail.remove_class("hidden")

    def action_acknowledge(self) -> None:
        table = self.query_one("#alerts", KeyedTable)
        key = table.cursor_key
        if key is None or key not in self.alerts:
            self.notify("No alert under the cursor.", severity="warning", timeout=3)
            return
        self.app.acknowledged.add(key)  # type: ignore[attr-defined]
        self._show_alerts()
        self.notify("Alert acknowledged: hidden until it changes.", timeout=3)
