"""Running the installed `ggnet` as a subprocess, the way scripts and operators run it
(shared by the CLI, images, doctor, dnsmasq, logging and migration tests)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ADMIN_PW = "admin-pass-1"
VIEWER_PW = "viewer-pass-1"


def ggnet_executable() -> str:
    """The ggnet installed beside this Python (.venv or /work/venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "ggnet"
    if beside.exists():
        return str(beside)
    found = shutil.which("ggnet")
    if found is None:
        pytest.fail("the ggnet command is not installed (pip install -e .)")
    return found


def ggnet_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment: the data directory in tmp, no GGNET_* from the caller's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GGNET_")}
    runtime = tmp_path / "run"  # `ggnet login` keeps its token here, as in a real $XDG_RUNTIME_DIR
    runtime.mkdir(mode=0o700, exist_ok=True)
    env.update(
        GGNET_DATA_DIR=str(tmp_path / "data"), HOME=str(tmp_path / "home"), XDG_RUNTIME_DIR=str(runtime), **extra
    )
    return env


# The commands that store a password hash run the same `main` with bcrypt at cost 4, as the in-process
# tests hash: every later password login of the test's users then costs milliseconds, not 0.25 s
# (verification honours the cost stored in each hash; tests/e2e/engine_site.py keeps cost 12).
FAST_HASH_MAIN = (
    "import sys; sys.argv[0] = 'ggnet'; from core import auth; auth.set_bcrypt_rounds(4); "
    "from ggnet_tui.cli import main; main()"
)


def ggnet_command(args: list[str]) -> list[str]:
    words = [a for a in args if isinstance(a, str) and not a.startswith("-")][:2]
    if words[:1] == ["init"] or words in (["user", "add"], ["user", "passwd"]):
        return [sys.executable, "-c", FAST_HASH_MAIN, *args]
    return [ggnet_executable(), *args]


def run_ggnet(args: list[str], env: dict[str, str], **more_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ggnet_command(args),
        env={**env, **more_env},
        stdin=subprocess.DEVNULL,  # never a terminal: nothing may wait for a prompt
        capture_output=True,
        text=True,
        timeout=60,
    )


def as_admin(args: list[str], env: dict[str, str], **more: str) -> subprocess.CompletedProcess[str]:
    return run_ggnet(args, env, GGNET_USER="admin", GGNET_PASSWORD=ADMIN_PW, **more)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result


def one_error(result: subprocess.CompletedProcess[str], phrase: str) -> str:
    """Exit 1 with exactly one ``error: <sentence>`` line on stderr containing ``phrase``."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert phrase in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def sqlite_counts(env: dict[str, str]) -> dict[str, int]:
    """Rows per table, leaving out the login events every command writes by design."""
    with sqlite3.connect(Path(env["GGNET_DATA_DIR"]) / "ggnet.db") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        counts["audit_events"] = conn.execute(
            "SELECT count(*) FROM audit_events WHERE action != 'auth.login'"
        ).fetchone()[0]
    return counts
