"""Machines: live status table, add/edit/delete, marks for bulk actions, CSV import; Enter opens
a machine's details (boot history, disk, I/O)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from core.enums import BootMode, ImageKind, MachineStatus, WritebackPolicy
from core.monitor import OFFLINE, Throughput
from core.services import machines as machine_service

from ..commands import BY_ID, bindings, key_of
from ..widgets.table import Cells, Column, KeyedTable
from .base import MarkingTableScreen, mac_digits
from .common import attempt, full_time, rate, size, status, summarise, when
from .modals import ConfirmScreen, CsvImportScreen, Field, FormScreen

BOOT_MODES = tuple(m.value for m in BootMode)
AS_IT_IS = "as it is"
POLICIES = (AS_IT_IS, WritebackPolicy.FRESH.value, WritebackPolicy.KEEP.value)
NO_IMAGE = "-"
YES, NO = "yes", "no"
POLICY_SHORT = {WritebackPolicy.MAINTENANCE.value: "maint"}
DISABLED = "disabled"


def machine_state(m: Any, live: Any) -> str:
    """What the row says: the engine's failed or booting wins, else what liveness and logins show."""
    if not m.boot_enabled:
        return DISABLED
    if m.status in (MachineStatus.FAILED.value, MachineStatus.BOOTING.value):
        return str(m.status)
    if live:
        return str(live.state)
    return MachineStatus.BOOTED.value if m.status == MachineStatus.BOOTED.value else OFFLINE


def image_text(name: str | None, pinned: int | None) -> str:
    return f"{name} v{pinned}" if name and pinned else (name or NO_IMAGE)


