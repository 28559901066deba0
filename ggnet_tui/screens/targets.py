"""Targets: what the iSCSI target stack really holds, drift against the database, reconcile."""

from __future__ import annotations

from typing import Any

from rich.text import Text

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
        from core.services import targets as module

        views = await module.list_targets(self.core, self.actor)
        drift = await module.find_drift(self.core)
        return views, drift

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
                        "lun": "-" if t.lun is None else str(t.lun),
                        "file": t.backing_file or "-",
                    },
                )
            )
        shown = {t.iqn.lower() for t in views}
        for d in drift:
            if d.subject.lower() in shown:
                continue
            rows.append(
                (
                    f"drift:{d.kind}:{d.subject}",
                    {
                        "iqn": d.subject,
                        "state": Text(d.kind, style="bold red"),
                        "machine": d.machine or "-",
                        "login": "-",
                        "lun": "-",
                        "file": d.repair,
                    },
                )
            )
        self.set_rows(rows)
        self.sub_title = f"{len(views)} targets, {len(drift)} drift"

    def action_reconcile(self) -> None:
        from core.services import targets as module

        async def go() -> None:
            report = await attempt(self, module.reconcile(self.core, self.actor))
            if report:
                lines = [f"repaired: {r}" for r in report.repaired] + [f"failed: {e}" for e in report.errors]
                self.app.push_screen(TextScreen("Reconcile", "\n".join(lines) or "Nothing to do: no drift."))
            self.action_refresh_now()

        def answer(yes: bool | None) -> None:
            if yes:
                self.run_worker(go(), group="work")

        self.app.push_screen(ConfirmScreen("Make the target stack match the database?", yes="Reconcile"), answer)
