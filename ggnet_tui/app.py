"""The operator console: a Textual app over core's services.

Screens are App modes (1-9, 0) created after login; the console holds no business rules: every
action is a core service call made as the logged-in Actor. Long work (an image import) runs as a
job (ggnet_tui.jobs); what the console remembers between runs is in ggnet_tui.prefs.

Start-up paints the login screen first and only then loads settings, SQLAlchemy and the
database (about half a second), so the operator can start typing at once; heavy modules are
imported where they are first needed.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from importlib import import_module
from time import monotonic
from typing import TYPE_CHECKING, Any

from textual import events
from textual.binding import Binding
from textual.command import CommandPalette, DiscoveryHit, Hit, Hits, Provider, SearchIcon
from textual.scrollbar import ScrollBar, ScrollBarRender

from core.enums import Permission
from core.errors import AuthenticationFailed, GgnetError

from .commands import Command, bindings, commands_for
from .jobs import Jobs
from .prefs import Prefs
from .screens.auth import FirstRunScreen, LockScreen, LoginScreen
from .screens.base import GgnetScreen, TableScreen
from .screens.modals import ConfirmScreen, HelpScreen
from .textual_compat import IncidentOnCrash
from .widgets.header import StatusHeader

if TYPE_CHECKING:
    from core.context import Core
    from core.monitor import PcProbe

HEALTH_EVERY_SECONDS = 15
SITE_CHECK_EVERY_SECONDS = 60  # the doctor's checks: a qemu-img run and a reflink probe each time
ACCOUNT_CHECK_SECONDS = 2  # a disabled user's console is logged out well within 5 s
EXIT_GRACE_SECONDS = 3  # a console told to leave is gone within this, whatever it was doing
LOGGED_OUT = "Logged out."
ACCOUNT_CHANGED = "Your account was disabled, deleted or its password changed by an admin: log in again."


SCREENS = {  # mode -> (module, class); imported when first shown
    "dashboard": ("dashboard", "DashboardScreen"),
    "machines": ("machines", "MachinesScreen"),
    "images": ("images", "ImagesScreen"),
    "sessions": ("sessions", "SessionsScreen"),
    "targets": ("targets", "TargetsScreen"),
    "users": ("users", "UsersScreen"),
    "audit": ("audit", "AuditScreen"),
    "logs": ("logs", "LogsScreen"),
    "discovered": ("discovered", "DiscoveredScreen"),
    "jobs": ("jobs", "JobsScreen"),
}
SCREEN_TITLES = {  # scope -> title, for the palette's "Machines: Add"
    "dashboard": "Dashboard",
    "machines": "Machines",
    "images": "Images",
    "sessions": "Boots",
    "targets": "Targets",
    "users": "Users",
    "audit": "Audit",
    "logs": "Logs",
    "discovered": "Discovered",
    "jobs": "Jobs",
    "details": "Machine",
}


def _make_screen(mode: str) -> Any:
    module, name = SCREENS[mode]
    return getattr(import_module(f"ggnet_tui.screens.{module}"), name)()


def get_logger() -> Any:
    from core.log import get_logger as core_logger

    return core_logger()


def _preload() -> None:
    for module in ("core.monitor", "core.services.users", "core.db"):
        import_module(module)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _AsciiScrollBar(ScrollBarRender):
    # the Linux console's font has no eighth-blocks: draw the thumb with full blocks only
    VERTICAL_BARS = [" "] * 8
    HORIZONTAL_BARS = [" "] * 8


class GgnetPalette(CommandPalette):
    """ctrl+p; on the Linux console without the magnifier emoji its font cannot draw."""

    def on_mount(self) -> None:
        if self.app.has_class("-linux"):
            self.query_one(SearchIcon).icon = ">"


class CommandTable(Provider):
    """ctrl+p: every command of every screen, from the same table as the keys. A command of
    another screen switches to that screen first; the table commands (filter, sort, columns) and
    those of a machine's details act on the screen shown."""

    def _commands(self) -> Iterable[tuple[Command, str | None]]:
        """Each command the user may run, with the mode to switch to first (None: here)."""
        app = self.app
        screen = self.screen
        here = getattr(screen, "SCOPE", "")
        actor = getattr(app, "actor", None)
        if actor is None:
            return
        scopes = ["app", *SCREENS, "table", "details"]
        for command in commands_for(*scopes):
            if command.id == "app.palette":
                continue
            if command.permission is not None and not actor.can(command.permission):
                continue
            if command.scope == "table" and not isinstance(screen, TableScreen):
                continue
            if command.scope == "details" and here != "details":
                continue
            mode = command.scope if command.scope in SCREENS and command.scope != here else None
            yield command, mode

    def _runner(self, command: Command, mode: str | None) -> Callable[[], Any]:
        app = self.app

        async def run() -> None:
            if mode is not None:
                await app.action_go(mode)  # type: ignore[attr-defined]
                if getattr(app.screen, "SCOPE", "") != mode:  # not allowed there
                    return
            await app.run_action(command.action)

        return partial(app.call_later, run)

    @staticmethod
    def _label(command: Command) -> str:
        title = SCREEN_TITLES.get(command.scope)
        return f"{title}: {command.label}" if title else command.label

    async def discover(self) -> Hits:
        for command, mode in self._commands():
            yield DiscoveryHit(self._label(command), self._runner(command, mode), help=command.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for command, mode in self._commands():
            label = self._label(command)
            score = matcher.match(f"{label} {command.help}")
            if score > 0:
                yield Hit(score, matcher.highlight(label), self._runner(command, mode), help=command.help)


class GgnetApp(IncidentOnCrash):
    CSS_PATH = "ggnet.tcss"
    TITLE = "ggnet"
    # Tab moves focus before the keys after it are handed out: typed in one burst (a paste, a
    # password manager, tmux send-keys), "user<Tab>pw" would otherwise put "pw" in the user field,
    # since keys go to the widget focused when they arrive and a plain Tab binding acts later
    BINDINGS = [
        *bindings("app"),
        Binding("tab", "app.focus_next", "Next field", show=False, priority=True),
        Binding("shift+tab", "app.focus_previous", "Previous field", show=False, priority=True),
    ]
    COMMANDS = {CommandTable}
    MODES = {"login": LoginScreen, "first_run": FirstRunScreen}

    def __init__(
        self,
        core: Core | None = None,
        *,
        open_core: Callable[[], Core] | None = None,
        probe: PcProbe | None = None,
        hostname: str | None = None,
        clock: Callable[[], datetime] = _utcnow,
        term: str | None = None,
    ) -> None:
        """``core``, or ``open_core`` to build it after the first paint (settings, database)."""
        super().__init__()
        self.core: Any = core
        self._open_core = open_core
        self._probe = probe
        self.monitor: Any = None
        self.opened = asyncio.Event()
        self.clock = clock
        self.hostname = hostname or socket.gethostname()
        self.db_kind = "..."
        self.backend_text = "not checked yet"
        self.backend_ok: bool | None = None
        self.backend_detail = ""
        self.disk_usage = shutil.disk_usage  # replaced in snapshot tests: free space differs per machine
        self.actor: Any = None
        self.locked = False
        self.busy = 0
        self.refresh_seconds = 2.0
        self.close_core_on_exit = False
        self.exit_grace: float | None = None  # set for a real terminal: see run_console
        self._last_input = monotonic()
        self._session_timers: list[Any] = []
        self.embed_engine = False  # run_console: run the engine here while no ggnet serve does
        self.embedded: Any = None
        self.engine_text = "not checked yet"
        self._linux_console = (term if term is not None else os.environ.get("TERM", "")) == "linux"
        self.prefs = Prefs()
        self.jobs = Jobs()
        self.site_checks: list[Any] = []  # the doctor's findings (core.doctor.Check), refreshed each minute
        self.check_site: Callable[[], Any] = self._site_checks  # replaced in snapshot tests: hosts differ
        self.acknowledged: set[str] = set()  # dashboard alerts the operator has seen (until they change)
        for mode in SCREENS:
            self.add_mode(mode, partial(_make_screen, mode))

    # --- start and stop -----------------------------------------------------

    async def on_mount(self) -> None:
        if self._linux_console:  # 16 colours, no glyphs the Linux console cannot draw
            self.theme = "ansi-dark"
            self.add_class("-linux")
            ScrollBar.renderer = _AsciiScrollBar
        if self.exit_grace is not None:
            _leave_on_signal(self)
        await self.switch_mode("login")
        # paint first, then load settings and the database behind the visible login screen
        self.call_after_refresh(lambda: self.run_worker(self._open(), group="open"))

    async def _open(self) -> None:
        try:
            # settings, SQLAlchemy and the services load in a thread: the login screen is
            # already drawn and keeps answering keys meanwhile
            if self.core is None:
                self.core = await asyncio.to_thread(self._open_core)  # type: ignore[arg-type]
            await asyncio.to_thread(_preload)
            from core.monitor import Monitor
            from core.services import users

            settings = self.core.settings
            self.db_kind = self.core.db.kind
            self.refresh_seconds = max(0.2, float(settings.refresh_seconds))
            self.set_keymap(dict(settings.keys))
            self.monitor = Monitor(self.core, self._probe, self.clock)
            await self.core.db.upgrade()
            anyone = await users.count_users(self.core)
            self._start_embedded_engine()
        except GgnetError as exc:
            self.exit(None, 1, message=f"error: {exc.message}")
            return
        self.refresh_header()
        if not anyone:
            await self.switch_mode("first_run")
        self.opened.set()
        settle_heap()

    def _start_embedded_engine(self) -> None:
        from .embedded import EmbeddedEngine

        if self.embed_engine and self.embedded is None and EmbeddedEngine.wanted(self.core.settings):
            self.embedded = EmbeddedEngine(self.core.settings)
            self.embedded.start()

    async def on_unmount(self) -> None:
        if self.exit_grace is not None:  # from here on, nothing may keep the process alive for long
            arm_exit_watchdog(self.exit_grace, self.return_code or 0)
        if self.embedded is not None:  # bounded: the console never hangs on its engine at exit
            await asyncio.to_thread(self.embedded.stop, 2.0)
        if self.close_core_on_exit and self.core is not None:
            try:  # never hang the exit on a database that stopped answering
                await asyncio.wait_for(self.core.close(), timeout=5)
            except Exception as exc:
                get_logger().warning("database not closed cleanly at exit", reason=str(exc) or type(exc).__name__)

    def report_crash(self, error: BaseException) -> str:
        # a bug: log it with an id and show that id, never a traceback (Textual's shows locals)
        return self._log_incident(error)

    @staticmethod
    def _log_incident(exc: BaseException) -> str:
        incident = uuid.uuid4().hex[:8]
        try:
            get_logger().error("unexpected error in the console", incident=incident, exc_info=exc)
        except Exception:
            pass
        return incident

    def incident(self, exc: BaseException) -> str:
        """Log an unexpected exception; the sentence the operator sees instead of a traceback."""
        return f"Unexpected {type(exc).__name__} (incident {self._log_incident(exc)}); details are in the ggnet log"

    # --- login, logout, lock --------------------------------------------------

    async def first_run(self, username: str, password: str) -> None:
        from core.services import users

        await self.opened.wait()
        await users.create_first_admin(self.core, username, password)
        await self.log_in(username, password)

    async def log_in(self, username: str, password: str) -> None:
        from core.services import users

        await self.opened.wait()
        self.actor = await users.login(self.core, username, password)
        self.locked = False
        self._last_input = monotonic()
        self._session_timers = [
            self.set_interval(ACCOUNT_CHECK_SECONDS, self._check_account),
            self.set_interval(1, self._check_idle),
            self.set_interval(HEALTH_EVERY_SECONDS, self._check_health),
            self.set_interval(SITE_CHECK_EVERY_SECONDS, self._refresh_site_checks),
        ]
        self.run_worker(self._check_health(), group="health")
        self.run_worker(self._refresh_site_checks(), group="site")
        self.run_worker(self._monitor_loop(), group="monitor", exclusive=True)
        await self.switch_mode("dashboard")
        settle_heap()
        self.notify(f"Logged in as {self.actor.username} ({self.actor.role.value}). Press ? for keys.", timeout=3)

    async def log_out(self, reason: str) -> None:
        """Back to the login screen with ``reason`` shown there; the logout is audited first.
        Runs as its own task (see ``end_session``): it stops the session's timers, and a timer
        that stops itself is cancelled at its next await, half-way through."""
        from core.services import users

        actor, self.actor = self.actor, None
        self.jobs.cancel_all()  # the next user did not start them; core removes what they made
        self.acknowledged.clear()
        for timer in self._session_timers:
            timer.stop()
        self._session_timers = []
        self.workers.cancel_group(self, "monitor")
        self.locked = False
        if actor is not None:
            try:
                await asyncio.wait_for(users.logout(self.core, actor), timeout=10)
            except Exception as exc:  # the database is away: the console still logs out
                self._log_incident(exc)
        await self.switch_mode("login")
        for mode in SCREENS:  # fresh screens for whoever logs in next
            await self.remove_mode(mode)
            self.add_mode(mode, partial(_make_screen, mode))
        from .screens.details import forget_details

        await forget_details(self)
        login = self.screen
        if isinstance(login, LoginScreen):
            login.say(reason, error=actor is not None and reason != LOGGED_OUT)
        self.notify(reason, severity="warning", timeout=8)

    def end_session(self, reason: str) -> None:
        """Log out from a timer or a dialog: in a task of its own."""
        self.run_worker(self.log_out(reason), group="logout")

    async def _check_account(self) -> None:
        from core.services import users

        actor = self.actor
        if actor is None:
            return
        try:
            current = await users.still_valid(self.core, actor)
        except Exception as exc:  # the database is away: keep the console, say so once in the log
            get_logger().warning("account check failed", reason=str(exc))
            return
        if self.actor is not actor:
            return
        if current is None:
            self.end_session(ACCOUNT_CHANGED)
        elif current.role != actor.role:
            self.actor = current
            self.notify(f"Your role is now {current.role.value}.", timeout=5)
            self.refresh_bindings()
            self.refresh_header()

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, (events.Key, events.MouseDown, events.MouseScrollDown, events.MouseScrollUp)):
            self._last_input = monotonic()
        await super().on_event(event)

    def _check_idle(self) -> None:
        limit = float(self.core.settings.idle_lock_minutes) * 60
        if self.actor is not None and not self.locked and limit > 0 and monotonic() - self._last_input >= limit:
            minutes = float(self.core.settings.idle_lock_minutes)
            self.lock(f"Locked after {minutes:g} minute{'s' if minutes != 1 else ''} without input.")

    def action_lock(self) -> None:
        if self.actor is not None:
            self.lock(f"Locked by {self.actor.username}.")

    def lock(self, reason: str) -> None:
        if self.actor is None or self.locked:
            return
        self.locked = True
        self.push_screen(LockScreen(reason))

    async def unlock(self, password: str) -> None:
        from core.services import users

        actor = await users.login(self.core, self.actor.username, password)
        if actor.user_id != self.actor.user_id:
            raise AuthenticationFailed("that is another account")
        self.actor = actor
        self.locked = False
        self._last_input = monotonic()
        if isinstance(self.screen, LockScreen):
            self.pop_screen()

    def action_logout(self) -> None:
        if self.actor is None:
            return
        running = len(self.jobs.running)
        if not running:
            self.end_session(LOGGED_OUT)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.end_session(LOGGED_OUT)

        self.push_screen(
            ConfirmScreen(f"{running} job(s) still running: logging out cancels them. Log out?", yes="Log out"), answer
        )

    # --- background work ------------------------------------------------------

    async def _monitor_loop(self) -> None:
        """Liveness probes, one round at a time; screens read ``monitor.statuses``, never wait."""
        while self.actor is not None:
            try:
                await self.monitor.poll(self.actor)
            except Exception as exc:
                get_logger().warning("liveness poll failed", reason=str(exc))
            await asyncio.sleep(self.refresh_seconds)

    async def _check_health(self) -> None:
        """The engine's own record of the target stack (the console never walks the stack itself)."""
        from core.services import boots

        if self.actor is None:
            return
        try:
            engine = await boots.engine_status(self.core, self.actor)
        except (GgnetError, OSError) as exc:
            self.backend_ok, self.backend_text, self.backend_detail = False, "unknown", str(exc)
            self.refresh_header()
            return
        if not engine.running:
            self.engine_text = "engine not running"
            self.backend_ok, self.backend_text = False, "no engine"
            self.backend_detail = (
                "no ggnet serve runs for this server (start it: systemctl start ggnet), so PCs cannot boot"
            )
        else:
            self.engine_text = f"engine: {engine.mode or '?'} (pid {engine.pid or '?'})"
            self.backend_ok = engine.backend is not None
            self.backend_text = f"{engine.backend} ok" if engine.backend else "unavailable"
            self.backend_detail = engine.backend_detail or engine.last_error or ""
        self.refresh_header()

    async def _site_checks(self) -> list[Any]:
        """What ``ggnet doctor`` would say about this site, less what only the engine may probe."""
        from core import doctor
        from core.services import boots, machines

        actor = self.actor
        modes = await machines.boot_modes_in_use(self.core, actor)
        engine = await boots.engine_status(self.core, actor)
        return await doctor.console_checks(
            self.core.settings, modes, engine.running, engine.backend, engine.backend_detail or engine.last_error
        )

    async def _refresh_site_checks(self) -> None:
        if self.actor is None:
            return
        try:
            self.site_checks = list(await self.check_site())
        except Exception as exc:  # the dashboard says the checks could not run, not a traceback
            from core.doctor import Check

            reason = getattr(exc, "message", None) or self.incident(exc)
            self.site_checks = [Check("checks", "warn", f"the site checks could not run: {reason}")]

    def refresh_header(self) -> None:
        for header in self.screen.query(StatusHeader):
            header.refresh()

    async def run_work(self, coro: Any) -> Any:
        """Run a service call that changes things; quitting asks first while any is running."""
        self.busy += 1
        try:
            return await coro
        finally:
            self.busy -= 1

    # --- navigation and app-wide actions ------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("go", "help", "lock", "logout", "command_palette"):
            if self.actor is None or self.locked:
                return False
            if action == "go" and parameters and parameters[0] == "users":
                return self.actor.can(Permission.MANAGE_USERS)
        return True

    async def action_go(self, mode: str) -> None:
        if self.actor is None or self.locked:
            return
        if mode == "users" and not self.actor.can(Permission.MANAGE_USERS):
            self.notify("Users is for admins.", severity="warning")
            return
        await self.switch_mode(mode)

    def action_command_palette(self) -> None:
        if self.use_command_palette and not GgnetPalette.is_open(self):
            self.push_screen(GgnetPalette(id="--command-palette"))

    def action_help(self) -> None:
        screen = self.screen
        if isinstance(screen, GgnetScreen):
            self.push_screen(HelpScreen(screen.SCOPE, screen.TITLE))

    async def action_quit(self) -> None:
        # Textual's own priority ctrl+q lands here: it asks too while work runs
        await self.action_request_quit()

    async def action_request_quit(self) -> None:
        if self.busy:

            def answer(yes: bool | None) -> None:
                if yes:
                    self.exit(0)

            jobs = len(self.jobs.running)
            question = (
                f"{jobs} job(s) still running (Jobs, 0): quitting cancels them. Quit anyway?"
                if jobs
                else f"{self.busy} change(s) still running. Quit anyway?"
            )
            self.push_screen(ConfirmScreen(question, yes="Quit"), answer)
            return
        self.exit(0)


