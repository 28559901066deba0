#!/usr/bin/env python3
"""Wall time of rendering boot files from the database (a benchmark, not a test).

For N machines (default 100, 1,000 and 5,000) on a scratch SQLite database, prints the time of
``render_boot_files`` (reads every machine, renders, writes what differs, fsyncs): the first
render (every file new), a second one (nothing changed) and one after a single machine changed
(what every session start or stop pays). Also ``dnsmasq_config`` in full mode for the same
machines, and ``dnsmasq --test`` on the result.

    python benchmarks/bench_boot_files.py [--machines 100 1000 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.auth import set_bcrypt_rounds
from core.boot import dnsmasq
from core.config import Settings
from core.context import Core
from core.log import configure_logging
from core.services import boot, machines, users

PASSWORD = "bench-pass-1"


async def one_size(count: int, work: Path) -> None:
    settings = Settings(data_dir=work, log_file=work / "ggnet.log", boot_address="192.168.0.2")
    configure_logging(settings.log_file)
    core = Core.open(settings)
    try:
        await core.db.upgrade()
        admin = await users.create_first_admin(core, "admin", PASSWORD)
        actor = await users.login(core, "admin", PASSWORD)
        rows = ["name,mac,ip"] + [
            f"pc{i:05d},52:54:{(i >> 24) & 255:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x},"
            f"10.{i // (254 * 256)}.{(i // 254) % 256}.{i % 254 + 1}"
            for i in range(1, count + 1)
        ]
        await machines.import_csv(core, actor, "\n".join(rows) + "\n")
        del admin

        figures = []
        for label in ("first render", "nothing changed"):
            start = time.perf_counter()
            report = await boot.render_boot_files(core, actor)
            figures.append(f"{label} {time.perf_counter() - start:.3f} s ({len(report.written)} written)")
        await machines.update_machine(core, actor, "pc00001", boot_mode="uefi-secure", mac="52:54:aa:00:00:01")
        start = time.perf_counter()
        report = await boot.render_boot_files(core, actor)
        figures.append(
            f"one machine changed {time.perf_counter() - start:.3f} s "
            f"({len(report.written)} written, {len(report.removed)} removed)"
        )
        start = time.perf_counter()
        text = (await boot.dnsmasq_config(core, actor, mode="full", subnet="10.0.0.0/8")).text
        rendered = time.perf_counter() - start
        start = time.perf_counter()
        await dnsmasq.test_config(text)
        figures.append(f"dnsmasq full config {rendered:.3f} s, dnsmasq --test {time.perf_counter() - start:.3f} s")
        print(f"{count:>6} machines: " + "; ".join(figures))
    finally:
        await core.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machines", type=int, nargs="+", default=[100, 1000, 5000])
    args = parser.parse_args()
    set_bcrypt_rounds(4)  # the login is not what is measured
    for count in args.machines:
        with tempfile.TemporaryDirectory(prefix="ggnet-bench-boot-") as tmp:
            await one_size(count, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
