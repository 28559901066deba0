"""Machines: live status table, add/edit/delete, marks for bulk actions, CSV import, details."""

from __future__ import annotations

from functools import partial
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from core.services import machines as machine_service

from ..commands import bindings
from ..widgets.table import Cells, Column, KeyedTable
from .base import TableScreen, mac_digits
from .common import attempt, full_time, status, when
from .modals import ConfirmScreen, CsvImportScreen, Field, FormScreen

BOOT_MODES = ("bios", "uefi", "uefi-secure")
POLICIES = ("as it is", "fresh", "keep")


POLICY_SHORT = {"fresh": "fresh", "keep": "keep", "maintenance": "maint"}


def machine_state(m: Any, live: Any) -> str:
    """What the row says: the engine's failed or booting wins, else what liveness and logins show."""
    if not m.boot_enabled:
        return "disabled"
    if m.status in ("failed", "booting"):
        return str(m.status)
    return str(live.state) if live else ("booted" if m.status == "booted" else "offline")


class MachinesScreen(TableScreen):
    SCOPE = "machines"
    TITLE = "Machines"
    BINDINGS = bindings("table", "machines")
    # the MAC is a PC's identity (what it boots with): kept before IP, image and disk policy
    COLUMNS = [
        Column("mark", " ", 1, 0),
        Column("name", "Name", 8, 0, max_width=24),
        Column("status", "Status", 7, 0, max_width=9),
        Column("mac", "MAC", 17, 1),
        Column("ip", "IP", 7, 2, max_width=15),
        Column("image", "Image", 8, 3, max_width=24),
        Column("policy", "Disk", 5, 4, max_width=5),
        Column("boot", "Boot", 4, 5, max_width=11),
        Column("seen", "Last seen", 11, 6),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.marked: set[str] = set()
        self.machines: dict[str, Any] = {}
        self._row_cache: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._details_shown: Text | str | None = None

    def compose_extra(self) -> ComposeResult:
        yield Static("", id="details")

    async def fetch(self) -> Any:
        return await machine_service.list_machines(self.core, self.actor)

    def show(self, data: Any) -> None:
        self.machines = {m.name: m for m in data}
        self.marked &= set(self.machines)
        self.rebuild()

    def rebuild(self) -> None:
        statuses = self.app.monitor.statuses  # type: ignore[attr-defined]
        rows = []
        cache: dict[str, tuple[Any, dict[str, Any]]] = {}
        for name, m in self.machines.items():
            live = statuses.get(name)
            seen = max((t for t in (m.last_seen_at, live.seen_at if live else None) if t), default=None)
            state = machine_state(m, live)
            signature = (m.row_version, m.image, m.pinned_version, state, seen, name in self.marked)
            previous = self._row_cache.get(name)
            if previous is not None and previous[0] == signature:
                cells = previous[1]  # unchanged: the same object, so the table skips it at once
            else:
                image = m.image or "-"
                if m.image and m.pinned_version:
                    image = f"{m.image} v{m.pinned_version}"
                cells = {
                    "mark": Text("*", style="bold") if name in self.marked else "",
                    "name": name,
                    "status": status(state),
                    "ip": m.ip or "-",
                    "policy": POLICY_SHORT.get(m.writeback_policy, m.writeback_policy),
                    "image": image,
                    "mac": m.mac,
                    "boot": m.boot_mode,
                    "seen": when(seen),
                }
            cache[name] = (signature, cells)
            rows.append((name, cells))
        self._row_cache = cache
        self.set_rows(rows)

    def on_rows_shown(self) -> None:
        self.show_details()
        marked = len(self.marked)
        self.sub_title = f"{len(self.machines)} machines" + (f", {marked} marked" if marked else "")

    def search_extra(self, key: str, cells: Cells) -> str:
        machine = self.machines.get(key)
        return mac_digits(machine.mac) if machine is not None else ""

    def on_keyed_table_row_highlighted(self, event: KeyedTable.RowHighlighted) -> None:
        self.show_details()

    def show_details(self) -> None:
        m = self.machines.get(self.cursor_key or "")
        if m is None:
            self._details("No machine selected. Press a to add one, c to import a CSV file.")
            return
        live = self.app.monitor.statuses.get(m.name)  # type: ignore[attr-defined]
        text = Text()
        text.append(f"{m.name}", style="bold")
        text.append(f"  {m.mac}  {m.ip or 'no IP'}  {m.boot_mode}  image {m.image or '-'}")
        text.append(f"{' v' + str(m.pinned_version) if m.pinned_version else ''}")
        if m.game_image:
            text.append(f"  games {m.game_image}{' v' + str(m.game_pinned_version) if m.game_pinned_version else ''}")
        text.append(f"\nIQN {m.initiator_iqn}  disk {m.writeback_policy}{'' if m.boot_enabled else '  DISABLED'}\n")
        state = f"{m.status}" + (f": {m.status_detail}" if m.status_detail and m.status == "failed" else "")
        login = ""
        if live is not None and live.logged_in:
            login = f", iSCSI logged in from {live.client_address or '?'}"
        text.append(f"{state}{login}; changed by {m.updated_by or '-'} at {full_time(m.updated_at)}")
        if m.notes:
            text.append(f"\n{m.notes}")
        self._details(text)

    def _details(self, content: Text | str) -> None:
        # an update lays the whole screen out again: skip it when the text is the same
        if content != self._details_shown:
            self._details_shown = content
            self.query_one("#details", Static).update(content)

    # --- selection ---------------------------------------------------------

    def chosen(self) -> list[str]:
        """The marked machines, or the one under the cursor."""
        if self.marked:
            return [k for k in self.table.order if k in self.marked] or sorted(self.marked)
        key = self.cursor_key
        return [key] if key else []

    def action_mark(self) -> None:
        key = self.cursor_key
        if key is None:
            return
        self.marked ^= {key}
        self.rebuild()
        if self.table.cursor_row < self.table.row_count - 1:
            self.table.move_cursor(self.table.cursor_row + 1)

    def action_mark_all(self) -> None:
        shown = set(self.table.order)
        self.marked = set() if shown and shown <= self.marked else shown
        self.rebuild()

    def after_change(self, clear_marks: bool = False) -> None:
        if clear_marks:
            self.marked.clear()
        self.action_refresh_now()

    # --- add, edit, delete -------------------------------------------------

    def _fields(self, m: Any = None) -> list[Field]:
        return [
            Field("name", "Name", m.name if m else "", placeholder="pc01 (letters, digits, -)"),
            Field("mac", "MAC", m.mac if m else "", placeholder="any notation: 52:54:00:aa:00:01"),
            Field("ip", "IP", (m.ip or "") if m else "", placeholder="optional, e.g. 10.0.0.21"),
            Field("boot_mode", "Boot mode", m.boot_mode if m else "bios", choices=BOOT_MODES),
            Field("notes", "Notes", m.notes if m else ""),
        ]

    def action_add(self) -> None:
        async def submit(values: dict[str, str]) -> Any:
            fields = {k: v for k, v in values.items() if v.strip() or k in ("name", "mac")}
            return await self.app.run_work(machine_service.add_machine(self.core, self.actor, **fields))  # type: ignore[attr-defined]

        def done(result: Any) -> None:
            if result:
                self.notify(f"Machine {result.name} added.", timeout=3)
                self.after_change()

        self.app.push_screen(FormScreen("Add a machine", self._fields(), submit, "Add"), done)

    def action_edit(self) -> None:
        m = self.machines.get(self.cursor_key or "")
        if m is None:
            self.notify("No machine under the cursor.", severity="warning")
            return

        async def submit(values: dict[str, str]) -> Any:
            old = {"name": m.name, "mac": m.mac, "ip": m.ip or "", "boot_mode": m.boot_mode, "notes": m.notes}
            changes: dict[str, Any] = {k: v for k, v in values.items() if v != old[k]}
            if "ip" in changes and not changes["ip"].strip():
                changes["ip"] = None  # an emptied field clears the IP
            if not changes:
                return m
            return await self.app.run_work(
                machine_service.update_machine(  # type: ignore[attr-defined]
                    self.core, self.actor, m.name, expected_version=m.row_version, **changes
                )
            )

        def done(result: Any) -> None:
            if result:
                self.notify(f"Machine {result.name} saved.", timeout=3)
                self.after_change()

        self.app.push_screen(FormScreen(f"Edit {m.name}", self._fields(m), submit), done)

    def action_delete(self) -> None:
        names = self.chosen()
        if not names:
            return
        listing = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")

        async def go() -> None:
            removed = await attempt(self, machine_service.remove_machines(self.core, self.actor, names))
            if removed:
                self.notify(f"Deleted {len(removed)} machine(s).", timeout=4)
                self.after_change(clear_marks=True)

        def answer(yes: bool | None) -> None:
            if yes:
                self.run_worker(go(), group="work")

        self.app.push_screen(ConfirmScreen(f"Delete {len(names)} machine(s): {listing}?", yes="Delete"), answer)

    def action_import_csv(self) -> None:
        def done(names: Any) -> None:
            if names:
                self.notify(f"Imported {len(names)} machine(s).", timeout=4)
                self.after_change()

        check = partial(machine_service.check_csv, self.core, self.actor)

        async def do_import(text: str, source: str) -> Any:
            return await self.app.run_work(machine_service.import_csv(self.core, self.actor, text, source))  # type: ignore[attr-defined]

        self.app.push_screen(CsvImportScreen(check, do_import), done)

    # --- bulk actions --------------------------------------------------------

    def action_wake(self) -> None:
        names = self.chosen()
        if not names:
            return
        from core.services import wol

        async def go() -> None:
            woken = await attempt(self, wol.wake(self.core, self.actor, names))
            if woken:
                self.notify(f"Wake-on-LAN sent to {', '.join(woken)}.", timeout=4)
                self.after_change(clear_marks=True)

        self.run_worker(go(), group="work")

    def action_start(self) -> None:
        """Prepare the boots now (before the PCs are switched on); the engine does the work."""
        names = self.chosen()
        from core.services import boots

        if not names:
            return

        async def submit(values: dict[str, str]) -> Any:
            policy = None if values["policy"] == POLICIES[0] else values["policy"]
            results, _ids = await self.app.run_work(boots.prepare(self.core, self.actor, names, policy=policy))  # type: ignore[attr-defined]
            return results

        self.app.push_screen(
            FormScreen(
                f"Prepare the boot of {len(names)} machine(s)",
                [Field("policy", "Disk", POLICIES[0], choices=POLICIES)],
                submit,
                "Prepare",
            ),
            self._results,
        )

    def _results(self, results: Any) -> None:
        if not results or results is True:
            return
        from .sessions import summarise

        bad = [r for r in results if not r.ok]
        self.notify(summarise(results), severity="error" if bad else "information", timeout=10 if bad else 4)
        self.after_change(clear_marks=not bad)

    def action_stop(self) -> None:
        from .sessions import stop_with_confirmation

        names = self.chosen()
        if names:
            stop_with_confirmation(self, names, self._results)

    def action_assign(self) -> None:
        names = self.chosen()
        from core.services import images

        if not names:
            return

        async def go() -> None:
            try:
                found = await images.list_images(self.core, self.actor)
            except Exception as exc:
                self.notify(getattr(exc, "message", None) or self.app.incident(exc), severity="error")  # type: ignore[attr-defined]
                return
            choices = tuple(i.name for i in found)
            if not choices:
                self.notify("No images yet: import one on the Images screen (3).", severity="warning")
                return

            async def submit(values: dict[str, str]) -> Any:
                await self.app.run_work(images.assign_images(self.core, self.actor, names, values["image"]))  # type: ignore[attr-defined]
                return True

            def done(result: Any) -> None:
                if result:
                    self.notify(f"Image assigned to {len(names)} machine(s).", timeout=4)
                    self.after_change(clear_marks=True)

            self.app.push_screen(
                FormScreen(
                    f"Assign an image to {len(names)} machine(s)",
                    [Field("image", "Image", choices[0], choices=choices)],
                    submit,
                    "Assign",
                ),
                done,
            )

        self.run_worker(go(), group="work")
