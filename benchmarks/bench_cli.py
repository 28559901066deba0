#!/usr/bin/env python3
"""Wall time of the `ggnet` command line on SQLite and PostgreSQL (a benchmark, not a test).

Prints, for each database: `ggnet machine list --json` with 0, 1,000 and 10,000 machines, and
`ggnet machine import` of a 1,000-row CSV (plus the 9,000-row import that tops it up to 10,000).
Every figure is the real installed command run as a subprocess, so it includes start-up and
the login's bcrypt check at the production cost.

    python benchmarks/bench_cli.py [--pg-url URL] [--repeat N] [--sqlite-only]

The PostgreSQL URL comes from --pg-url or GGNET_TEST_PG_URL (a role allowed to create
databases, e.g. postgresql+asyncpg://ggnet_test:ggnet_test@127.0.0.1:5432/postgres);
a scratch database is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

PASSWORD = "bench-pass-1"


def ggnet() -> str:
    beside = Path(sys.executable).parent / "ggnet"
    return str(beside) if beside.exists() else (shutil.which("ggnet") or sys.exit("ggnet is not installed"))


def run(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    result = subprocess.run([ggnet(), *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"ggnet {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return elapsed, result


def csv_file(directory: Path, first: int, count: int) -> Path:
    path = directory / f"machines-{first}-{count}.csv"
    lines = ["name,mac,ip,boot_mode"]
    for i in range(first, first + count):
        ip = f"10.{i // 250 // 250}.{i // 250 % 250}.{i % 250 + 1}"
        lines.append(
            f"pc{i:05d},52:54:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x},{ip},bios"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def timed(args: list[str], env: dict[str, str], repeat: int, expect_rows: int | None = None) -> str:
    times = []
    for _ in range(repeat):
        elapsed, result = run(args, env)
        if expect_rows is not None:
            import json

            assert len(json.loads(result.stdout)) == expect_rows
        times.append(elapsed)
    if repeat == 1:
        return f"{times[0]:6.2f} s"
    return f"{statistics.median(times):6.2f} s (min {min(times):.2f}, max {max(times):.2f}, n={repeat})"


def bench(kind: str, env: dict[str, str], work: Path, repeat: int) -> None:
    run(["init", "--admin", "admin"], {**env, "GGNET_NEW_PASSWORD": PASSWORD})
    env = {**env, "GGNET_USER": "admin", "GGNET_PASSWORD": PASSWORD}
    print(f"\n{kind}")
    print(f"  machine list --json,      0 machines : {timed(['machine', 'list', '--json'], env, repeat, 0)}")
    print(
        f"  machine import  1,000-row CSV         : {timed(['machine', 'import', str(csv_file(work, 0, 1000))], env, 1)}"
    )
    print(f"  machine list --json,  1,000 machines : {timed(['machine', 'list', '--json'], env, repeat, 1000)}")
    print(
        f"  machine import  9,000-row CSV         : {timed(['machine', 'import', str(csv_file(work, 1000, 9000))], env, 1)}"
    )
    print(f"  machine list --json, 10,000 machines : {timed(['machine', 'list', '--json'], env, repeat, 10000)}")
    print(f"  machine list (table), 10,000 machines: {timed(['machine', 'list'], env, repeat)}")


async def _pg(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg-url", default=os.environ.get("GGNET_TEST_PG_URL"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sqlite-only", action="store_true")
    options = parser.parse_args()

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("GGNET_")}
    print(f"ggnet CLI benchmark: {ggnet()}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="ggnet-bench-") as tmp:
        work = Path(tmp)
        bench("SQLite", {**base_env, "GGNET_DATA_DIR": str(work / "sqlite")}, work, options.repeat)
        if options.sqlite_only:
            return
        if not options.pg_url:
            print("\nPostgreSQL: skipped (give --pg-url or set GGNET_TEST_PG_URL)")
            return
        name = f"ggnet_bench_{uuid.uuid4().hex[:8]}"
        asyncio.run(_pg(options.pg_url, f'CREATE DATABASE "{name}"'))
        try:
            url = f"{options.pg_url.rpartition('/')[0]}/{name}"
            env = {**base_env, "GGNET_DATA_DIR": str(work / "pg"), "GGNET_DATABASE_URL": url}
            bench("PostgreSQL", env, work, options.repeat)
        finally:
            asyncio.run(_pg(options.pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
