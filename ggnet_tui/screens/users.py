"""Users (admins): create, change role, disable, enable, reset password, delete."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from core.enums import Role
from core.services import users as user_service

from ..commands import bindings
from ..widgets.table import Column
from .base import TableScreen
from .common import attempt, when
from .modals import ConfirmScreen, Field, FormScreen

ROLES = tuple(r.value for r in reversed(Role))  # viewer, operator, admin


class UsersScreen(TableScreen):
    SCOPE = "users"
    TITLE = "Users"
    BINDINGS = bindings("table", "users")
    COLUMNS = [
        Column("username", "User", 20, 0),
        Column("role", "Role", 8, 0),
        Column("state", "State", 8, 0),
        Column("failed", "Failed", 6, 2),
        Column("last", "Last login", 11, 1),
        Column("created", "Created", 11, 3),
    ]

    async def fetch(self) -> Any:
        return await user_service.list_users(self.core, self.actor)

    def show(self, data: Any) -> None:
        self.users = {u.username: u for u in data}
        rows = []
        for u in data:
            state = "disabled" if u.disabled else ("locked" if u.locked_until else "active")
            rows.append(
                (
                    u.username,
                    {
                        "username": u.username,
                        "role": u.role,
                        "state": Text(state, style="red" if state != "active" else "green"),
                        "failed": str(u.failed_logins),
                        "last": when(u.last_login_at),
                        "created": when(u.created_at),
                    },
                )
            )
        self.set_rows(rows)

    def _current(self) -> Any:
        user = getattr(self, "users", {}).get(self.cursor_key or "")
        if user is None:
            self.notify("No user under the cursor.", severity="warning")
        return user

    def _form(self, title: str, fields: list[Field], call: Any, done_text: str) -> None:
        async def submit(values: dict[str, str]) -> Any:
            return await self.app.run_work(call(values))  # type: ignore[attr-defined]

        def done(result: Any) -> None:
            if result:
                self.notify(done_text, timeout=4)
                self.action_refresh_now()

        self.app.push_screen(FormScreen(title, fields, submit), done)

    def action_add(self) -> None:
        self._form(
            "Create an account",
            [
                Field("username", "User name"),
                Field("role", "Role", Role.OPERATOR.value, choices=ROLES),
                Field("password", "Password", password=True),
            ],
            lambda v: user_service.add_user(self.core, self.actor, v["username"], v["role"], v["password"]),
            "Account created.",
        )

    def action_role(self) -> None:
        user = self._current()
        if user:
            self._form(
                f"Role of {user.username}",
                [Field("role", "Role", user.role, choices=ROLES)],
                lambda v: user_service.set_role(
                    self.core, self.actor, user.username, v["role"], expected_version=user.row_version
                ),
                "Role changed.",
            )

    def action_password(self) -> None:
        user = self._current()
        if user:
            self._form(
                f"New password for {user.username}",
                [Field("password", "Password", password=True)],
                lambda v: user_service.set_password(self.core, self.actor, user.username, v["password"]),
                "Password set.",
            )

    def _simple(self, call: Any, done: str) -> None:
        async def go() -> None:
            if await attempt(self, call, done):
                self.action_refresh_now()

        self.run_worker(go(), group="work")

    def action_disable(self) -> None:
        user = self._current()
        if user is None:
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._simple(
                    user_service.disable_user(self.core, self.actor, user.username), f"{user.username} disabled."
                )

        self.app.push_screen(
            ConfirmScreen(
                f"Disable the account {user.username}? Its consoles return to the login screen within seconds.",
                yes="Disable",
            ),
            answer,
        )

    def action_enable(self) -> None:
        user = self._current()
        if user:
            self._simple(user_service.enable_user(self.core, self.actor, user.username), f"{user.username} enabled.")

    def action_delete(self) -> None:
        user = self._current()
        if user is None:
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._simple(
                    user_service.remove_user(self.core, self.actor, user.username), f"{user.username} deleted."
                )

        self.app.push_screen(ConfirmScreen(f"Delete the account {user.username}?", yes="Delete"), answer)
