"""Runs inside the LIO VM (chroot into the host root, the tests' own interpreter): serves the
project's ``core.iscsi.lio.LioBackend`` to the host over the virtio-serial port "ggnet.ctl".

One JSON object per line each way. Requests: ``{"op": "health"}``, ``{"op": "create", "spec": {...}}``
(TargetSpec fields), ``{"op": "delete", "iqn": ...}``, ``{"op": "list"}``, ``{"op": "read", "path": ...}``
and ``{"op": "ls", "path": ...}`` (a file or directory under /sys/kernel/config, relative to it: what
the kernel holds, seen without the backend).
Replies: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "<type>: <message>"}``.

Usage: agent.py LOG_FILE
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout under test
# structlog imports rich (for pretty tracebacks on a terminal, unused here) when it can: under TCG
# over 9p that alone costs seconds of the VM's start
sys.modules["rich"] = None  # type: ignore[assignment]

from core.iscsi.base import TargetSpec
from core.iscsi.lio import LioBackend
from core.log import configure_logging

PORT_NAME = "ggnet.ctl"
CONFIGFS = Path("/sys/kernel/config")


def find_port() -> Path:
    for _ in range(100):
        for entry in Path("/sys/class/virtio-ports").glob("*"):
            if (entry / "name").read_text().strip() == PORT_NAME:
                return Path("/dev") / entry.name
        time.sleep(0.1)
    raise SystemExit(f"no virtio-serial port named {PORT_NAME}")


async def handle(backend: LioBackend, request: dict) -> object:
    op = request["op"]
    if op == "health":
        return dataclasses.asdict(await backend.health())
    if op == "create":
        spec = dict(request["spec"])
        spec["backing_file"] = Path(spec["backing_file"])
        await backend.create_target(TargetSpec(**spec))
        return None
    if op == "delete":
        await backend.delete_target(request["iqn"])
        return None
    if op == "list":
        return [dataclasses.asdict(t) for t in await backend.list_targets()]
    if op in ("read", "ls"):
        path = (CONFIGFS / request["path"]).resolve()
        if path != CONFIGFS and CONFIGFS not in path.parents:
            raise ValueError("only paths under /sys/kernel/config")
        return path.read_text() if op == "read" else sorted(p.name for p in path.iterdir())
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
            reply = {"ok": True, "result": await handle(backend, json.loads(line))}
        except Exception as exc:  # reported to the host, which fails the test with it
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        data = memoryview(json.dumps(reply).encode() + b"\n")
        while data:  # a virtio port takes at most a few pages per write
            data = data[os.write(fd, data) :]


if __name__ == "__main__":
    asyncio.run(main())