async def image_choices(core: Any, actor: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The system and game images a machine may be given (with "-" for none)."""
    from core.services import images

    found = await images.list_images(core, actor)
    system = tuple(i.name for i in found if i.kind == ImageKind.SYSTEM.value)
    game = tuple(i.name for i in found if i.kind == ImageKind.GAME.value)
    return (NO_IMAGE, *system), (NO_IMAGE, *game)


def machine_fields(m: Any, systems: tuple[str, ...], games: tuple[str, ...]) -> list[Field]:
    """The machine form: identity, may it boot, its disk policy, its images, notes. Field names
    are core's, so core's refusals land under the field they name."""
    maintenance = m is not None and m.writeback_policy == WritebackPolicy.MAINTENANCE.value
    policies = (WritebackPolicy.MAINTENANCE.value,) if maintenance else POLICIES[1:]
    return [
        Field("name", "Name", m.name if m else "", placeholder="pc01 (letters, digits, -)"),
        Field("mac", "MAC", m.mac if m else "", placeholder="any notation: 52:54:00:aa:00:01"),
        Field("ip", "IP", (m.ip or "") if m else "", placeholder="optional, e.g. 10.0.0.21"),
        Field("boot_mode", "Boot mode", m.boot_mode if m else BootMode.BIOS.value, choices=BOOT_MODES),
        Field("boot_enabled", "May boot", (YES if m.boot_enabled else NO) if m else YES, choices=(YES, NO)),
        Field("writeback_policy", "Disk", m.writeback_policy if m else policies[0], choices=policies),
        Field("image", "Image", (m.image or NO_IMAGE) if m else NO_IMAGE, choices=systems),
        Field(
            "pin_version",
            "Version",
            str(m.pinned_version or "") if m else "",
            placeholder="empty: the image's active version",
        ),
        Field("game_image", "Game image", (m.game_image or NO_IMAGE) if m else NO_IMAGE, choices=games),
        Field("notes", "Notes", m.notes if m else ""),
    ]


def form_values(values: dict[str, str]) -> dict[str, Any]:
    """The form's text as core's arguments: yes/no as a boolean, "-" as no image, a version number."""
    result: dict[str, Any] = dict(values)
    result["boot_enabled"] = values["boot_enabled"] == YES
    for key in ("image", "game_image"):
        result[key] = None if values[key] == NO_IMAGE else values[key]
    pin = values["pin_version"].strip().lower().removeprefix("v")
    result["pin_version"] = None if not pin else (int(pin) if pin.isdigit() else values["pin_version"])
    return result


def open_machine_form(screen: Any, m: Any, done: Callable[[Any], None]) -> None:
    """The add form (``m`` None) or the edit form of ``m``, once the images to choose from are
    known; saving is one core call (add_machine or update_machine), all or nothing."""
    app = screen.app

    async def add(values: dict[str, str]) -> Any:
        given = form_values(values)
        given.pop("pin_version")  # a new machine follows the active version
        if not given["ip"].strip():
            given.pop("ip")
        return await app.run_work(machine_service.add_machine(app.core, app.actor, **given))

    async def edit(values: dict[str, str]) -> Any:
        given = form_values(values)
        old = form_values({f.name: f.value for f in machine_fields(m, (), ())})
        changes: dict[str, Any] = {k: v for k, v in given.items() if v != old[k]}
        if "ip" in changes and not changes["ip"].strip():
            changes["ip"] = None  # an emptied field clears the IP
        if changes.get("writeback_policy") == WritebackPolicy.MAINTENANCE.value:
            changes.pop("writeback_policy")
        if not changes:
            return m
        return await app.run_work(
            machine_service.update_machine(app.core, app.actor, m.name, expected_version=m.row_version, **changes)
        )

    async def go() -> None:
        try:
            systems, games = await image_choices(app.core, app.actor)
        except Exception as exc:
            app.notify(getattr(exc, "message", None) or app.incident(exc), severity="error")
            return
        fields = machine_fields(m, systems, games)
        if m is None:
            app.push_screen(FormScreen("Add a machine", fields, add, "Add"), done)
        else:
            app.push_screen(FormScreen(f"Edit {m.name}", fields, edit), done)

    screen.run_worker(go(), group="work")


class MachinesScreen(MarkingTableScreen):
    SCOPE = "machines"
    TITLE = "Machines"
    BINDINGS = bindings("table", "machines")
    # the MAC is a PC's identity (what it boots with): kept before IP, image and disk policy
    KEEP = ("mark", "name")
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
        # ggRock's Sent/Received/Speed: chosen with C
        Column("game", "Games", 6, 7, max_width=20, default=False),
        Column("writeback", "Disk size", 9, 7, default=False),
        Column("read", "Read", 9, 7, default=False),
        Column("written", "Written", 9, 7, default=False),
        Column("speed", "I/O", 9, 7, max_width=22, default=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.machines: dict[str, Any] = {}
        self._row_cache: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._details_shown: Text | str | None = None
        self._io: dict[str, Throughput] = {}

    def compose_extra(self) -> ComposeResult:
        yield Static("", id="details")

    async def fetch(self) -> Any:
        return await machine_service.list_machines(self.core, self.actor)

    def show(self, data: Any) -> None:
        self.machines = {m.name: m for m in data}
        self.marked &= set(self.machines)
        now = self.app.clock()  # type: ignore[attr-defined]
        idle = 2 * float(self.core.settings.observe_seconds)
        io = {}
        for name, m in self.machines.items():
            meter = self._io.get(name) or Throughput(idle)
            meter.update(m.read_bytes, m.written_bytes, m.observed_at, now)
            io[name] = meter
        self._io = io
        self.rebuild()

    def sort_value(self, key: str, column: str, cells: Cells) -> Any:
        m = self.machines.get(key)
        if m is not None and column in ("writeback", "read", "written", "speed"):
            if column == "speed":
                meter = self._io.get(key)
                speed = (meter.read_per_second or 0) + (meter.written_per_second or 0) if meter else 0
                return speed
            value = {"writeback": m.writeback_bytes, "read": m.read_bytes, "written": m.written_bytes}[column]
            return -1 if value is None else value
        return super().sort_value(key, column, cells)

    def rebuild(self) -> None:
        statuses = self.app.monitor.statuses  # type: ignore[attr-defined]
        rows = []
        cache: dict[str, tuple[Any, dict[str, Any]]] = {}
        for name, m in self.machines.items():
            live = statuses.get(name)
            seen = max((t for t in (m.last_seen_at, live.seen_at if live else None) if t), default=None)
            state = machine_state(m, live)
            meter = self._io.get(name)
            speeds = (meter.read_per_second, meter.written_per_second) if meter else (None, None)
            signature = (
                m.row_version,
                m.image,
                m.pinned_version,
                m.game_image,
                state,
                seen,
                name in self.marked,
                m.writeback_bytes,
                m.read_bytes,
                m.written_bytes,
                speeds,
            )
            previous = self._row_cache.get(name)
            if previous is not None and previous[0] == signature:
                cells = previous[1]  # unchanged: the same object, so the table skips it at once
            else:
                cells = {
                    "mark": Text("*", style="bold") if name in self.marked else "",
                    "name": name,
                    "status": status(state),
                    "ip": m.ip or "-",
                    "policy": POLICY_SHORT.get(m.writeback_policy, m.writeback_policy),
                    "image": image_text(m.image, m.pinned_version),
                    "mac": m.mac,
                    "boot": m.boot_mode,
                    "seen": when(seen),
                    "game": image_text(m.game_image, m.game_pinned_version),
                    "writeback": size(m.writeback_bytes),
                    "read": size(m.read_bytes),
                    "written": size(m.written_bytes),
                    "speed": "-" if speeds == (None, None) else f"{rate(speeds[0])} {rate(speeds[1])}",
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

    async def on_keyed_table_row_selected(self, event: KeyedTable.RowSelected) -> None:
        await self.action_details()

    async def action_details(self) -> None:
        name = self.cursor_key
        if name is None:
            self.notify("No machine under the cursor.", severity="warning")
            return
        from .details import open_details

        await open_details(self.app, name)

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
        failed = m.status == MachineStatus.FAILED.value
        state = f"{m.status}" + (f": {m.status_detail}" if m.status_detail and failed else "")
        login = ""
        if live is not None and live.logged_in:
            login = f", iSCSI logged in from {live.client_address or '?'}"
        text.append(f"{state}{login}; changed by {m.updated_by or '-'} at {full_time(m.updated_at)}")
        text.append(f"  Enter: details{'  ' + m.notes if m.notes else ''}", style="dim")
        self._details(text)

    def _details(self, content: Text | str) -> None:
        # an update lays the whole screen out again: skip it when the text is the same
        if content != self._details_shown:
            self._details_shown = content
            self.query_one("#details", Static).update(content)

    # --- selection ---------------------------------------------------------

    def after_change(self, clear_marks: bool = False) -> None:
        if clear_marks:
            self.marked.clear()
        self.action_refresh_now()

    # --- add, edit, delete -------------------------------------------------

    def _saved(self, result: Any, verb: str = "saved") -> None:
        if result and result is not True:
            self.notify(f"Machine {result.name} {verb}.", timeout=3)
            self.after_change()

    def action_add(self) -> None:
        open_machine_form(self, None, partial(self._saved, verb="added"))

    def action_edit(self) -> None:
        m = self.machines.get(self.cursor_key or "")
        if m is None:
            self.notify("No machine under the cursor.", severity="warning")
            return
        open_machine_form(self, m, self._saved)

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
            policy = None if values["policy"] == AS_IT_IS else values["policy"]
            results, _ids = await self.app.run_work(boots.prepare(self.core, self.actor, names, policy=policy))  # type: ignore[attr-defined]
            return results

        self.app.push_screen(
            FormScreen(
                f"Prepare the boot of {len(names)} machine(s)",
                [Field("policy", "Disk", AS_IT_IS, choices=POLICIES)],
                submit,
                "Prepare",
            ),
            partial(self._results, "prepared"),
        )

    def _results(self, verb: str, results: Any) -> None:
        if not results or results is True:
            return
        bad = [r for r in results if not r.ok]
        self.notify(
            summarise(results, verb, self.app), severity="error" if bad else "information", timeout=10 if bad else 4
        )
        self.after_change(clear_marks=not bad)

    def action_stop(self) -> None:
        from .sessions import stop_with_confirmation

        names = self.chosen()
        if names:
            stop_with_confirmation(self, names, partial(self._results, "taken offline"))

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
            choices = tuple(i.name for i in found if i.kind == ImageKind.SYSTEM.value)
            if not choices:
                key = key_of(BY_ID["images.import"], dict(self.core.settings.keys))
                self.notify(f"No system images yet: press {key} on Images (3) to import one.", severity="warning")
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
