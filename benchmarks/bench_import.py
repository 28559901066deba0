"""Import throughput: a qcow2 of 2 GiB virtual size holding 1 GiB of data, imported by ggnet,
against `cp` of the same file (plus an fsync, as the import does), in the same run.

    python benchmarks/bench_import.py [--dir DIR] [--virtual-gib 2] [--data-gib 1] [--rounds 2]

Prints MB/s of data for both and the ratio (import / cp), and the phases of the import
(probe and check, conversion, sha256, database). Runs on SQLite in a scratch data directory.
Page cache is left warm for both (the source was just written); nothing system-wide is flushed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.auth import SYSTEM
from core.config import Settings
from core.context import Core
from core.log import configure_logging
from core.services import images
from core.storage import qemu_img

MiB = 1 << 20
GiB = 1 << 30


def make_source(root: Path, virtual: int, data: int) -> Path:
    """Data in 64 MiB runs spread evenly over the disk, holes between them; then qemu-img makes the qcow2."""
    raw = root / "source.raw"
    run = 64 * MiB
    runs = max(1, data // run)
    stride = virtual // runs
    block = os.urandom(MiB)
    with open(raw, "wb") as handle:
        handle.truncate(virtual)
        for i in range(runs):
            handle.seek(i * stride)
            for _ in range(run // MiB):
                handle.write(block[: MiB - 8] + i.to_bytes(8, "little"))  # not deduplicable by accident
    qcow2 = root / "source.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True, timeout=600)
    raw.unlink()
    return qcow2


def time_cp(source: Path, dest: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["cp", str(source), str(dest)], check=True, timeout=600)
    subprocess.run(["sync", str(dest)], check=True, timeout=600)  # the import fsyncs its output too
    elapsed = time.perf_counter() - start
    dest.unlink()
    return elapsed


async def time_import(core: Core, source: Path, name: str) -> dict[str, float]:
    phases: dict[str, float] = {}
    start = time.perf_counter()
    probed = await qemu_img.probe(source)
    phases["probe+check"] = time.perf_counter() - start
    scratch = images.images_dir(core.settings) / "bench-convert.raw"
    t = time.perf_counter()
    await qemu_img.convert_to_raw(probed.path, scratch, probed.format, virtual_size=probed.info.virtual_size)
    phases["convert"] = time.perf_counter() - t
    t = time.perf_counter()
    await qemu_img.sha256(scratch)
    phases["sha256"] = time.perf_counter() - t
    scratch.unlink()
    # the whole service call, end to end (it repeats every phase above, plus the database)
    t = time.perf_counter()
    version = await images.import_image(core, SYSTEM, source, name=name)
    phases["import_image (total)"] = time.perf_counter() - t
    await images.remove_image(core, SYSTEM, name)
    assert version.number == 1
    return phases


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--virtual-gib", type=float, default=2.0)
    parser.add_argument("--data-gib", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ggnet-bench-import-", dir=args.dir))
    try:
        virtual, data = int(args.virtual_gib * GiB), int(args.data_gib * GiB)
        print(
            f"scratch: {root} ({subprocess.run(['df', '--output=fstype', str(root)], capture_output=True, text=True).stdout.split()[-1]})"
        )
        print(f"source: qcow2, {virtual / GiB:.1f} GiB virtual, {data / GiB:.1f} GiB data ... ", end="", flush=True)
        source = make_source(root, virtual, data)
        print(f"{source.stat().st_size / MiB:.0f} MiB file")
        settings = Settings(
            data_dir=root / "data",
            database_url=f"sqlite+aiosqlite:///{root / 'data' / 'ggnet.db'}",
            log_file=root / "ggnet.log",
        )
        configure_logging(settings.log_file)
        core = Core.open(settings)
        await core.db.upgrade()
        images.images_dir(settings).mkdir(parents=True, exist_ok=True)
        best_cp = best_import = float("inf")
        for n in range(args.rounds):
            cp = time_cp(source, root / "copy.qcow2")
            phases = await time_import(core, source, f"bench{n}")
            total = phases["import_image (total)"]
            best_cp, best_import = min(best_cp, cp), min(best_import, total)
            detail = ", ".join(f"{k} {v:.2f}s" for k, v in phases.items())
            print(f"round {n + 1}: cp+sync {cp:.2f}s; {detail}")
        await core.close()
        mb = data / 1e6
        print(f"cp:     {mb / best_cp:8.1f} MB/s  ({best_cp:.2f} s, best of {args.rounds})")
        print(
            f"import: {mb / best_import:8.1f} MB/s  ({best_import:.2f} s, best of {args.rounds}; probe, check, "
            "convert, fsync, sha256, database)"
        )
        print(f"ratio import/cp throughput: {best_cp / best_import:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
