"""What the console remembers for its OS user between runs: the columns shown and the sort of each
screen, and the directory images were last imported from.

They live in their own file, ``$XDG_CONFIG_HOME/ggnet/console.toml`` (``~/.config/ggnet``), beside
the settings file rather than in it: the settings file is the operator's, written by hand (for
root it is /etc/ggnet/ggnet.toml, shared by every login), and the console never rewrites it.
The file is written whole to a temporary name and renamed over the old one (mode 0600), so a
console killed while saving leaves the previous preferences. A file that cannot be read or
written is logged and otherwise ignored: preferences never stop the console.

    [columns]
    machines = ["name", "status", "mac", "ip", "image"]

    [sort]
    machines = "ip"
    machines_reverse = false

    [import]
    last_dir = "/srv/images"
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

PREFS_FILE = "console.toml"
MAX_BYTES = 64 * 1024


def prefs_path() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "ggnet" / PREFS_FILE


def _log_warning(event: str, **fields: Any) -> None:
    try:
        from core.log import get_logger

        get_logger().warning(event, **fields)
    except Exception:
        pass


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to console.toml")


def to_toml(data: dict[str, dict[str, Any]]) -> str:
    """Tables of strings, booleans and lists of strings: all the preferences need."""
    lines = ["# written by the ggnet console: what it remembers between runs (safe to delete)"]
    for table, values in data.items():
        if not values:
            continue
        lines.append(f"\n[{table}]")
        lines += [f"{json.dumps(key)} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


class Prefs:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or prefs_path()
        self.data: dict[str, dict[str, Any]] = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read(MAX_BYTES + 1)
            if len(raw) > MAX_BYTES:
                raise ValueError(f"larger than {MAX_BYTES} bytes")
            data = tomllib.loads(raw.decode("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # tomllib's errors are ValueErrors
            _log_warning("console preferences not read", path=str(self.path), reason=str(exc))
            return {}
        return {k: dict(v) for k, v in data.items() if isinstance(v, dict)}

    def save(self) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(to_toml(self.data))
            os.replace(temporary, self.path)
        except OSError as exc:
            _log_warning("console preferences not saved", path=str(self.path), reason=exc.strerror or str(exc))
            try:
                temporary.unlink()
            except OSError:
                pass

    # --- what the screens remember -------------------------------------------------

    def columns(self, screen: str) -> list[str] | None:
        value = self.data.get("columns", {}).get(screen)
        return [str(v) for v in value] if isinstance(value, list) else None

    def set_columns(self, screen: str, keys: list[str]) -> None:
        self.data.setdefault("columns", {})[screen] = list(keys)
        self.save()

    def sort(self, screen: str) -> tuple[str | None, bool]:
        table = self.data.get("sort", {})
        column = table.get(screen)
        return (column if isinstance(column, str) else None), bool(table.get(f"{screen}_reverse", False))

    def set_sort(self, screen: str, column: str | None, reverse: bool) -> None:
        table = self.data.setdefault("sort", {})
        if column is None:
            table.pop(screen, None)
            table.pop(f"{screen}_reverse", None)
        else:
            table[screen] = column
            table[f"{screen}_reverse"] = reverse
        self.save()

    @property
    def import_dir(self) -> str | None:
        value = self.data.get("import", {}).get("last_dir")
        return value if isinstance(value, str) else None

    def set_import_dir(self, directory: str) -> None:
        self.data.setdefault("import", {})["last_dir"] = directory
        self.save()
