"""Small helpers shared by the screens: status colours, times, sizes, service calls with plain-word
errors, core's fixes said as this console's keys, and the one summary of a bulk action."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.text import Text

from core.enums import BootState, MachineStatus, Outcome
from core.errors import Fix, GgnetError

from ..commands import BY_ID, key_of

STATUS_STYLE = {
    # what the liveness monitor and the Machines screen say (core.monitor, machine_state)
    "offline": "red",
    "online": "yellow",
    "disabled": "dim",
    "active": "green",
    MachineStatus.BOOTING.value: "cyan",
    MachineStatus.BOOTED.value: "bold green",
    MachineStatus.FAILED.value: "red",
    Outcome.OK.value: "green",
    Outcome.DENIED.value: "bold red",
    BootState.READY.value: "green",
    BootState.REQUESTED.value: "cyan",
    BootState.PREPARING.value: "cyan",
    BootState.ENDING.value: "yellow",
    BootState.ENDED.value: "",
    BootState.REFUSED.value: "red",
    "running": "cyan",  # jobs
    "done": "green",
    "cancelled": "yellow",
    "cancelling": "yellow",
}


def status(text: str | None) -> Text:
    value = text or "-"
    return Text(value, style=STATUS_STYLE.get(value, ""))


_TWO_DIGITS = [f"{n:02d}" for n in range(100)]


def when(value: datetime | None) -> str:
    if value is None:
        return "-"
    value = value.astimezone(UTC)
    d = _TWO_DIGITS  # looked up rather than formatted: a tenth of strftime's cost (2,000 in a long history)
    return f"{d[value.month]}-{d[value.day]} {d[value.hour]}:{d[value.minute]}"


def full_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def size(n: int | None) -> str:
    """Bytes for people: 512 B, 1.5 KiB, 20.0 GiB."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def rate(per_second: float | None) -> str:
    return "-" if per_second is None else f"{size(round(per_second))}/s"


# --- core's fixes in this console's words --------------------------------------------------

# a core Fix -> the command that does it here, and where it is
_FIX_COMMANDS = {
    "session.stop": ("machines.stop", "on Machines (2)"),
    "machine.enable": ("machines.edit", "on Machines (2): May boot yes"),
    "machine.assign": ("machines.assign", "on Machines (2)"),
    "machine.unpin": ("machines.edit", "on Machines (2): empty the Version"),
    "maintenance.start": ("details.maintenance", "in the machine's details (Enter on Machines)"),
    "maintenance.finish": ("details.apply", "to apply, or {details.discard} to discard, in the machine's details"),
    "maintenance.discard": ("details.discard", "in the machine's details (Enter on Machines)"),
    "image.activate": ("images.activate", "on version {version} (Images, 3)"),
    "image.delete": ("images.delete", "on the image (Images, 3)"),
}


def fix_words(app: Any, fix: Fix | None) -> str:
    """What to do about a refusal, naming this console's (remappable) keys."""
    if fix is None:
        return ""
    if fix.action == "force":
        return "confirm it when the console asks, knowing it cuts the client off"
    if fix.action == "image.new_version":
        return f"choose {fix.image} as 'Version of' in the import dialog"
    core = getattr(app, "core", None)
    keymap = dict(core.settings.keys) if core is not None else {}
    command_id, where = _FIX_COMMANDS[fix.action]
    where = where.replace("{details.discard}", key_of(BY_ID["details.discard"], keymap))
    where = where.replace("{version}", f"v{fix.version}")
    return f"press {key_of(BY_ID[command_id], keymap)} {where}"


def explain(app: Any, exc: GgnetError) -> str:
    """Core's sentence, with what to press about it."""
    words = fix_words(app, exc.fix)
    return f"{exc.message} ({words})" if words else exc.message


def _plural(reason: str, count: int) -> str:
    if count == 1:
        return reason
    first, _, rest = reason.partition(" ")
    first = {"has": "have", "is": "are", "was": "were", "its": "their"}.get(first, first)
    return f"{first} {rest}".strip()


def summarise(results: list[Any], verb: str, app: Any = None) -> str:
    """One line for a bulk action, machines grouped by why they were refused:
    "prepared 4; 3 have no image: pc05, pc06, pc07 (press i on Machines (2))".
    ``results`` are core's BootResults (machine, ok, reason, fix)."""
    good = [r for r in results if r.ok]
    groups: dict[str, list[Any]] = {}
    for result in results:
        if not result.ok:
            groups.setdefault(result.reason, []).append(result)
    parts = [f"{verb} {len(good)}"] if good or not groups else []
    for reason, bad in groups.items():
        names = [r.machine for r in bad]
        listing = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        words = fix_words(app, bad[0].fix) if app is not None else ""
        parts.append(f"{len(bad)} {_plural(reason, len(bad))}: {listing}" + (f" ({words})" if words else ""))
    return "; ".join(parts)


async def attempt(screen: Any, coro: Any, done: str | None = None) -> Any:
    """Run a changing service call; refusals become a notification in core's own words.
    Returns the result, or None when it failed."""
    app = screen.app
    try:
        result = await app.run_work(coro)
    except GgnetError as exc:
        app.notify(explain(app, exc), severity="error", timeout=8)
        return None
    except Exception as exc:
        app.notify(app.incident(exc), severity="error", timeout=12)
        return None
    if done:
        app.notify(done, timeout=4)
    return result if result is not None else True
