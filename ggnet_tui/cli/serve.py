"""`ggnet serve`: the boot server in the foreground (systemd runs it: core/systemd/ggnet.service).

It takes the engine lock of this server (a second `ggnet serve` waits, and says so), answers PCs'
boot requests and the API over HTTP on GGNET_HTTP_ADDRESS, and runs the engine: a pass at start,
within a second of any change of intent, and every GGNET_CONVERGE_SECONDS. Stopping it never
touches a target: booted PCs keep their disks, and the next `ggnet serve` carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import sys
from typing import Any

import click

from .base import State, run


def _listen(host: str, port: int) -> socket.socket:
    from core.errors import Invalid

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise Invalid("http_address", f"cannot listen on {host}:{port}: {why}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve_forever(
    core: Any,
    *,
    mode: str = "serve",
    say: Any = None,
    wait_for_lock: bool = True,
    stopping: asyncio.Event | None = None,
) -> bool:
    """Run the engine and its HTTP listener until SIGTERM or SIGINT (the console: until ``stopping``
    is set, signals untouched). False when another process holds the lock and ``wait_for_lock`` is off."""
    import uvicorn

    from core.engine.engine import Engine

    from ..api.app import create_app

    say = say or (lambda text: click.echo(text, err=True))
    engine = Engine(core, mode=mode)
    if not await engine.lock.acquire(wait=False):
        if not wait_for_lock:
            return False
        await engine.lock.acquire(wait=True, say=say)
    host, port = core.settings.http_listen
    try:
        sock = _listen(host, port)
    except BaseException:
        await engine.lock.release()
        raise
    config = uvicorn.Config(
        create_app(core, engine),
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)

    def stop(*_args: Any) -> None:
        engine.stop()
        server.should_exit = True

    # uvicorn swaps in its own handlers while it serves, then hands a caught signal back to these
    previous = (
        {} if stopping is not None else {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    )

    async def stop_when_asked() -> None:
        if stopping is not None:
            await stopping.wait()
            stop()

    async def run_engine() -> None:
        try:
            await engine.start()
            say(f"ggnet serve: server {core.settings.server_name}, boot requests on http://{host}:{port}/boot/")
            await engine.run_forever()
        except Exception:
            engine.log.exception("engine stopped by an error")
            server.should_exit = True
            raise

    engine_task = asyncio.create_task(run_engine())
    asker = asyncio.create_task(stop_when_asked())
    try:
        await server.serve(sockets=[sock])
    finally:
        stop()
        asker.cancel()
        with contextlib.suppress(Exception):
            await engine_task
        await engine.close()
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return True


@click.command()
@run
async def serve(state: State) -> None:
    """Run the boot server: the engine and the HTTP listener for PCs' boot requests."""
    core = await state.open()
    await serve_forever(core)
    sys.stdout.flush()
