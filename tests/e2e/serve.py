"""A real `ggnet serve` process for tests: started with a test's environment, ready once /healthz
answers 200, stopped with SIGTERM (SIGKILL in a test that wants a crash)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from core.engine.engine import POKE_SOON_SECONDS
from tests.cli import ggnet_executable

_live: set[int] = set()


@dataclass
class GgnetServe:
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    prefix: list[str] = field(default_factory=list)  # e.g. ["ip", "netns", "exec", NAME]: run it elsewhere
    stopped: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        host, _, port = self.env["GGNET_HTTP_ADDRESS"].rpartition(":")
        return f"http://{host}:{port}"

    def start(self, wait: bool = True) -> GgnetServe:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.prefix, ggnet_executable(), "serve"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        _live.add(self.process.pid)
        if wait:
            self.wait_healthy()
        return self

    def health(self) -> tuple[int, dict[str, object]]:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def wait_healthy(self, timeout: float = 30.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"ggnet serve exited {self.process.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                status, body = self.health()
                if status == 200:
                    return body
                last = body
            except (OSError, ValueError) as exc:
                last = exc
            time.sleep(0.1)
        raise RuntimeError(f"ggnet serve not healthy within {timeout} s: {last}")

    def boot_script(self, mac: str) -> str:
        with urllib.request.urlopen(f"{self.url}/boot/{mac.replace(':', '-')}", timeout=30) as answer:
            return answer.read().decode()

    def boot_and_settle(self, mac: str, timeout: float = 30.0) -> str:
        """The boot script, then wait for the pass the answer asks for (at most POKE_SOON_SECONDS
        later): until it ran, drift a test makes behind the engine's back may be repaired by it."""
        asked = time.monotonic()
        script = self.boot_script(mac)
        deadline = asked + timeout
        while time.monotonic() < deadline:
            age = self.health()[1].get("last_pass_seconds_ago")
            # the last pass's end, in this clock (the age is rounded to 0.1 s): the poke fired at least
            # POKE_SOON_SECONDS after the request, so a pass that ended after that was the poke's
            if isinstance(age, int | float) and time.monotonic() - age >= asked + POKE_SOON_SECONDS - 0.1:
                return script
            time.sleep(0.1)
        raise RuntimeError(f"ggnet serve ran no pass within {timeout} s of a boot request")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        _live.discard(proc.pid)
        self.process = None
        self.stopped.append(proc.returncode)
        return proc.returncode


def kill_leftovers() -> None:
    for pid in list(_live):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _live.discard(pid)


import atexit  # noqa: E402 - registered after the helpers it calls

atexit.register(kill_leftovers)


async def logged_in(env: dict[str, str], machine: str, timeout: float = 30.0) -> bool:
    """Wait (while the client runs) until the engine recorded its latest boot's iSCSI login.
    A boot-sector client is done in milliseconds; a real PC stays logged in for hours."""
    import asyncio
    import sqlite3

    database = Path(env["GGNET_DATA_DIR"]) / "ggnet.db"

    def seen() -> bool:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
            row = conn.execute(
                "SELECT login_at FROM boots WHERE machine_name = ? ORDER BY id DESC LIMIT 1", (machine,)
            ).fetchone()
        return bool(row and row[0])

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await asyncio.to_thread(seen):
            return True
        await asyncio.sleep(0.2)
    return False
