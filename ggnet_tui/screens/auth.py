"""First run (create the first admin), login, and the idle lock."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Center, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Input, Label, Static

from core.errors import AccountLocked, GgnetError, Invalid

from ..commands import bindings
from ..widgets.header import StatusHeader

FORM_BINDINGS = [
    *[b for b in bindings("app") if b.id == "app.quit"],
    Binding("enter", "next_field", "Next field", show=False, priority=True),
]


class _Form:
    """Enter in a field before the last one moves on at once, as Tab does (a priority binding:
    acted on before the keys after it are handed to a widget); in the last field it submits."""

    FIELDS: tuple[str, ...] = ()

    def say(self, text: str, error: bool = True) -> None:
        message = self.query_one("#message", Static)  # type: ignore[attr-defined]
        message.update(text)
        message.set_class(error, "error")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "next_field":  # not handled here: the key goes on to the focused field
            focused = self.focused  # type: ignore[attr-defined]
            return focused is not None and focused.id in self.FIELDS[:-1]
        return True

    def action_next_field(self) -> None:
        focused = self.focused  # type: ignore[attr-defined]
        following = self.FIELDS[self.FIELDS.index(focused.id) + 1]
        self.set_focus(self.query_one(f"#{following}", Input))  # type: ignore[attr-defined]


class LoginScreen(_Form, Screen):
    FIELDS = ("username", "password")
    BINDINGS = FORM_BINDINGS

    def compose(self) -> ComposeResult:
        yield StatusHeader("Log in")
        with Center(), Vertical(classes="dialog login"):
            yield Label("Log in to ggnet", classes="dialog-title")
            yield Input(placeholder="user name", id="username", compact=True)
            yield Input(placeholder="password", password=True, id="password", compact=True)
            yield Static("", id="message")
            yield Button("Log in", id="login", variant="primary", compact=True)
        yield Footer()

    def on_screen_resume(self) -> None:
        # after a logout the user name stays: the password is what is typed next
        self.query_one("#password", Input).value = ""
        kept = bool(self.query_one("#username", Input).value)
        self.query_one("#password" if kept else "#username", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._go()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self._go()

    def _go(self) -> None:
        self.run_worker(self._login(), exclusive=True, group="login")

    async def _login(self) -> None:
        username = self.query_one("#username", Input).value
        password_box = self.query_one("#password", Input)
        self.say("checking ...", error=False)
        try:
            await self.app.log_in(username, password_box.value)  # type: ignore[attr-defined]
        except AccountLocked as exc:
            self.say(f"{exc.message}. Waiting does not count against you.")
        except GgnetError as exc:
            self.say(exc.message)
        except Exception as exc:
            self.say(self.app.incident(exc))  # type: ignore[attr-defined]
        else:
            self.say("", error=False)
            return
        password_box.value = ""
        password_box.focus()


class FirstRunScreen(_Form, Screen):
    FIELDS = ("username", "password", "again")
    BINDINGS = FORM_BINDINGS

    def compose(self) -> ComposeResult:
        yield StatusHeader("First run")
        with Center(), Vertical(classes="dialog login"):
            yield Label("Welcome to ggnet: create the first admin account", classes="dialog-title")
            yield Input(placeholder="admin user name", id="username", compact=True)
            yield Input(placeholder="password", password=True, id="password", compact=True)
            yield Input(placeholder="password again", password=True, id="again", compact=True)
            yield Static("", id="message")
            yield Button("Create admin", id="create", variant="primary", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#username", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.run_worker(self._create(), exclusive=True, group="login")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.run_worker(self._create(), exclusive=True, group="login")

    async def _create(self) -> None:
        username = self.query_one("#username", Input).value
        password = self.query_one("#password", Input).value
        if self.query_one("#again", Input).value != password:
            self.say("password: the two entries differ")
            return
        try:
            await self.app.first_run(username, password)  # type: ignore[attr-defined]
        except Invalid as exc:
            self.say("; ".join(f"{k}: {v}" for k, v in exc.errors.items()))
        except GgnetError as exc:
            self.say(exc.message)
        except Exception as exc:
            self.say(self.app.incident(exc))  # type: ignore[attr-defined]


class LockScreen(_Form, ModalScreen[None]):
    """Covers everything until the same user's password is given again (or they log out)."""

    BINDINGS = [Binding("ctrl+o", "logout", "Log out", id="lock.logout")]

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason  # locked by the user (ctrl+l) or after idle minutes

    def compose(self) -> ComposeResult:
        actor = self.app.actor  # type: ignore[attr-defined]
        with Center(), Vertical(classes="dialog login"):
            yield Label("Console locked", classes="dialog-title")
            yield Label(f"{self.reason} Password for {actor.username if actor else '?'}:")
            yield Input(placeholder="password", password=True, id="password", compact=True)
            yield Static("", id="message")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#password", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.run_worker(self._unlock(event.value), exclusive=True, group="login")

    async def _unlock(self, password: str) -> None:
        box = self.query_one("#password", Input)
        try:
            await self.app.unlock(password)  # type: ignore[attr-defined]
        except GgnetError as exc:
            self.say(exc.message)
            box.value = ""
        except Exception as exc:
            self.say(self.app.incident(exc))  # type: ignore[attr-defined]

    def action_logout(self) -> None:
        self.app.action_logout()
