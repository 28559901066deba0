"""Targets: what the iSCSI target stack really holds, drift against the database, reconcile."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from core.enums import EngineRequestState

from ..commands import bindings
from ..widgets.table import Column
from .base import TableScreen
from .common import attempt
from .modals import ConfirmScreen, TextScreen


class TargetsScreen(TableScreen):
    SCOPE = "targets"
    TITLE = "Targets"
    BINDINGS = bindings("table", "targets")
    COLUMNS = [
        Column("iqn", "Target IQN", 36, 0),
        Column("state", "State", 14, 0),
        Column("machine", "Machine", 15, 1),
        Column("login", "Logged in from", 16, 2),
        Column("lun", "LUN", 3, 3),
        Column("file", "Backing file", 30, 4),
    ]

    async def fetch(self) -> Any:
        from core.services import boots
        from core.services import targets as module

        views = await module.list_targets(self.core, self.actor)
        engine = await boots.engine_status(self.core, self.actor)  # the engine's last pass, not a walk of ours
        return views, engine.drift

    def show(self, data: Any) -> None:
        views, drift = data
        rows = []
        for t in views:
            state = "ok" if t.wanted else ("stray (drift)" if t.owned else "not ggnet's")
            rows.append(
                (
                    t.iqn,
                    {
                        "iqn": t.iqn,
                        "state": Text(state, style="green" if t.wanted else ("bold red" if t.owned else "dim")),
                        "machine": t.machine or "-",
                        "login": ", ".join(t.addresses) or ("yes" if t.initiators else "-"),
                        "lun": ",".join(str(n) for n in t.luns) or "-",
                        "file": ", ".join(f for f in t.luns.values() if f) or "-",
                    },
                )
            )
        shown = {t.iqn.lower() for t in views}
        for d in drift:
            if d["subject"].lower() in shown:
                continue
            rows.append(
                (
                    f"drift:{d['kind']}:{d['subject']}",
                    {
                        "iqn": d["subject"],
                        "state": Text(d["kind"], style="bold red"),
                        "machine": d.get("machine") or "-",
                        "login": "-",
                        "lun": "-",
                        "file": ", ".join(d.get("fields") or []) or d.get("repair") or "-",
                    },
                )
            )
        self.set_rows(rows)
        self.sub_title = f"{len(views)} targets, {len(drift)} drift"

    def action_reconcile(self) -> None:
        from core.engine.report import PassReport
        from core.services import boots

        async def go() -> None:
            request_id = await attempt(self, boots.request_pass(self.core, self.actor))
            if not request_id:
                return
            request = await boots.wait_request(self.core, request_id)
            if request is None or request.state == EngineRequestState.PENDING.value:
                self.notify("The engine has not answered yet: is ggnet serve running?", severity="warning")
            elif request.state == EngineRequestState.FAILED.value:
                self.notify(request.error or "the pass failed", severity="error")
            else:
                report = PassReport.from_json(request.result or {})
                lines = [f"repaired: {r}" for r in report.repaired] + [f"failed: {e}" for e in report.errors]
                self.app.push_screen(TextScreen("Reconcile", "\n".join(lines) or "Nothing to do: no drift."))
            self.action_refresh_now()

        def answer(yes: bool | None) -> None:
            if yes:
                self.run_worker(go(), group="work")

        self.app.push_screen(ConfirmScreen("Make the target stack match the database?", yes="Reconcile"), answer)
