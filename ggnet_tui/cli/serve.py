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


def _listen(host: str, port: int, field: str = "http_address") -> socket.socket:
    from core.errors import Invalid

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise Invalid(field, f"cannot listen on {host}:{port}: {why}") from None
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

    from core.config import split_list
    from core.engine.engine import Engine
    from core.events import follow_audit, stop_task

    from ..api.app import create_app
    from ..api.v1 import remove_stale_uploads

    say = say or (lambda text: click.echo(text, err=True))
    engine = Engine(core, mode=mode)
    if not await engine.lock.acquire(wait=False):
        if not wait_for_lock:
            return False
        await engine.lock.acquire(wait=True, say=say)
    settings = core.settings
    host, port = settings.http_listen
    sockets: list[socket.socket] = []
    try:
        sockets.append(_listen(host, port))
        if settings.tls_cert is not None:
            sockets.append(_listen(*settings.https_listen, field="https_address"))
        app = create_app(core, engine)
        await remove_stale_uploads(core)
    except BaseException:
        for sock in sockets:
            sock.close()
        await engine.lock.release()
        raise
    proxies = split_list(settings.api_trusted_proxies)
    common: dict[str, Any] = {
        "log_config": None,
        "access_log": False,  # an access log would hold every PC's MAC and nothing an operator needs
        "lifespan": "off",
        "server_header": False,
        "timeout_graceful_shutdown": 5,
        # X-Forwarded-For and -Proto are believed only from the listed reverse proxies
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": proxies or None,
    }
    servers = [uvicorn.Server(uvicorn.Config(app, **common))]
    if settings.tls_cert is not None:
        tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
        try:
            servers.append(uvicorn.Server(uvicorn.Config(app, **common, **tls)))
            servers[-1].config.load()  # a bad certificate or key is refused now, with a sentence
        except (OSError, ValueError) as exc:
            for sock in sockets:
                sock.close()
            await engine.lock.release()
            from core.errors import Invalid

            raise Invalid("tls_cert", f"cannot use {settings.tls_cert} and {settings.tls_key}: {exc}") from None

    def stop(*_args: Any) -> None:
        engine.stop()
        for server in servers:
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
            say(f"ggnet serve: the API on http://{host}:{port}/api/v1/docs")
            await engine.run_forever()
        except Exception:
            engine.log.exception("engine stopped by an error")
            for server in servers:
                server.should_exit = True
            raise

    engine_task = asyncio.create_task(run_engine())
    asker = asyncio.create_task(stop_when_asked())
    audit_feed = asyncio.create_task(follow_audit(core))
    try:
        await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in zip(servers, sockets, strict=True)))
    finally:
        stop()
        asker.cancel()
        await stop_task(audit_feed)
        with contextlib.suppress(Exception):
            await engine_task
        await engine.close()
        for sock in sockets:
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
