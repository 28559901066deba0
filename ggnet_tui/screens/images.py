"""Images: each image with its versions (and their notes) and the machines using them; import a
file as a background job (Jobs, 0) from a picker that shows disk images only, starts where the
last import was made (or at GGNET_IMPORT_DIR) and completes a typed path; activate; delete."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Button, DirectoryTree, Input, Label, Select, Static

from core.enums import ImageKind
from core.storage.untrusted import DISK_IMAGE_SUFFIXES

from ..commands import bindings
from ..widgets.table import Cells, Column
from .base import TableScreen
from .common import attempt, size, when
from .modals import ConfirmScreen

KINDS = tuple(k.value for k in ImageKind)
NEW_IMAGE = "(a new image)"


def is_disk_image(path: Path) -> bool:
    return path.suffix.lower() in DISK_IMAGE_SUFFIXES


def start_directory(app: Any) -> Path:
    """Where the picker opens: the last import's directory, else GGNET_IMPORT_DIR, else home."""
    for candidate in (app.prefs.import_dir, app.core.settings.import_dir):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return Path.home()


class FileTree(DirectoryTree):
    """The server's directories and disk image files only; on the Linux console with ASCII marks
    instead of emoji it cannot draw."""

    def on_mount(self) -> None:
        if self.app.has_class("-linux"):
            self.ICON_NODE, self.ICON_NODE_EXPANDED, self.ICON_FILE = "+ ", "- ", "  "

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        shown = []
        for path in paths:
            if path.name.startswith("."):
                continue
            try:
                if path.is_dir() or is_disk_image(path):
                    shown.append(path)
            except OSError:  # unreadable: not offered
                continue
        return shown


