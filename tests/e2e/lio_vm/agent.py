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
  ``Path`` and ``CONFIGFS`` at hand and answers its ``result`` variable (the tests' "targetcli").

Replies: ``{"ok": true, "result": ..., "elapsed": <seconds the backend call (else the operation) took in
the VM>}`` or
``{"ok": false, "error": "<type>: <message>"}``.

Usage: agent.py LOG_FILE
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
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


async def handle(backend: LioBackend, request: dict) -> object:
    op = request["op"]
    if op == "health":
        return dataclasses.asdict(await backend.health())
    if op == "apply":
        return await timed(backend.apply(to_spec(request["spec"])))
    if op == "observe":
        found = await timed(backend.observe(request.get("iqns")))
        return {iqn: observed_json(t) for iqn, t in found.items()}
    if op == "verify_chap":
        return await backend.verify_chap(to_spec(request["spec"]))
    if op == "create":
        await backend.create_target(to_spec(request["spec"]))
        return None
    if op == "delete":
        await timed(backend.delete(request["iqn"]))
        return None
    if op == "list":
        return [dataclasses.asdict(t) for t in await backend.list_targets()]
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
