#!/usr/bin/env python3
"""The HTTP API under load, against a minimal FastAPI app that returns the same bytes from memory.

    sudo .venv/bin/python benchmarks/bench_api.py [--requests 2000] [--concurrency 8] [--boots 20]

A real `ggnet serve` (SQLite, a private tgtd when run as root) with a 1,000-machine fleet, all
assigned a small image:

- ``GET /api/v1/machines?limit=100`` (a page of 100 of 1,000, authenticated: token check, role
  check, two queries) and ``GET /metrics`` (the fleet read from the database at each scrape):
  requests per second, p50 and p99 latency, at ``--concurrency`` clients in flight;
- anchor: the same bytes from memory, served by a FastAPI app on the same uvicorn settings, in
  another process, measured the same way in the same run;
- boot-request latency (``GET /boot/<mac>``: a new writeback clone and a target per request) for
  ``--boots`` machines one after another, alone and while the machines page is under that load.

The client (httpx) shares the machine's 2 cores with the servers, equally for ggnet and anchor.
Prints figure, anchor and ratio. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from core import auth
from core.auth import SYSTEM
from core.services import images, machines, users
from tests.e2e import tgtd as tgtd_module
from tests.e2e.api_server import serve_env, with_core
from tests.e2e.bootdisk import make_prev_disk
from tests.e2e.serve import GgnetServe
from tests.e2e.tgtd import free_tcp_port

FLEET = 1000
PASSWORD = "bench-admin-pass"

ANCHOR_APP = textwrap.dedent(
    """
    import os
    from pathlib import Path
    import uvicorn
    from fastapi import FastAPI, Response

    machines = Path(os.environ["ANCHOR_MACHINES"]).read_bytes()
    metrics = Path(os.environ["ANCHOR_METRICS"]).read_bytes()
    app = FastAPI()

    @app.get("/api/v1/machines")
    async def page() -> Response:
        return Response(machines, media_type="application/json")

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics, media_type="text/plain; version=0.0.4; charset=utf-8")

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["ANCHOR_PORT"]), log_config=None,
                access_log=False, lifespan="off", server_header=False)
    """
)


async def seed(env: dict[str, str], disk: Path) -> None:
    auth.set_bcrypt_rounds(4)

    async def work(core):  # type: ignore[no-untyped-def]
        await core.db.upgrade()
        await users.create_first_admin(core, "admin", PASSWORD)
        await images.import_image(core, SYSTEM, disk, name="desk")
        rows = "\n".join(f"pc{i:04d},52:54:00:{i >> 8:02x}:{i & 0xFF:02x}:01" for i in range(FLEET))
        names = await machines.import_csv(core, SYSTEM, "name,mac\n" + rows + "\n")
        await images.assign_images(core, SYSTEM, names, "desk")

    await with_core(env, work)


async def load(url: str, headers: dict[str, str], count: int, concurrency: int) -> tuple[float, list[float]]:
    """``count`` GETs with ``concurrency`` in flight: (requests per second, latencies)."""
    latencies: list[float] = []
    todo = iter(range(count))
    async with httpx.AsyncClient(
        headers=headers, timeout=60, limits=httpx.Limits(max_connections=concurrency)
    ) as client:

        async def worker() -> None:
            for _ in todo:
                started = time.perf_counter()
                answer = await client.get(url)
                latencies.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return count / elapsed, latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def boots(url: str, macs: list[str]) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(timeout=120) as client:
        for mac in macs:
            started = time.perf_counter()
            answer = await client.get(f"{url}/boot/{mac.replace(':', '-')}")
            latencies.append(time.perf_counter() - started)
            if "sanboot" not in answer.text and "GGNET-NOT-BOOTING" not in answer.text:
                raise RuntimeError(f"boot {mac}: {answer.text[:300]}")
    return latencies


async def boots_under_load(
    url: str, macs: list[str], page: str, headers: dict[str, str], concurrency: int
) -> list[float]:
    stop = asyncio.Event()

    async def pressure() -> None:
        async with httpx.AsyncClient(headers=headers, timeout=60) as client:
            while not stop.is_set():
                await client.get(page)

    loaders = [asyncio.create_task(pressure()) for _ in range(concurrency)]
    await asyncio.sleep(0.5)
    try:
        return await boots(url, macs)
    finally:
        stop.set()
        await asyncio.gather(*loaders, return_exceptions=True)


def line(name: str, ours: tuple[float, list[float]], anchor: tuple[float, list[float]]) -> None:
    (rps, lat), (arps, alat) = ours, anchor
    print(
        f"{name:<28} {rps:>9.0f} {arps:>9.0f} {arps / rps:>6.2f}x   "
        f"{pct(lat, 0.5) * 1e3:>7.1f} {pct(alat, 0.5) * 1e3:>7.1f}   {pct(lat, 0.99) * 1e3:>7.1f} {pct(alat, 0.99) * 1e3:>7.1f}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--boots", type=int, default=20)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    daemon = None if tgtd_module.unavailable() else tgtd_module.start_private_tgtd(tmp)
    env = serve_env(tmp, daemon, GGNET_CONVERGE_SECONDS="600")
    serve = GgnetServe(env, tmp / "serve.log")
    anchor = None
    try:
        await seed(env, make_prev_disk(tmp / "desk.raw", size_mib=1))
        serve.start(wait=daemon is not None)
        deadline = time.monotonic() + 30
        while httpx.get(f"{serve.url}/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        token = httpx.post(f"{serve.url}/api/v1/auth/login", json={"username": "admin", "password": PASSWORD}).json()[
            "access_token"
        ]
        headers = {"Authorization": f"Bearer {token}"}
        page = f"{serve.url}/api/v1/machines?limit=100&offset=300"
        (tmp / "machines.json").write_bytes(httpx.get(page, headers=headers).content)
        (tmp / "metrics.txt").write_bytes(httpx.get(f"{serve.url}/metrics").content)
        port = free_tcp_port()
        anchor_env = {**os.environ, "ANCHOR_PORT": str(port), "ANCHOR_MACHINES": str(tmp / "machines.json"),
                      "ANCHOR_METRICS": str(tmp / "metrics.txt")}  # fmt: skip
        anchor = subprocess.Popen([sys.executable, "-c", ANCHOR_APP], env=anchor_env, start_new_session=True)
        anchor_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{anchor_url}/metrics")
                break
            except httpx.HTTPError:
                time.sleep(0.1)

        n, c = args.requests, args.concurrency
        await load(page, headers, 200, c)  # warm up both
        await load(f"{anchor_url}/api/v1/machines?limit=100&offset=300", {}, 200, c)
        results = {
            "machines page (100 of 1000)": (
                await load(page, headers, n, c),
                await load(f"{anchor_url}/api/v1/machines?limit=100&offset=300", {}, n, c),
            ),
            "metrics (1000 machines)": (
                await load(f"{serve.url}/metrics", {}, n // 2, c),
                await load(f"{anchor_url}/metrics", {}, n // 2, c),
            ),
        }
        print(f"ggnet API vs the same bytes from memory (FastAPI), {c} in flight, {n} requests (metrics {n // 2})")
        print(
            f"{'endpoint':<28} {'ggnet/s':>9} {'anchor/s':>9} {'ratio':>7}   {'p50 ms':>7} {'anchor':>7}   {'p99 ms':>7} {'anchor':>7}"
        )
        for name, (ours, theirs) in results.items():
            line(name, ours, theirs)

        kind = "new writeback and target each" if daemon is not None else "no tgtd: refused boots only"
        macs = [f"52:54:00:{i >> 8:02x}:{i & 0xFF:02x}:01" for i in range(2 * args.boots)]
        quiet = await boots(serve.url, macs[: args.boots])
        loaded = await boots_under_load(serve.url, macs[args.boots :], page, headers, c)
        print(f"\nboot request latency ({kind}), {args.boots} boots one after another")
        print(f"{'':<28} {'p50 ms':>8} {'p99 ms':>8}")
        print(f"{'alone':<28} {pct(quiet, 0.5) * 1e3:>8.1f} {pct(quiet, 0.99) * 1e3:>8.1f}")
        print(f"{'machines page under load':<28} {pct(loaded, 0.5) * 1e3:>8.1f} {pct(loaded, 0.99) * 1e3:>8.1f}")
        print(
            f"{'ratio (loaded / alone)':<28} {pct(loaded, 0.5) / pct(quiet, 0.5):>7.2f}x {pct(loaded, 0.99) / pct(quiet, 0.99):>7.2f}x"
        )
        print(f"(mean {statistics.mean(quiet) * 1e3:.1f} ms alone, {statistics.mean(loaded) * 1e3:.1f} ms under load)")
    finally:  # every process this run started is stopped, whatever failed
        if anchor is not None:
            anchor.terminate()
            try:
                anchor.wait(10)
            except subprocess.TimeoutExpired:
                anchor.kill()
        serve.stop()
        if daemon is not None:
            daemon.stop()


if __name__ == "__main__":
    asyncio.run(main())
