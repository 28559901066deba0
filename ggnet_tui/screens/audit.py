"""Audit: paged, filtered by actor, action, object and time; Enter shows an event's before and after."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rich.text import Text

from core.errors import Invalid
from core.services import audit as audit_service

from ..commands import bindings
from ..widgets.table import Column, KeyedTable
from .base import TableScreen
from .common import full_time, status, when
from .modals import Field, FormScreen, TextScreen

PAGE = 50
QUERY_FIELDS = ("actor_name", "action", "object_name", "since", "until")


def _time(field: str, text: str) -> datetime | None:
    text = text.strip()
    if not text:
        return None
    for fmt in ("%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            pass
    raise Invalid(field, "must be a UTC date YYYY-MM-DD or YYYY-MM-DD HH:MM")


class AuditScreen(TableScreen):
    SCOPE = "audit"
    TITLE = "Audit"
    BINDINGS = bindings("table", "audit")
    COLUMNS = [
        Column("at", "When (UTC)", 11, 0),
        Column("actor", "Actor", 8, 0, max_width=20),
        Column("action", "Action", 12, 0, max_width=28),
        Column("object", "Object", 8, 1, max_width=24),
        Column("outcome", "Outcome", 7, 0),
        Column("detail", "Detail", 12, 3, max_width=400),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.page_offset = 0
        self.total = 0
        self.query_values: dict[str, str] = {k: "" for k in QUERY_FIELDS}
        self.events: dict[str, Any] = {}

    def _filters(self, values: dict[str, str]) -> dict[str, Any]:
        return {
            "actor_name": values["actor_name"].strip() or None,
            "action": values["action"].strip() or None,
            "object_name": values["object_name"].strip() or None,
            "since": _time("since", values["since"]),
            "until": _time("until", values["until"]),
        }

    async def fetch(self) -> Any:
        return await audit_service.list_events(
            self.core, self.actor, limit=PAGE, offset=self.page_offset, **self._filters(self.query_values)
        )

    def show(self, data: Any) -> None:
        events, self.total = data
        self.events = {str(e.id): e for e in events}
        rows = [
            (
                str(e.id),
                {
                    "at": when(e.at),
                    "actor": e.actor,
                    "action": e.action,
                    "object": e.object_name or e.object_type or "-",
                    "outcome": status(e.outcome),
                    "detail": e.detail or "",
                },
            )
            for e in events
        ]
        self.set_rows(rows)
        last = min(self.page_offset + PAGE, self.total)
        self.sub_title = f"events {self.page_offset + 1 if self.total else 0}-{last} of {self.total}"
        self.set_notice(
            f"Events {self.page_offset + 1 if self.total else 0}-{last} of {self.total}  ([ newer, ] older, f query, Enter details)"
        )

    def action_page(self, step: int) -> None:
        new = self.page_offset + step * PAGE
        if 0 <= new < max(self.total, 1):
            self.page_offset = new
            self.action_refresh_now()

    def action_query(self) -> None:
        async def submit(values: dict[str, str]) -> dict[str, str]:
            self._filters(values)  # refuse a malformed time inline before closing
            return values

        def done(values: Any) -> None:
            if values and values is not True:
                self.query_values = values
                self.page_offset = 0
                self.action_refresh_now()

        labels = {
            "actor_name": "Actor",
            "action": "Action",
            "object_name": "Object",
            "since": "Since",
            "until": "Until",
        }
        fields = [
            Field(
                k,
                labels[k],
                self.query_values[k],
                placeholder="YYYY-MM-DD [HH:MM] UTC"
                if k in ("since", "until")
                else ("machine, user.create ..." if k == "action" else ""),
            )
            for k in QUERY_FIELDS
        ]
        self.app.push_screen(FormScreen("Query the audit trail", fields, submit, "Apply"), done)

    def on_keyed_table_row_selected(self, event: KeyedTable.RowSelected) -> None:
        e = self.events.get(event.key)
        if e is None:
            return
        body = Text()
        body.append(f"{full_time(e.at)}  {e.actor}  {e.action}  {e.outcome}\n", style="bold")
        body.append(f"object: {e.object_type or '-'} {e.object_name or ''} (id {e.object_id or '-'})\n")
        if e.detail:
            body.append(f"detail: {e.detail}\n")
        body.append("\nbefore:\n", style="bold")
        body.append(json.dumps(e.before, indent=2, sort_keys=True, default=str) if e.before is not None else "-")
        body.append("\n\nafter:\n", style="bold")
        body.append(json.dumps(e.after, indent=2, sort_keys=True, default=str) if e.after is not None else "-")
        self.app.push_screen(TextScreen(f"Audit event {e.id}", body))
