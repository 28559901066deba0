"""Images: each image with its versions and the machines using them; import with a file picker
and a progress dialog whose Esc cancels the conversion; activate; delete as core allows."""

from __future__ import annotations

import asyncio
from pathlib import Path
from time import monotonic
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DirectoryTree, Input, Label, ProgressBar, Select, Static

from core.errors import GgnetError

from ..commands import bindings
from ..widgets.table import Column
from .base import TableScreen
from .common import attempt, when
from .modals import ConfirmScreen

KINDS = ("system", "game")


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.1f} GiB"


class FileTree(DirectoryTree):
    """The server's files; on the Linux console with ASCII marks instead of emoji it cannot draw."""

    def on_mount(self) -> None:
        if self.app.has_class("-linux"):
            self.ICON_NODE, self.ICON_NODE_EXPANDED, self.ICON_FILE = "+ ", "- ", "  "


class ImportDialog(ModalScreen[dict[str, str] | None]):
    """Choose a file on the server (tree or typed path), a name and kind."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]
    AUTO_FOCUS = "#tree"

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label("Import an image file from this server", classes="dialog-title")
            yield FileTree(str(self.root), id="tree")
            with Horizontal(classes="field"):
                yield Label("File", classes="field-label")
                yield Input(placeholder="/path/to/disk.vhdx", id="path", compact=True)
            with Horizontal(classes="field"):
                yield Label("Name", classes="field-label")
                yield Input(placeholder="image name, e.g. win11", id="name", compact=True)
            with Horizontal(classes="field"):
                yield Label("Kind", classes="field-label")
                yield Select([(k, k) for k in KINDS], value="system", allow_blank=False, id="kind", compact=True)
            yield Static("", id="error", classes="field-error hidden")
            with Horizontal(classes="buttons"):
                yield Button("Import", id="import", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        self.query_one("#path", Input).value = str(event.path)
        name = self.query_one("#name", Input)
        if not name.value:
            name.value = event.path.stem.lower()[:32]
        name.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._done()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "import":
            self._done()
        else:
            self.dismiss(None)

    def _done(self) -> None:
        path = self.query_one("#path", Input).value.strip()
        if not path:
            error = self.query_one("#error", Static)
            error.update("file: choose a file in the tree or type its path")
            error.remove_class("hidden")
            return
        self.dismiss(
            {
                "path": path,
                "name": self.query_one("#name", Input).value.strip(),
                "kind": str(self.query_one("#kind", Select).value),
            }
        )

    def action_cancel(self) -> None:
        self.dismiss(None)


class ProgressDialog(ModalScreen[Any]):
    """Runs the import; shows percent, MB/s and time left; Esc cancels it cleanly (core removes
    the partial file and writes no row)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel import", id="dialog.cancel")]

    def __init__(self, request: dict[str, str]) -> None:
        super().__init__()
        self.request = request
        self.cancel = asyncio.Event()
        self.started = monotonic()
        try:
            self.source_size = Path(request["path"]).stat().st_size
        except OSError:
            self.source_size = 0

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Importing {self.request['path']}", classes="dialog-title")
            yield ProgressBar(total=100, show_eta=False, id="bar")
            yield Static("starting ...", id="rate")
            yield Static("Esc cancels; nothing is left behind.", classes="dim")

    def on_mount(self) -> None:
        self.run_worker(self._run(), group="work", exit_on_error=False)

    def progress(self, percent: float) -> None:
        elapsed = max(monotonic() - self.started, 1e-6)
        self.query_one("#bar", ProgressBar).update(progress=percent)
        rate = self.source_size * percent / 100 / elapsed / 1e6
        left = elapsed * (100 - percent) / percent if percent > 0 else None
        self.query_one("#rate", Static).update(
            f"{percent:5.1f}%   {rate:6.1f} MB/s   " + (f"{left:4.0f} s left" if left is not None else "")
        )

    async def _run(self) -> None:
        from core.services import images

        app = self.app
        try:
            result = await app.run_work(
                images.import_image(  # type: ignore[attr-defined, union-attr]
                    app.core,
                    app.actor,
                    self.request["path"],
                    name=self.request["name"] or None,  # type: ignore[attr-defined]
                    kind=self.request["kind"],
                    progress=self.progress,
                    cancel=self.cancel,
                )
            )
        except GgnetError as exc:
            if self.cancel.is_set():
                self.dismiss("cancelled")
            else:
                self.dismiss(exc)
            return
        except Exception as exc:
            self.dismiss(RuntimeError(app.incident(exc)))  # type: ignore[attr-defined]
            return
        self.dismiss(result)

    def action_cancel(self) -> None:
        self.cancel.set()
        self.query_one("#rate", Static).update("cancelling ...")


