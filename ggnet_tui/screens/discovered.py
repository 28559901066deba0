"""Discovered PCs: MACs that asked this server for a boot script but belong to no machine (the
engine records them). Adopt them (name, image, boot mode) one by one or marked together: one core
call, all or none; or forget them."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from core.enums import BootMode

from ..commands import bindings
from ..widgets.table import Column
from .base import MarkingTableScreen, mac_digits
from .common import attempt, when
from .machines import BOOT_MODES, NO_IMAGE, image_choices
from .modals import ConfirmScreen, Field, FormScreen


class DiscoveredScreen(MarkingTableScreen):
    SCOPE = "discovered"
    TITLE = "Discovered"
    BINDINGS = bindings("table", "discovered")
    KEEP = ("mark", "mac")
    COLUMNS = [
        Column("mark", " ", 1, 0),
        Column("mac", "MAC", 17, 0),
        Column("address", "Last address", 9, 1, max_width=15),
        Column("requests", "Asked", 5, 2),
        Column("first", "First seen", 11, 3),
        Column("last", "Last seen", 11, 0),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, Any] = {}

    async def fetch(self) -> Any:
        from core.services import boots

        return await boots.discovered(self.core, self.actor)

    def show(self, data: Any) -> None:
        self.found = {d.mac: d for d in data}
        self.marked &= set(self.found)
        self.rebuild()

    def rebuild(self) -> None:
        rows = []
        for d in self.found.values():
            rows.append(
                (
                    d.mac,
                    {
                        "mark": Text("*", style="bold") if d.mac in self.marked else "",
                        "mac": d.mac,
                        "address": d.last_address or "-",
                        "requests": str(d.requests),
                        "first": when(d.first_seen_at),
                        "last": when(d.last_seen_at),
                    },
                )
            )
        self.set_rows(rows)
        marked = len(self.marked)
        self.sub_title = f"{len(self.found)} PCs asked to boot" + (f", {marked} marked" if marked else "")
        if not self.found:
            self.set_notice("No unknown PC has asked to boot. PCs that do appear here, to adopt with a.")

    def search_extra(self, key: str, cells: Any) -> str:
        return mac_digits(key)

    def action_adopt(self) -> None:
        macs = self.chosen()
        if not macs:
            self.notify("No discovered PC under the cursor.", severity="warning")
            return
        from core.services import boots

        async def submit(values: dict[str, str]) -> Any:
            common = {"boot_mode": values["boot_mode"]}
            if values["image"] != NO_IMAGE:
                common["image"] = values["image"]
            if len(macs) == 1:
                items = [{"mac": macs[0], "name": values["name"], **common}]
            else:
                first = values["first"].strip()
                number = int(first) if first.isdigit() else first
                names = boots.numbered_names(values["prefix"], number, len(macs))  # type: ignore[arg-type]
                items = [{"mac": mac, "name": name, **common} for mac, name in zip(macs, names, strict=True)]
            return await self.app.run_work(boots.adopt(self.core, self.actor, items))  # type: ignore[attr-defined]

        def done(names: Any) -> None:
            if names and names is not True:
                self.marked.clear()
                listing = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
                self.notify(f"Adopted {len(names)}: {listing}. They boot at their next try.", timeout=6)
                self.action_refresh_now()

        async def go() -> None:
            try:
                systems, _games = await image_choices(self.core, self.actor)
            except Exception as exc:
                self.notify(getattr(exc, "message", None) or self.app.incident(exc), severity="error")  # type: ignore[attr-defined]
                return
            image = systems[1] if len(systems) > 1 else NO_IMAGE
            common = [
                Field("image", "Image", image, choices=systems),
                Field("boot_mode", "Boot mode", BootMode.BIOS.value, choices=BOOT_MODES),
            ]
            if len(macs) == 1:
                fields = [Field("name", "Name", "", placeholder="pc01 (letters, digits, -)"), *common]
                title = f"Adopt {macs[0]}"
            else:
                fields = [
                    Field("prefix", "Names", "pc", placeholder="the names' beginning, e.g. pc"),
                    Field("first", "From", "1", placeholder="first number: pc01, pc02 ..."),
                    *common,
                ]
                title = f"Adopt {len(macs)} PCs (all or none)"
            self.app.push_screen(FormScreen(title, fields, submit, "Adopt"), done)

        self.run_worker(go(), group="work")

    def action_forget(self) -> None:
        macs = self.chosen()
        if not macs:
            return
        from core.services import boots

        async def go() -> None:
            count = await attempt(self, boots.forget_discovered(self.core, self.actor, macs))
            if count:
                self.marked.clear()
                self.notify(f"Forgot {count} PC(s); they reappear if they ask again.", timeout=4)
                self.action_refresh_now()

        listing = ", ".join(macs[:6]) + (f" and {len(macs) - 6} more" if len(macs) > 6 else "")

        def answer(yes: bool | None) -> None:
            if yes:
                self.run_worker(go(), group="work")

        self.app.push_screen(ConfirmScreen(f"Forget {len(macs)} discovered PC(s): {listing}?", yes="Forget"), answer)
