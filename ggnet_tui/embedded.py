"""The engine inside the console: a single machine is a working boot server without `ggnet serve`.

When no other process holds this server's engine lock (no `ggnet serve` runs) and the console runs
as root, it runs the engine and its HTTP listener (PCs' boot requests) in a thread of its own, with
its own event loop and database connections, so neither slows the other. It stops with the console;
production runs `ggnet serve` under systemd instead (then the console just shows that engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import Any

from core.log import get_logger


class EmbeddedEngine:
    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.thread: threading.Thread | None = None
        self.running = False  # holds the lock and serves
        self.error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    @staticmethod
    def wanted(settings: Any) -> bool:
        return bool(settings.console_engine) and os.geteuid() == 0

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="ggnet-engine", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # the console stays usable; the header says the engine is not running
            self.error = str(exc)
            get_logger().exception("embedded engine stopped")
        finally:
            self.running = False

    async def _main(self) -> None:
        from core.context import Core

        from .cli.serve import serve_forever

        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        core = Core.open(self.settings)
        log = get_logger("ggnet.engine")
        try:
            self.running = True
            served = await serve_forever(
                core, mode="embedded", say=lambda text: log.info(text), wait_for_lock=False, stopping=self._stopping
            )
            if not served:
                log.info("another process runs the engine; the console does not")
        finally:
            self.running = False
            with contextlib.suppress(Exception):
                await core.close()

    def stop(self, timeout: float = 5.0) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        if self.thread is not None:
            self.thread.join(timeout)
