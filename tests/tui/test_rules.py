"""One place for each concept (issue 9 part 3): the console copies no permission or enum value,
says core's fixes in its own keys (the CLI in its commands), summarises bulk results one way, and
computes I/O rates and remembers preferences with small pure pieces tested here."""

from __future__ import annotations

import ast
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.enums import BootMode, ImageKind, Permission, Role, WritebackPolicy
from core.errors import FIX_ACTIONS, Fix
from core.monitor import Throughput
from core.services.boots import BootResult
from ggnet_tui.cli.base import with_fix
from ggnet_tui.prefs import Prefs, to_toml
from ggnet_tui.screens.common import fix_words, summarise

CONSOLE = Path(__file__).resolve().parents[2] / "ggnet_tui"


def console_modules() -> list[Path]:
    """The console's code (the CLI prints core's words and is not checked here)."""
    return [p for p in CONSOLE.rglob("*.py") if "cli" not in p.parts and "api" not in p.parts]


def test_the_console_copies_no_permission_or_enum_value() -> None:
    permissions = {p.value for p in Permission if "_" in p.value}  # not "read": a column is named so
    enums = [{m.value for m in e} for e in (BootMode, ImageKind, WritebackPolicy, Role)]
    found = []
    for path in console_modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in permissions:
                found.append(f"{path.name}:{node.lineno}: permission {node.value!r}")
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2:
                values = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                if len(values) == len(node.elts) and any(values <= members for members in enums):
                    found.append(f"{path.name}:{node.lineno}: enum values {sorted(values)}")
    assert not found, "use core.enums instead:\n" + "\n".join(found)


def test_the_console_never_opens_a_database_session() -> None:
    """Screens and the monitor read through core services (with the user's permission check)."""
    offenders = [
        p.name for p in console_modules() if ".db.session(" in p.read_text() or ".db.transaction(" in p.read_text()
    ]
    assert offenders == []
    monitor = (CONSOLE.parent / "core" / "monitor.py").read_text()
    assert ".db.session(" not in monitor and "liveness(" in monitor


@pytest.mark.parametrize("action", sorted(FIX_ACTIONS))
def test_every_fix_is_said_by_the_cli_as_a_command_and_by_the_console_as_a_key(action: str) -> None:
    fix = Fix(action, machine="pc01", image="win11", version=2)
    cli = with_fix("refused", fix)
    assert cli.startswith("refused (") and ("ggnet" in cli or "--" in cli)
    app = SimpleNamespace(core=SimpleNamespace(settings=SimpleNamespace(keys={"machines.stop": "X"})))
    words = fix_words(app, fix)
    assert words and "ggnet" not in words and "--" not in words
    if action == "session.stop":
        assert words == "press X on Machines (2)"  # the operator's own key


def test_a_fix_names_a_known_action() -> None:
    with pytest.raises(ValueError):
        Fix("machine.explode")


def test_bulk_results_are_grouped_by_reason_in_one_line() -> None:
    results = [
        BootResult("pc01", True, "prepare requested"),
        BootResult("pc02", True, "already ready"),
        *(BootResult(f"pc0{i}", False, "has no image", Fix("machine.assign", f"pc0{i}")) for i in (5, 6, 7)),
        BootResult("pc08", False, "is disabled", Fix("machine.enable", "pc08")),
    ]
    app = SimpleNamespace(core=SimpleNamespace(settings=SimpleNamespace(keys={})))
    assert summarise(results, "prepared", app) == (
        "prepared 2; 3 have no image: pc05, pc06, pc07 (press i on Machines (2)); "
        "1 is disabled: pc08 (press e on Machines (2): May boot yes)"
    )
    assert summarise([], "prepared") == "prepared 0"


def test_throughput_from_the_engines_successive_counts() -> None:
    t0 = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
    meter = Throughput(idle_after=4)
    meter.update(1000, 500, t0, t0)
    assert meter.read_per_second is None  # one record: no rate yet
    meter.update(1000 + 20 * 2**20, 500 + 2**20, t0 + timedelta(seconds=2), t0 + timedelta(seconds=2))
    assert (meter.read_per_second, meter.written_per_second) == (10 * 2**20, 2**19)
    meter.update(1000 + 20 * 2**20, 500 + 2**20, t0 + timedelta(seconds=2), t0 + timedelta(seconds=3))
    assert meter.read_per_second == 10 * 2**20  # not recorded again yet: the rate stands
    meter.update(1000 + 20 * 2**20, 500 + 2**20, t0 + timedelta(seconds=2), t0 + timedelta(seconds=7))
    assert (meter.read_per_second, meter.written_per_second) == (0.0, 0.0)  # unchanged this long: idle
    meter.update(10, 10, t0 + timedelta(seconds=9), t0 + timedelta(seconds=9))
    assert meter.read_per_second is None  # counters went down: a new target, no rate across it
    meter.update(None, None, None, t0)
    assert meter.read_per_second is None


def test_preferences_round_trip_in_their_own_file_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "ggnet" / "console.toml"
    prefs = Prefs(path)
    prefs.set_columns("machines", ["mark", "name", "ip"])
    prefs.set_sort("machines", "ip", True)
    prefs.set_import_dir('/srv/images with "quotes"')
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Prefs(path)
    assert again.columns("machines") == ["mark", "name", "ip"]
    assert again.sort("machines") == ("ip", True)
    assert again.import_dir == '/srv/images with "quotes"'
    again.set_sort("machines", None, False)
    assert Prefs(path).sort("machines") == (None, False)
    assert not [p for p in path.parent.iterdir() if p.name != "console.toml"]  # no temporary left


def test_unreadable_preferences_are_ignored_and_unwritable_ones_do_not_stop_the_console(tmp_path: Path) -> None:
    path = tmp_path / "console.toml"
    path.write_text("[columns\nnot toml")
    assert Prefs(path).columns("machines") is None
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    prefs = Prefs(blocked / "console.toml")
    prefs.set_columns("machines", ["name"])  # cannot be saved: logged, and the console goes on
    assert prefs.columns("machines") == ["name"]


def test_prefs_file_lives_under_xdg_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ggnet_tui.prefs import prefs_path

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert prefs_path() == tmp_path / "cfg" / "ggnet" / "console.toml"
    assert "[sort]" in to_toml({"sort": {"machines": "ip"}})
    assert os.environ["XDG_CONFIG_HOME"].endswith("cfg")
