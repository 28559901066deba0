"""A console told to leave (its terminal gone: SIGHUP; or SIGTERM) is gone within seconds even
when something it waits for never returns: here a thread that blocks for ten minutes, as a
database that stopped answering or the checksum of an image being imported would."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

STUCK_CONSOLE = """
import sys, time
from pathlib import Path
from ggnet_tui.app import GgnetApp

def open_database():  # never returns; says so first, so the signal comes while it is stuck
    Path(sys.argv[1]).touch()
    time.sleep(600)

app = GgnetApp(open_core=open_database)
app.exit_grace = 1
app.run(headless=True)
sys.exit(app.return_code)
"""


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_a_console_stuck_in_a_thread_still_exits_on_a_signal(tmp_path: Path, signum: int):
    ready = tmp_path / "ready"
    script = tmp_path / "stuck_console.py"
    script.write_text(STUCK_CONSOLE)
    env = {"GGNET_DATA_DIR": str(tmp_path), "GGNET_LOG_FILE": str(tmp_path / "ggnet.log"), "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(
        [sys.executable, str(script), str(ready)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        for _ in range(300):  # start-up, bounded
            if ready.exists() or process.poll() is not None:
                break
            time.sleep(0.1)
        assert ready.exists(), process.stderr.read().decode() if process.poll() is not None else "never ready"
        process.send_signal(signum)
        for _ in range(100):  # the grace is 1 s; 10 s is the bound of "gone", not a timing assertion
            if process.poll() is not None:
                break
            time.sleep(0.1)
        assert process.poll() == 128 + signum  # our handler's exit status, not the signal's default
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