class ImagesScreen(TableScreen):
    SCOPE = "images"
    TITLE = "Images"
    BINDINGS = bindings("table", "images")
    COLUMNS = [
        Column("name", "Image / version", 18, 0),
        Column("active", "Active", 6, 0),
        Column("kind", "Kind", 6, 2),
        Column("size", "Size", 9, 1),
        Column("used", "Used by", 24, 0),
        Column("format", "From", 6, 4),
        Column("created", "Created", 11, 3),
    ]

    async def fetch(self) -> Any:
        from core.services import images

        found = await images.list_images(self.core, self.actor)
        versions = {i.name: await images.list_versions(self.core, self.actor, i.name) for i in found}
        return found, versions

    def show(self, data: Any) -> None:
        found, versions = data
        self.entries: dict[str, tuple[str, int | None]] = {}
        rows = []
        for image in found:
            key = f"img:{image.name}"
            self.entries[key] = (image.name, None)
            rows.append(
                (
                    key,
                    {
                        "name": Text(image.name, style="bold"),
                        "active": f"v{image.active_version}" if image.active_version else "-",
                        "kind": image.kind,
                        "size": _size(image.virtual_size),
                        "used": ", ".join(image.assigned_to) or "-",
                        "format": "",
                        "created": when(image.created_at),
                    },
                )
            )
            for v in versions.get(image.name, []):
                vkey = f"ver:{image.name}:{v.number}"
                self.entries[vkey] = (image.name, v.number)
                users = sorted(set(v.pinned_by) | set(v.in_use_by))
                rows.append(
                    (
                        vkey,
                        {
                            "name": f"  v{v.number}",
                            "active": Text("active", style="green") if v.is_active else "",
                            "kind": "",
                            "size": _size(v.virtual_size),
                            "used": ", ".join(users) or "-",
                            "format": v.source_format,
                            "created": when(v.created_at),
                        },
                    )
                )
        self.set_rows(rows)
        self.sub_title = f"{len(found)} images"

    def _entry(self) -> tuple[str, int | None] | None:
        entry = getattr(self, "entries", {}).get(self.cursor_key or "")
        if entry is None:
            self.notify("No image under the cursor.", severity="warning")
        return entry

    def action_import_image(self) -> None:
        def finished(result: Any) -> None:
            if result == "cancelled":
                self.notify("Import cancelled; nothing was left behind.", severity="warning", timeout=6)
            elif isinstance(result, GgnetError):
                self.notify(result.message, severity="error", timeout=10)
            elif isinstance(result, Exception):
                self.notify(str(result), severity="error", timeout=12)
            elif result:
                self.notify(f"Imported {result.image} version {result.number}.", timeout=5)
            self.action_refresh_now()

        def chosen(request: Any) -> None:
            if request:
                self.app.push_screen(ProgressDialog(request), finished)

        root = Path(getattr(self.app, "import_root", "/"))
        self.app.push_screen(ImportDialog(root), chosen)

    def action_activate(self) -> None:
        entry = self._entry()
        if entry is None:
            return
        name, number = entry
        if number is None:
            self.notify("Put the cursor on a version (v1, v2 ...) to activate it.", severity="warning")
            return
        from core.services import images

        async def go() -> None:
            if await attempt(
                self, images.activate_version(self.core, self.actor, name, number), f"{name} v{number} is now active."
            ):
                self.action_refresh_now()

        self.run_worker(go(), group="work")

    def action_delete(self) -> None:
        entry = self._entry()
        if entry is None:
            return
        name, number = entry
        from core.services import images

        what = f"version {number} of image {name}" if number else f"image {name} with all its versions"

        async def go() -> None:
            if await attempt(self, images.remove_image(self.core, self.actor, name, number), f"Deleted {what}."):
                self.action_refresh_now()

        def answer(yes: bool | None) -> None:
            if yes:
                self.run_worker(go(), group="work")

        self.app.push_screen(ConfirmScreen(f"Delete {what}?", yes="Delete"), answer)
