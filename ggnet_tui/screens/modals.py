"""Dialogs: forms whose fields show core's validation messages, confirmations, help, CSV preview."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from core.errors import GgnetError, Invalid

from ..commands import commands_for, key_of


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    value: str = ""
    password: bool = False
    choices: tuple[str, ...] = ()
    placeholder: str = ""


class FormScreen(ModalScreen[Any]):
    """Collects values and hands them to ``submit`` (a core call). Invalid errors appear under
    their field; other refusals above the buttons; the dialog closes only on success."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="dialog.cancel"),
        Binding("ctrl+s", "save", "Save", id="dialog.save"),
    ]
    AUTO_FOCUS = "Input, Select"

    def __init__(
        self,
        title: str,
        fields: list[Field],
        submit: Callable[[dict[str, str]], Awaitable[Any]],
        submit_label: str = "Save",
    ) -> None:
        super().__init__()
        self.title_text = title
        self.fields = fields
        self.submit = submit
        self.submit_label = submit_label

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            for field in self.fields:
                with Horizontal(classes="field"):
                    yield Label(field.label, classes="field-label")
                    if field.choices:
                        yield Select(
                            [(c, c) for c in field.choices],
                            value=field.value or field.choices[0],
                            allow_blank=False,
                            id=f"f-{field.name}",
                            compact=True,
                        )
                    else:
                        yield Input(
                            field.value,
                            placeholder=field.placeholder,
                            password=field.password,
                            id=f"f-{field.name}",
                            compact=True,
                        )
                yield Static("", id=f"e-{field.name}", classes="field-error hidden")
            yield Static("", id="form-error", classes="field-error hidden")
            with Horizontal(classes="buttons"):
                yield Button(self.submit_label, id="save", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def values(self) -> dict[str, str]:
        result = {}
        for field in self.fields:
            widget = self.query_one(f"#f-{field.name}")
            result[field.name] = str(widget.value)  # type: ignore[attr-defined]
        return result

    def show_error(self, field: str | None, message: str | None) -> None:
        target = self.query_one(f"#e-{field}" if field else "#form-error", Static)
        target.update(message or "")
        target.set_class(not message, "hidden")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_save(self) -> None:
        self.run_worker(self._save(), group="form", exclusive=True)

    async def _save(self) -> None:
        names = {f.name for f in self.fields}
        for name in names:
            self.show_error(name, None)
        self.show_error(None, None)
        try:
            result = await self.submit(self.values())
        except Invalid as exc:
            other = []
            for field, rule in exc.errors.items():
                if field in names:
                    self.show_error(field, rule)
                else:
                    other.append(f"{field}: {rule}")
            self.show_error(None, "; ".join(other) or None)
            return
        except GgnetError as exc:
            from .common import explain

            self.show_error(None, explain(self.app, exc))
            return
        except Exception as exc:
            self.show_error(None, self.app.incident(exc))  # type: ignore[attr-defined]
            return
        self.dismiss(result if result is not None else True)


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no; with ``type_to_confirm`` the operator must type that word (e.g. the machine's name)."""

    BINDINGS = [Binding("escape", "no", "Cancel", id="dialog.cancel")]

    def __init__(self, question: str, yes: str = "Yes", type_to_confirm: str | None = None) -> None:
        super().__init__()
        self.question = question
        self.yes = yes
        self.word = type_to_confirm

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="dialog-title")
            if self.word:
                yield Label(f"Type {self.word} to confirm:")
                yield Input(id="word", compact=True)
            with Horizontal(classes="buttons"):
                yield Button(self.yes, id="yes", variant="error", compact=True, disabled=bool(self.word))
                yield Button("No", id="no", compact=True)

    def on_mount(self) -> None:
        self.query_one("#word" if self.word else "#no").focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#yes", Button).disabled = event.value.strip().lower() != (self.word or "").lower()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if not self.query_one("#yes", Button).disabled:
            self.dismiss(True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def key_y(self) -> None:
        if not self.word:
            self.dismiss(True)

    def key_n(self) -> None:
        if not self.word:
            self.dismiss(False)

    def action_no(self) -> None:
        self.dismiss(False)


class ColumnsScreen(ModalScreen[list[str] | None]):
    """Tick the columns a screen shows (space or Enter toggles, ctrl+s saves); the columns that
    name a row always stay. Columns still give way when the terminal is too narrow."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="dialog.cancel"),
        Binding("ctrl+s", "save", "Save", id="dialog.save"),
    ]
    AUTO_FOCUS = "SelectionList"

    def __init__(self, title: str, columns: list[Any], visible: list[str], kept: tuple[str, ...]) -> None:
        super().__init__()
        self.title_text = title
        self.columns = [c for c in columns if c.key not in kept and c.label.strip()]
        self.kept = kept
        self.ticked = set(visible)

    def compose(self) -> ComposeResult:
        from textual.widgets import SelectionList

        with Vertical(classes="dialog"):
            yield Label(f"Columns of {self.title_text}", classes="dialog-title")
            yield SelectionList[str](*[(c.label, c.key, c.key in self.ticked) for c in self.columns], id="columns")
            yield Static("Space ticks or clears a column; ctrl+s saves.", classes="dim")
            with Horizontal(classes="buttons"):
                yield Button("Save", id="save", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)

    def action_save(self) -> None:
        from textual.widgets import SelectionList

        chosen = set(self.query_one(SelectionList).selected)
        self.dismiss([*self.kept, *(c.key for c in self.columns if c.key in chosen)])

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close", id="dialog.close")]

    def __init__(self, scope: str, title: str) -> None:
        super().__init__()
        self.scope = scope
        self.title_text = title

    def compose(self) -> ComposeResult:
        keymap = self.app.core.settings.keys  # type: ignore[attr-defined]
        actor = self.app.actor  # type: ignore[attr-defined]
        lines = Text()
        scopes = [self.scope] + (["table"] if self.scope not in ("dashboard", "logs", "") else []) + ["app"]
        for command in [c for scope in scopes for c in commands_for(scope)]:  # this screen's keys first
            if command.permission is not None and not (actor and actor.can(command.permission)):
                continue
            lines.append(f"{key_of(command, keymap):>8}  ", style="bold")
            lines.append(f"{command.label:<10} {command.help}\n")
        with VerticalScroll(classes="dialog"):
            yield Label(f"Keys: {self.title_text}", classes="dialog-title")
            yield Static(lines)
            yield Static(Text('Esc closes. Remap keys in the config file: [keys] "machines.add" = "n"'), classes="dim")

    def action_close(self) -> None:
        self.dismiss(None)


class TextScreen(ModalScreen[None]):
    """Read-only text: an audit event's before/after, a machine's details, a report."""

    BINDINGS = [Binding("escape,enter,q", "close", "Close", id="dialog.close")]

    def __init__(self, title: str, body: str | Text) -> None:
        super().__init__()
        self.title_text = title
        self.body = body

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.body)

    def action_close(self) -> None:
        self.dismiss(None)


class CsvImportScreen(ModalScreen[list[str] | None]):
    """Check a CSV file with core (nothing written), show every bad row, import only a clean file."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]
    AUTO_FOCUS = "#path"

    def __init__(
        self, check: Callable[[str, str], Awaitable[Any]], do_import: Callable[[str, str], Awaitable[Any]]
    ) -> None:
        super().__init__()
        self.check = check
        self.do_import = do_import
        self.text: str | None = None
        self.source = ""

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label("Import machines from CSV (columns name,mac,ip,boot_mode)", classes="dialog-title")
            yield Input(placeholder="/path/to/machines.csv", id="path", compact=True)
            with VerticalScroll(id="preview"):
                yield Static("Enter a file and press Check: nothing is written until Import.", id="report")
            with Horizontal(classes="buttons"):
                yield Button("Check", id="check", compact=True)
                yield Button("Import", id="import", variant="primary", compact=True, disabled=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.run_worker(self._check(), exclusive=True, group="csv")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "check":
            self.run_worker(self._check(), exclusive=True, group="csv")
        elif event.button.id == "import":
            self.run_worker(self._import(), exclusive=True, group="csv")
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)

    async def _check(self) -> None:
        from core.services.machines import CsvRowError, read_csv_file

        report = self.query_one("#report", Static)
        button = self.query_one("#import", Button)
        button.disabled = True
        path = self.query_one("#path", Input).value.strip()
        try:
            self.source = Path(path).name or "CSV"
            self.text = await asyncio.to_thread(read_csv_file, Path(path))  # never on the UI thread
            rows = await self.check(self.text, self.source)
        except CsvRowError as exc:
            out = Text(f"{len(exc.rows)} bad row(s); fix the file, nothing was written:\n", style="bold red")
            for line, reason in exc.rows:
                out.append(f"  line {line}: {reason}\n")
            report.update(out)
            return
        except GgnetError as exc:
            report.update(Text(exc.message, style="red"))
            return
        except Exception as exc:
            report.update(self.app.incident(exc))  # type: ignore[attr-defined]
            return
        out = Text(f"{len(rows)} machine(s) ready to import:\n", style="bold green")
        for item in rows[:200]:
            out.append(f"  {item.name:<15} {item.mac}  {item.ip or '-':<15} {item.boot_mode.value}\n")
        report.update(out)
        button.disabled = not rows

    async def _import(self) -> None:
        report = self.query_one("#report", Static)
        try:
            names = await self.do_import(self.text or "", self.source)
        except GgnetError as exc:
            report.update(Text(exc.message, style="red"))
            self.query_one("#import", Button).disabled = True
            return
        except Exception as exc:
            report.update(self.app.incident(exc))  # type: ignore[attr-defined]
            return
        self.dismiss(names)