def settle_heap() -> None:
    """Move what the console has built so far (modules, Textual's widgets and styles, SQLAlchemy's
    mappers: hundreds of thousands of objects that live as long as the process) out of the
    garbage collector's reach. Without it each full collection walks them all, a pause of
    100-300 ms that lands in whatever runs then (measured: one in every opened details view
    with its 1,000 boots). Called once the database is open and once after login."""
    gc.collect()
    gc.freeze()


def arm_exit_watchdog(seconds: float, code: int) -> None:
    """End the process after ``seconds`` whatever it is waiting for: a write to a terminal that
    is gone, a database that stopped answering, a thread hashing an image that was being imported."""

    def expire() -> None:
        try:
            get_logger().warning("console exit stalled; leaving without waiting", after_seconds=seconds)
        finally:
            os._exit(code)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def _leave_on_signal(app: GgnetApp) -> None:
    """SIGHUP (the terminal went away: SSH dropped, tmux killed) and SIGTERM end the console.
    Plain ``signal.signal`` handlers run even while the event loop is stuck (a blocked write to a
    dead terminal), where an asyncio handler would never be called; the watchdog then ends it."""
    loop = asyncio.get_running_loop()

    def leave(signum: int, _frame: Any) -> None:
        code = 128 + signum
        arm_exit_watchdog(EXIT_GRACE_SECONDS, code)
        loop.call_soon_threadsafe(partial(app.exit, None, code))

    for signum in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, leave)


def run_console(state: Any) -> int:
    """``ggnet`` without a subcommand."""
    app = GgnetApp(open_core=lambda: state.core)  # settings errors are shown by _open
    app.close_core_on_exit = True
    app.embed_engine = True
    app.exit_grace = EXIT_GRACE_SECONDS
    app.run()
    code = app.return_code or 0
    # A read cut off by the exit can leave an aiosqlite worker thread (not a daemon) behind,
    # which would keep the process alive after its screen is gone: nothing is left to do here.
    leftover = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if leftover:
        get_logger().info("leaving with database threads still open", threads=len(leftover))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
