"""Runs inside the LIO VM (chroot into the host root, the tests' own interpreter): serves the
project's ``core.iscsi.lio.LioBackend`` to the host over the virtio-serial port "ggnet.ctl".

One JSON object per line each way. Requests:

- the protocol: ``{"op": "apply", "spec": {...}}`` (TargetSpec fields, ``luns`` as ``[[lun, path], ...]``),
  ``{"op": "observe", "iqns": [...] | null}``, ``{"op": "delete", "iqn": ...}``, ``{"op": "verify_chap",
  "spec": ...}``, ``{"op": "health"}``;
- compat (removed when the engine lands): ``create`` (a spec with ``backing_file``: LUN 0), ``list``;
- what the kernel holds, seen without the backend: ``{"op": "read"|"ls", "path": ...}`` (relative to
  /sys/kernel/config);
- behind ggnet's back: ``{"op": "exec", "code": ...}`` runs Python in the VM with ``rtslib_fb``, ``os``,
  ``Path`` and ``CONFIGFS`` at hand and answers its ``result`` variable (the tests' "targetcli");
- ggnet itself in the VM (see serve.py): ``{"op": "ggnet", "args": [...], "env": {...}}`` runs one
  ``ggnet`` command and answers ``{"rc", "stdout", "stderr"}`` (``"seconds"``: its time limit, ``"fast_hash"``: bcrypt at cost 4); with ``"background": true`` (and
  ``"log": PATH``) it answers the PID at once (``ggnet serve``); ``{"op": "signal", "pid", "sig"}`` and
  ``{"op": "reap", "pid", "wait"}`` (its exit status, or None while it runs). Commands are forked
  from this agent once it has imported ggnet (``{"op": "ggnet_preload"}``; the first command does it):
  under TCG an interpreter importing SQLAlchemy, FastAPI and uvicorn takes about 30 s, a fork 0.1 s.

Replies: ``{"ok": true, "result": ..., "elapsed": <seconds the backend call (else the operation) took in
the VM>}`` or
``{"ok": false, "error": "<type>: <message>"}``.

Usage: agent.py LOG_FILE
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout under test
# structlog imports rich (for pretty tracebacks on a terminal, unused here) when it can: under TCG
# over 9p that alone costs seconds of the VM's start
sys.modules["rich"] = None  # type: ignore[assignment]

from core.iscsi.base import LunSpec, TargetSpec
from core.iscsi.lio import LioBackend
from core.log import configure_logging

PORT_NAME = "ggnet.ctl"
T = TypeVar("T")
CONFIGFS = Path("/sys/kernel/config")


def find_port() -> Path:
    for _ in range(100):
        for entry in Path("/sys/class/virtio-ports").glob("*"):
            if (entry / "name").read_text().strip() == PORT_NAME:
                return Path("/dev") / entry.name
        time.sleep(0.1)
    raise SystemExit(f"no virtio-serial port named {PORT_NAME}")


def to_spec(data: dict) -> TargetSpec:
    data = dict(data)
    if "backing_file" in data:  # compat: the old single-disk spec
        data["luns"] = [[0, data.pop("backing_file")]]
    data["luns"] = tuple(LunSpec(int(n), Path(path)) for n, path in data["luns"])
    return TargetSpec(**data)


def observed_json(observed: object) -> dict:
    data = dataclasses.asdict(observed)  # type: ignore[call-overload]
    data["luns"] = {str(k): v for k, v in data["luns"].items()}
    data["io"] = {str(k): v for k, v in data["io"].items()}
    return data


BACKEND_SECONDS = [0.0]  # how long the last backend call took (without converting its answer to JSON)


async def timed(call: Awaitable[T]) -> T:
    started = time.perf_counter()
    try:
        return await call
    finally:
        BACKEND_SECONDS[0] = time.perf_counter() - started


# what `ggnet` commands and `ggnet serve` import, loaded once before the first fork
GGNET_MODULES = (
    "ggnet_tui.cli", "ggnet_tui.cli.serve", "ggnet_tui.api.app", "core.engine.engine", "core.engine.converge",
    "core.services.boots", "core.services.machines", "core.services.images", "core.services.users",
    "core.iscsi.select", "core.boot.ipxe", "core.db", "alembic.command", "alembic.config", "uvicorn",
    "uvicorn.protocols.http.h11_impl", "uvicorn.lifespan.off", "aiosqlite",
)  # fmt: skip
PORT_FD = [-1]  # the virtio port: a forked command must not hold it


def preload_ggnet() -> list[str]:
    """Import what ggnet commands need (once); the names that could not be imported."""
    missing = []
    for name in GGNET_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def fork_ggnet(args: list[str], env: dict[str, str], stdout: str, stderr: str, fast_hash: bool = False) -> int:
    """Fork a child that runs ``ggnet ARGS`` with ``env``; returns its PID. Called in a worker thread:
    there the child has no running event loop, and becomes its own main thread."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code: object = 1
    try:
        os.setsid()  # its own session: signalled by PID, never by the agent's group
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, stdout), (2, stderr)):
            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(out, fd)
            os.close(out)
        if PORT_FD[0] >= 0:
            os.close(PORT_FD[0])
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["ggnet", *args]
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if fast_hash:  # bcrypt at cost 12 takes seconds under TCG; verification honours each hash's cost
            from core import auth

            auth.set_bcrypt_rounds(4)
        from ggnet_tui.cli import main as ggnet_main

        ggnet_main.main(args=list(args), prog_name="ggnet")
        code = 0
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def exit_status(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


def reap(pid: int, timeout: float) -> int | None:
    """The exit status of a forked command (negative: killed by that signal), None while it runs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None if pid in CHILDREN else -1
        if done:
            CHILDREN.discard(pid)
            return exit_status(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


CHILDREN: set[int] = set()


async def run_ggnet(request: dict) -> object:
    await asyncio.to_thread(preload_ggnet)
    env = {str(k): str(v) for k, v in request.get("env", {}).items()}
    args = [str(a) for a in request["args"]]
    if request.get("background"):
        log = str(request["log"])
        pid = await asyncio.to_thread(fork_ggnet, args, env, log, log)
        CHILDREN.add(pid)
        return pid
    with tempfile.TemporaryDirectory(prefix="ggnet-cmd-", dir="/run") as tmp:
        out, err = f"{tmp}/stdout", f"{tmp}/stderr"
        pid = await asyncio.to_thread(fork_ggnet, args, env, out, err, bool(request.get("fast_hash")))
        CHILDREN.add(pid)
        seconds = float(request.get("seconds", 600))
        rc = await asyncio.to_thread(reap, pid, seconds)
        if rc is None:
            os.kill(pid, signal.SIGKILL)
            await asyncio.to_thread(reap, pid, 10)
            raise TimeoutError(f"ggnet {' '.join(args)} did not finish within {seconds:.0f} s")
        return {
            "rc": rc,
            "stdout": Path(out).read_text(errors="replace"),
            "stderr": Path(err).read_text(errors="replace"),
        }


async def handle(backend: LioBackend, request: dict) -> object:
    op = request["op"]
    if op == "ggnet_preload":
        return await asyncio.to_thread(preload_ggnet)
    if op == "ggnet":
        return await run_ggnet(request)
    if op == "signal":
        os.kill(int(request["pid"]), int(request["sig"]))
        return None
    if op == "reap":
        return await asyncio.to_thread(reap, int(request["pid"]), float(request.get("wait", 0)))
    if op == "health":
        return dataclasses.asdict(await backend.health())
    if op == "apply":
        return await timed(backend.apply(to_spec(request["spec"])))
    if op == "observe":
        found = await timed(backend.observe(request.get("iqns")))
        return {iqn: observed_json(t) for iqn, t in found.items()}
    if op == "verify_chap":
        return await backend.verify_chap(to_spec(request["spec"]))
    if op == "delete":
        await timed(backend.delete(request["iqn"]))
        return None
    if op in ("read", "ls"):
        path = (CONFIGFS / request["path"]).resolve()
        if path != CONFIGFS and CONFIGFS not in path.parents:
            raise ValueError("only paths under /sys/kernel/config")
        return path.read_text() if op == "read" else sorted(p.name for p in path.iterdir())
    if op == "exec":
        import rtslib_fb

        scope = {"rtslib_fb": rtslib_fb, "os": os, "Path": Path, "CONFIGFS": CONFIGFS, "result": None}
        exec(request["code"], scope)
        return scope["result"]
    raise ValueError(f"unknown op {op!r}")


def read_line(fd: int, pending: bytearray) -> bytes:
    while b"\n" not in pending:
        chunk = os.read(fd, 65536)
        if not chunk:  # the host side is not connected (yet)
            time.sleep(0.1)
            continue
        pending.extend(chunk)
    line, _, rest = bytes(pending).partition(b"\n")
    pending[:] = rest
    return line


async def main() -> None:
    configure_logging(Path(sys.argv[1]), level="DEBUG")
    backend = LioBackend()
    fd = os.open(find_port(), os.O_RDWR)
    PORT_FD[0] = fd
    print("LIOVM: agent ready", flush=True)
    pending = bytearray()
    while True:
        line = await asyncio.to_thread(read_line, fd, pending)
        try:
            started = time.perf_counter()
            BACKEND_SECONDS[0] = -1.0
            result = await handle(backend, json.loads(line))
            elapsed = BACKEND_SECONDS[0] if BACKEND_SECONDS[0] >= 0 else time.perf_counter() - started
            reply = {"ok": True, "result": result, "elapsed": elapsed}
        except Exception as exc:  # reported to the host, which fails the test with it
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        data = memoryview(json.dumps(reply).encode() + b"\n")
        while data:  # a virtio port takes at most a few pages per write
            data = data[os.write(fd, data) :]


if __name__ == "__main__":
    asyncio.run(main())
