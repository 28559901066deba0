"""The one table of commands. It feeds the key bindings of every screen, the footer,
the `?` help and the ctrl+p palette, so a key, a menu entry and a help line never disagree.

Each command's ``id`` is its Binding id: users remap keys in the config file with
``[keys]`` entries such as ``"machines.add" = "n"`` (Settings.keys, binding id -> key).
``permission`` only hides what the user may not do; core checks it again on every call.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding

from core.enums import Permission


@dataclass(frozen=True)
class Command:
    id: str
    key: str
    action: str
    label: str
    help: str
    permission: Permission | None = None  # only hides the command; core checks again
    show: bool = True  # in the footer

    @property
    def scope(self) -> str:
        return self.id.split(".", 1)[0]


_M, _I, _S = Permission.MANAGE_MACHINES, Permission.MANAGE_IMAGES, Permission.MANAGE_SESSIONS
_T, _U, _W = Permission.MANAGE_TARGETS, Permission.MANAGE_USERS, Permission.WAKE_MACHINES

COMMANDS: tuple[Command, ...] = (
    # the whole console
    Command("app.dashboard", "1", "app.go('dashboard')", "Dashboard", "Overview, health and alerts", show=False),
    Command("app.machines", "2", "app.go('machines')", "Machines", "Client PCs and their live status", show=False),
    Command("app.images", "3", "app.go('images')", "Images", "Disk images and their versions", show=False),
    Command("app.sessions", "4", "app.go('sessions')", "Boots", "Current boots and the boot history", show=False),
    Command("app.targets", "5", "app.go('targets')", "Targets", "What the iSCSI target stack holds", show=False),
    Command("app.users", "6", "app.go('users')", "Users", "Operator accounts (admins)", _U, show=False),
    Command("app.audit", "7", "app.go('audit')", "Audit", "Who changed what, and when", show=False),
    Command("app.logs", "8", "app.go('logs')", "Logs", "ggnet's own log file", show=False),
    Command(
        "app.discovered", "9", "app.go('discovered')", "Discovered", "PCs that asked to boot, to adopt", show=False
    ),
    Command("app.jobs", "0", "app.go('jobs')", "Jobs", "Image imports running in the background", show=False),
    Command("app.help", "question_mark", "app.help", "Help", "Keys of this screen"),
    Command("app.palette", "ctrl+p", "app.command_palette", "Commands", "Search every command", show=False),
    Command("app.lock", "ctrl+l", "app.lock", "Lock", "Lock the console until the password is given again", show=False),
    Command("app.logout", "ctrl+o", "app.logout", "Log out", "End this login", show=False),
    Command("app.quit", "q,ctrl+q", "app.request_quit", "Quit", "Leave the console (asks while work runs)"),
    # every table screen (s is Prepare on Machines: sorting is o, "order")
    Command("table.filter", "slash", "screen.filter", "Filter", "Show only rows containing some text"),
    Command("table.refresh", "r", "screen.refresh_now", "Refresh", "Fetch now instead of waiting", show=False),
    Command("table.sort", "o", "screen.sort_next", "Sort", "Sort by the next column (or click a header)", show=False),
    Command("table.reverse", "O", "screen.sort_reverse", "Reverse", "Reverse the sort order", show=False),
    Command("table.columns", "C", "screen.choose_columns", "Columns", "Choose the columns shown", show=False),
    # dashboard
    Command(
        "dashboard.ack", "k", "screen.acknowledge", "Acknowledge", "Hide the alert under the cursor until it changes"
    ),
    # machines
    Command("machines.add", "a", "screen.add", "Add", "Register a machine", _M),
    Command("machines.edit", "e", "screen.edit", "Edit", "Edit the machine under the cursor", _M),
    Command(
        "machines.details",
        "enter",
        "screen.details",
        "Details",
        "Boot history, disk and I/O of the machine",
        show=False,
    ),
    # not in the footer: at 80 columns it would push ? and q out (? and ctrl+p list it)
    Command(
        "machines.delete",
        "ctrl+d",
        "screen.delete",
        "Delete",
        "Delete the marked machines (asks first)",
        _M,
        show=False,
    ),
    Command("machines.mark", "space", "screen.mark", "Mark", "Mark or unmark the row for a bulk action"),
    Command(
        "machines.mark_all", "ctrl+a", "screen.mark_all", "Mark all", "Mark every shown row, or clear marks", show=False
    ),
    Command("machines.start", "s", "screen.start", "Prepare", "Prepare the marked machines' boots now", _S),
    Command("machines.stop", "x", "screen.stop", "Offline", "Take the marked machines offline now", _S),
    Command("machines.wake", "w", "screen.wake", "Wake", "Send wake-on-LAN to the marked machines", _W),
    Command("machines.assign", "i", "screen.assign", "Image", "Assign an image to the marked machines", _M),
    Command("machines.import", "c", "screen.import_csv", "CSV", "Import machines from a CSV file", _M),
    # one machine's details
    Command("details.start", "s", "screen.start", "Prepare", "Prepare this machine's boot now", _S),
    Command("details.stop", "x", "screen.stop", "Offline", "Take this machine offline now", _S),
    Command("details.edit", "e", "screen.edit", "Edit", "Edit this machine", _M),
    Command("details.maintenance", "m", "screen.maintenance", "Maint.", "Start maintenance on this machine", _S),
    Command("details.apply", "A", "screen.apply", "Apply", "Apply the maintenance writeback as a new version", _I),
    Command("details.discard", "D", "screen.discard", "Discard", "Discard the maintenance writeback", _S),
    Command(  # not in the footer: at 80 columns it would push ? and q out
        "details.reset",
        "W",
        "screen.reset",
        "Reset disk",
        "Drop the kept writeback: next boot starts clean",
        _S,
        show=False,
    ),
    Command("details.boot", "enter", "screen.boot", "Boot", "Everything about the boot under the cursor", show=False),
    Command("details.back", "escape", "screen.back", "Back", "Back to the machines"),
    # discovered PCs
    Command(
        "discovered.adopt", "a", "screen.adopt", "Adopt", "Register the marked PCs (or the one under the cursor)", _M
    ),
    Command("discovered.mark", "space", "screen.mark", "Mark", "Mark or unmark the row for a bulk action"),
    Command(
        "discovered.mark_all",
        "ctrl+a",
        "screen.mark_all",
        "Mark all",
        "Mark every shown row, or clear marks",
        show=False,
    ),
    Command("discovered.forget", "ctrl+d", "screen.forget", "Forget", "Forget the marked PCs (asks first)", _M),
    # background jobs
    Command("jobs.cancel", "x", "screen.cancel", "Cancel", "Cancel the job under the cursor (nothing is left behind)"),
    Command("jobs.show", "enter", "screen.show_job", "Result", "The job's result in full", show=False),
    # images
    Command("images.import", "a", "screen.import_image", "Import", "Import an image file as a background job", _I),
    Command("images.activate", "v", "screen.activate", "Activate", "Make the version under the cursor active", _I),
    Command("images.delete", "ctrl+d", "screen.delete", "Delete", "Delete the image or version (asks first)", _I),
    # sessions
    Command("sessions.stop", "x", "screen.stop", "Offline", "Take the machine under the cursor offline", _S),
    Command("sessions.show_ended", "h", "screen.toggle_ended", "History", "Show the boot history, or current boots"),
    # targets
    Command("targets.reconcile", "R", "screen.reconcile", "Reconcile", "Make the target stack match the database", _T),
    # users
    Command("users.add", "a", "screen.add", "Add", "Create an account", _U),
    Command("users.role", "e", "screen.role", "Role", "Change the role", _U),
    Command("users.disable", "d", "screen.disable", "Disable", "Disable the account (asks; logs it out)", _U),
    Command("users.enable", "n", "screen.enable", "Enable", "Enable the account and lift a login lock", _U),
    Command("users.password", "p", "screen.password", "Password", "Set a new password", _U),
    Command("users.delete", "ctrl+d", "screen.delete", "Delete", "Delete the account (asks first)", _U),
    # audit
    Command("audit.query", "f", "screen.query", "Query", "Filter by actor, action, object and time"),
    Command("audit.next", "right_square_bracket", "screen.page(1)", "Older", "Next page (older events)"),
    Command("audit.previous", "left_square_bracket", "screen.page(-1)", "Newer", "Previous page (newer events)"),
    # logs
    Command("logs.follow", "f", "screen.follow", "Follow", "Keep scrolling to the newest line"),
)

BY_ID = {c.id: c for c in COMMANDS}
BY_ACTION: dict[tuple[str, str], Command] = {}
for _c in COMMANDS:
    _ns, _, _name = _c.action.partition(".")
    BY_ACTION.setdefault((_c.scope, _name.split("(")[0]), _c)


def commands_for(*scopes: str) -> list[Command]:
    return [c for c in COMMANDS if c.scope in scopes]


def bindings(*scopes: str) -> list[Binding]:
    """Bindings for ``scopes``; an action ``screen.x`` binds to the screen itself as ``x``."""
    result = []
    for c in commands_for(*scopes):
        action = c.action.removeprefix("screen.")
        display = {
            "question_mark": "?",
            "slash": "/",
            "space": "spc",  # three letters: at 80 columns the footer has no room to spare
            "right_square_bracket": "]",
            "left_square_bracket": "[",
        }.get(c.key.split(",")[0])
        if display is None and "," in c.key:
            display = c.key.split(",")[0]
        result.append(Binding(c.key, action, c.label, show=c.show, id=c.id, key_display=display))
    return result


def key_of(command: Command, keymap: dict[str, str]) -> str:
    key = keymap.get(command.id, command.key).split(",")[0]
    return {"question_mark": "?", "slash": "/", "right_square_bracket": "]", "left_square_bracket": "["}.get(key, key)
