#!/usr/bin/env python3
"""Import throughput: ggnet (the service, and `ggnet image import`) against qemu-img convert + sync
and cp + sync of the same file, in the same run.

    python benchmarks/bench_import.py [--dir DIR] [--virtual-gib 2] [--data-gib 1] [--rounds 5] [--code ROOT]

The source is a qcow2 of --virtual-gib holding --data-gib of random data in 64 MiB runs with
holes between them. Each round times, in turn:

- anchor `qemu-img convert -f qcow2 -O raw` of the source, then `sync` of the output;
- anchor `cp` of the source, then `sync` of the copy;
- the service: `images.import_image` (probe, check, map, convert, digest, flush, database);
- the CLI: `ggnet image import SOURCE --name N` as a subprocess after `ggnet login` (start-up,
  the login token's check, and the same import), and `ggnet image list`: the fixed cost every
  command pays; and the same import with GGNET_PASSWORD instead of the token (a bcrypt check at
  the production cost, as a script without `ggnet login` pays it).

The file system is synced (syncfs) before each timed step so that no step pays for another's
dirty pages, and the steps' order rotates from round to round (each round starts
one step later), so that none always follows the same one; the source stays in the page cache
for all of them. Figures are the median of
the rounds (min in brackets); ratios are ggnet / anchor. --code runs another checkout's ggnet
(e.g. /work/main, for a before/after comparison). SQLite, in a scratch data directory.
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
from collections.abc import Awaitable, Callable
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
PASSWORD = "bench-pass-1"


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


def syncfs(directory: Path) -> None:
    subprocess.run(["sync", "-f", str(directory)], check=True, timeout=600)


def timed_commands(commands: list[list[str]], cleanup: Path) -> float:
    start = time.perf_counter()
    for command in commands:
        subprocess.run(command, check=True, timeout=600, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    cleanup.unlink()
    return elapsed


def cli(code: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from ggnet_tui.cli import main; main()", *args]
    result = subprocess.run(
        command,
        cwd=code,
        env={**env, "PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        sys.exit(f"ggnet {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def figure(times: list[float]) -> str:
    return f"{statistics.median(times):6.2f} s (min {min(times):.2f})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--virtual-gib", type=float, default=2.0)
    parser.add_argument("--data-gib", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args()
    code = args.code.resolve()
    sys.path.insert(0, str(code))
    from core.auth import SYSTEM
    from core.config import Settings
    from core.context import Core
    from core.log import configure_logging
    from core.services import images

    root = Path(tempfile.mkdtemp(prefix="ggnet-bench-import-", dir=args.dir))
    try:
        virtual, data = int(args.virtual_gib * GiB), int(args.data_gib * GiB)
        fstype = subprocess.run(["df", "--output=fstype", str(root)], capture_output=True, text=True).stdout.split()[-1]
        print(f"ggnet from {code}; scratch {root} ({fstype}); {os.cpu_count()} CPUs")
        print(f"source: qcow2, {virtual / GiB:.1f} GiB virtual, {data / GiB:.1f} GiB data ... ", end="", flush=True)
        source = make_source(root, virtual, data)
        print(f"{source.stat().st_size / MiB:.0f} MiB file")
        data_dir = root / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GGNET_")}
        runtime = root / "run"
        runtime.mkdir(mode=0o700)
        env.update(GGNET_DATA_DIR=str(data_dir), HOME=str(root / "home"), XDG_RUNTIME_DIR=str(runtime))
        cli(code, ["init", "--admin", "admin"], {**env, "GGNET_NEW_PASSWORD": PASSWORD})
        cli(code, ["login"], {**env, "GGNET_USER": "admin", "GGNET_PASSWORD": PASSWORD})
        # without the token: another runtime directory, the password in the environment
        (root / "run-no-login").mkdir(mode=0o700)
        password_env = {
            **env,
            "XDG_RUNTIME_DIR": str(root / "run-no-login"),
            "GGNET_USER": "admin",
            "GGNET_PASSWORD": PASSWORD,
        }
        settings = Settings(data_dir=data_dir, log_file=root / "bench.log")
        configure_logging(settings.log_file)
        core = Core.open(settings)
        times: dict[str, list[float]] = {
            "qemu-img convert + sync": [],
            "cp + sync": [],
            "service": [],
            "CLI": [],
            "CLI fixed cost": [],
            "CLI, password": [],
        }
        out = root / "anchor.out"

        async def anchor_convert(n: int) -> float:
            qemu = ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(source), str(out)]
            return timed_commands([qemu, ["sync", str(out)]], out)

        async def anchor_copy(n: int) -> float:
            return timed_commands([["cp", str(source), str(out)], ["sync", str(out)]], out)

        async def service(n: int) -> float:
            start = time.perf_counter()
            await images.import_image(core, SYSTEM, source, name=f"service{n}")
            took = time.perf_counter() - start
            await images.remove_image(core, SYSTEM, f"service{n}")
            return took

        def command(name: str, command_env: dict[str, str]) -> Callable[[int], Awaitable[float]]:
            async def run(n: int) -> float:
                start = time.perf_counter()
                cli(code, ["image", "import", str(source), "--name", f"{name}{n}"], command_env)
                took = time.perf_counter() - start
                await images.remove_image(core, SYSTEM, f"{name}{n}")
                return took

            return run

        async def fixed_cost(n: int) -> float:
            start = time.perf_counter()
            cli(code, ["image", "list"], env)  # start-up, imports, login: what every command pays
            return time.perf_counter() - start

        steps: dict[str, Callable[[int], Awaitable[float]]] = {
            "qemu-img convert + sync": anchor_convert,
            "cp + sync": anchor_copy,
            "service": service,
            "CLI": command("cli", env),
            "CLI fixed cost": fixed_cost,
            "CLI, password": command("pw", password_env),
        }
        order = list(steps)
        for n in range(args.rounds):
            # each round starts one step later: no step always follows the same one (on a virtual
            # disk, a write right after another step's gigabyte was written and deleted can be slower)
            for name in order[n % len(order) :] + order[: n % len(order)]:
                syncfs(root)
                times[name].append(await steps[name](n))
            print(f"round {n + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
        await core.close()
        anchor = statistics.median(times["qemu-img convert + sync"])
        copy = statistics.median(times["cp + sync"])
        print(f"\nmedians of {args.rounds} rounds ({data / 1e6:.0f} MB of data):")
        for name, values in times.items():
            rate = data / 1e6 / statistics.median(values)
            print(f"  {name:24} {figure(values)}  {rate:7.0f} MB/s")
        for name in ("service", "CLI", "CLI, password"):
            mine = statistics.median(times[name])
            # each round's own ratio too: the anchor and ggnet ran seconds apart, so a busy machine weighs on both
            paired = statistics.median(
                m / a for m, a in zip(times[name], times["qemu-img convert + sync"], strict=True)
            )
            print(
                f"  ratio {name:13} / qemu-img convert + sync: {mine / anchor:.2f} (median of the rounds' own "
                f"ratios {paired:.2f})   / cp + sync: {mine / copy:.2f}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