class PathSuggester(Suggester):
    """Completes a typed path (→ or End takes it): the first directory or disk image it starts."""

    def __init__(self) -> None:
        super().__init__(use_cache=False, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        return await asyncio.to_thread(complete_path, value)


def complete_path(value: str) -> str | None:
    if not value:
        return None
    typed = os.path.expanduser(value)
    directory, _, start = typed.rpartition("/")
    directory = directory or "/"
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return None
    for entry in entries:
        if entry.name.startswith(start) and entry.name != start and not entry.name.startswith("."):
            try:
                folder = entry.is_dir()
            except OSError:
                continue
            if folder or is_disk_image(Path(entry.name)):
                head = value[: len(value) - len(start)]
                return head + entry.name + ("/" if folder else "")
    return None


class ImportDialog(ModalScreen[dict[str, str] | None]):
    """Choose a file on the server (tree or typed path), then a new image's name and kind, or
    the image it is a new version of, and a note."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]
    AUTO_FOCUS = "#tree"

    def __init__(self, root: Path, images: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.root = root
        self.images = images

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label("Import an image file from this server (it runs as a job)", classes="dialog-title")
            yield FileTree(str(self.root), id="tree")
            with Horizontal(classes="field"):
                yield Label("File", classes="field-label")
                yield Input(
                    placeholder="/path/to/disk.vhdx (→ completes)", id="path", compact=True, suggester=PathSuggester()
                )
            with Horizontal(classes="field"):
                yield Label("Version of", classes="field-label")
                yield Select(
                    [(n, n) for n in (NEW_IMAGE, *self.images)],
                    value=NEW_IMAGE,
                    allow_blank=False,
                    id="version_of",
                    compact=True,
                )
            with Horizontal(classes="field"):
                yield Label("Name", classes="field-label")
                yield Input(placeholder="a new image's name, e.g. win11", id="name", compact=True)
            with Horizontal(classes="field"):
                yield Label("Kind", classes="field-label")
                yield Select([(k, k) for k in KINDS], value=KINDS[0], allow_blank=False, id="kind", compact=True)
            with Horizontal(classes="field"):
                yield Label("Note", classes="field-label")
                yield Input(placeholder="optional: what this version is", id="notes", compact=True)
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

    def on_input_changed(self, event: Input.Changed) -> None:
        # a typed directory (ending in /) opens in the tree
        if event.input.id == "path" and event.value.endswith("/"):
            folder = Path(os.path.expanduser(event.value))
            if folder.is_dir() and folder != Path(self.query_one(FileTree).path):
                self.query_one(FileTree).path = folder

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "version_of":
            new = event.value == NEW_IMAGE
            self.query_one("#name", Input).disabled = not new
            self.query_one("#kind", Select).disabled = not new

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._done()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "import":
            self._done()
        else:
            self.dismiss(None)

    def _done(self) -> None:
        path = os.path.expanduser(self.query_one("#path", Input).value.strip())
        if not path:
            error = self.query_one("#error", Static)
            error.update("file: choose a file in the tree or type its path")
            error.remove_class("hidden")
            return
        version_of = str(self.query_one("#version_of", Select).value)
        self.dismiss(
            {
                "path": path,
                "name": self.query_one("#name", Input).value.strip(),
                "kind": str(self.query_one("#kind", Select).value),
                "version_of": "" if version_of == NEW_IMAGE else version_of,
                "notes": self.query_one("#notes", Input).value.strip(),
            }
        )

    def action_cancel(self) -> None:
        self.dismiss(None)


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
        Column("notes", "Notes", 10, 5, max_width=60),
    ]

    async def fetch(self) -> Any:
        from core.services import images

        found = await images.list_images(self.core, self.actor)
        versions = {i.name: await images.list_versions(self.core, self.actor, i.name) for i in found}
        return found, versions

    def show(self, data: Any) -> None:
        found, versions = data
        self.entries: dict[str, tuple[str, int | None]] = {}
        self.sizes: dict[str, int] = {}
        rows = []
        for image in found:
            key = f"img:{image.name}"
            self.entries[key] = (image.name, None)
            self.sizes[key] = image.virtual_size if image.virtual_size is not None else -1
            rows.append(
                (
                    key,
                    {
                        "name": Text(image.name, style="bold"),
                        "active": f"v{image.active_version}" if image.active_version else "-",
                        "kind": image.kind,
                        "size": size(image.virtual_size),
                        "used": ", ".join(image.assigned_to) or "-",
                        "format": "",
                        "created": when(image.created_at),
                        "notes": image.description or "",
                    },
                )
            )
            for v in versions.get(image.name, []):
                vkey = f"ver:{image.name}:{v.number}"
                self.entries[vkey] = (image.name, v.number)
                self.sizes[vkey] = v.virtual_size
                users = sorted(set(v.pinned_by) | set(v.in_use_by))
                rows.append(
                    (
                        vkey,
                        {
                            "name": f"  v{v.number}",
                            "active": Text("active", style="green") if v.is_active else "",
                            "kind": "",
                            "size": size(v.virtual_size),
                            "used": ", ".join(users) or "-",
                            "format": v.source_format,
                            "created": when(v.created_at),
                            "notes": v.notes or "",
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

    def sort_value(self, key: str, column: str, cells: Cells) -> Any:
        if column == "size":
            return self.sizes.get(key, -1)
        return super().sort_value(key, column, cells)

    def sort_rows(self, rows: list[tuple[str, Cells]], column: str) -> list[tuple[str, Cells]]:
        """Images sorted among themselves, each followed by its versions sorted among themselves."""
        images = [(k, c) for k, c in rows if k.startswith("img:")]
        versions: dict[str, list[tuple[str, Cells]]] = {}
        for key, cells in rows:
            if key.startswith("ver:"):
                versions.setdefault(self.entries[key][0], []).append((key, cells))
        result = []
        for key, cells in super().sort_rows(images, column):
            result.append((key, cells))
            result += super().sort_rows(versions.get(self.entries[key][0], []), column)
        return result

    def action_import_image(self) -> None:
        from ..jobs import start_import

        def chosen(request: Any) -> None:
            if request:
                self.app.prefs.set_import_dir(str(Path(request["path"]).parent))  # type: ignore[attr-defined]
                job = start_import(self.app, request)
                self.notify(f"Job {job.id}: {job.title}. Follow it on Jobs (0).", timeout=5)

        images = tuple(sorted(name for name, number in getattr(self, "entries", {}).values() if number is None))
        self.app.push_screen(ImportDialog(start_directory(self.app), images), chosen)

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
