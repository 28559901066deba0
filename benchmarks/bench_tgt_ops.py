#!/usr/bin/env python3
"""TgtBackend per target: ggnet over tgtd's socket against the same tgtadm calls from a shell loop.

    sudo .venv/bin/python benchmarks/bench_tgt_ops.py [--fleets 10,300] [--rounds 3]

On a private tgtd, for each fleet size N (cumulative: 10 targets, then up to 300):

- create: ``apply`` of a new target (target, LUN, account, binding, ACL) — anchor: the five tgtadm
  commands that make one, run by ``sh`` in a loop over the same number of new targets;
- next boot: ``apply`` of an existing target with a new CHAP secret (the per-boot change: a closed
  ACL, the account replaced, the ACL back) — anchor: the five tgtadm commands that do it;
- unchanged: ``apply`` of an identical target (a read of tgtd's state and a CHAP login probe) —
  anchor: ``tgtadm --op show --mode target`` alone, which is what a shell would read;
- boot (pass view): ``apply(spec, observed)`` of the next-boot change with the view of one bulk
  ``observe()`` made before (the engine's boot path: no read of tgtd per boot) — anchor: as next boot;
- 50 at once: 50 boot-path applies started together (p95 latency — anchor: one shell next boot —
  and the wall time for all — anchor: the shell loop doing the same 50);
- observe all: one bulk ``observe()`` (the engine's pass) — anchor: one ``tgtadm --op show`` (whole);
- delete: ``delete`` — anchor: unbind, offline, delete account, delete target with tgtadm.

Each figure is the median per target over the last 10 targets made or changed at that fleet size
("observe all": one call for the whole fleet).
Prints figure, anchor and ratio, and the ratio of the largest fleet to the smallest (flat = ~1).
Needs root (tgtd). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.iscsi.base import LunSpec, TargetSpec
from core.iscsi.tgt import TgtBackend
from tests.e2e.tgtd import TgtDaemon, start_private_tgtd

SAMPLE = 10  # targets timed per fleet size


def spec(daemon: TgtDaemon, disks: Path, i: int, secret: str = "first-secret-0001") -> TargetSpec:
    disk = disks / f"pc{i:04d}.raw"
    if not disk.exists():
        with open(disk, "wb") as f:
            f.truncate(1 << 20)
    return TargetSpec(f"iqn.2024-01.lan.ggnet:pc{i:04d}", (LunSpec(1, disk),), f"iqn.2024-01.lan.ggnet.client:pc{i:04d}",
                      f"pc{i:04d}", secret, daemon.portal_host, daemon.portal_port)  # fmt: skip


def shell(daemon: TgtDaemon, lines: list[str]) -> float:
    """Seconds ``sh`` takes to run ``lines`` (tgtadm commands), per line group of one target."""
    script = "set -e\n" + "\n".join(lines) + "\n"
    started = time.perf_counter()
    subprocess.run(["sh", "-c", script], check=True, stdout=subprocess.DEVNULL, timeout=600)
    return time.perf_counter() - started


def tgtadm(daemon: TgtDaemon, args: str) -> str:
    return f"tgtadm -C {daemon.control_port} --lld iscsi {args}"


def shell_create(daemon: TgtDaemon, disks: Path, tids: range) -> list[str]:
    lines = []
    for tid in tids:
        s = spec(daemon, disks, 100_000 + tid)
        lines += [
            tgtadm(daemon, f"--op new --mode target --tid {tid} -T {s.iqn}-sh"),
            tgtadm(daemon, f"--op new --mode logicalunit --tid {tid} --lun 1 -b {s.luns[0].backing_file}"),
            tgtadm(daemon, f"--op new --mode account --user {s.chap_username}-sh --password {s.chap_secret}"),
            tgtadm(daemon, f"--op bind --mode account --tid {tid} --user {s.chap_username}-sh"),
            tgtadm(daemon, f"--op bind --mode target --tid {tid} -Q {s.initiator_iqn}"),
        ]
    return lines


def shell_next_boot(daemon: TgtDaemon, disks: Path, tids: range) -> list[str]:
    lines = []
    for tid in tids:
        s = spec(daemon, disks, 100_000 + tid)
        lines += [
            tgtadm(daemon, f"--op unbind --mode target --tid {tid} -Q {s.initiator_iqn}"),
            tgtadm(daemon, f"--op delete --mode account --user {s.chap_username}-sh"),
            tgtadm(daemon, f"--op new --mode account --user {s.chap_username}-sh --password next-secret-0002"),
            tgtadm(daemon, f"--op bind --mode account --tid {tid} --user {s.chap_username}-sh"),
            tgtadm(daemon, f"--op bind --mode target --tid {tid} -Q {s.initiator_iqn}"),
        ]
    return lines


def shell_delete(daemon: TgtDaemon, disks: Path, tids: range) -> list[str]:
    lines = []
    for tid in tids:
        s = spec(daemon, disks, 100_000 + tid)
        lines += [
            tgtadm(daemon, f"--op unbind --mode target --tid {tid} -Q {s.initiator_iqn}"),
            tgtadm(daemon, f"--op update --mode target --tid {tid} -n state -v offline"),
            tgtadm(daemon, f"--op delete --mode account --user {s.chap_username}-sh"),
            tgtadm(daemon, f"--op delete --mode target --tid {tid} --force"),
        ]
    return lines


async def timed(calls: list) -> float:  # type: ignore[type-arg]
    """Median seconds of each awaited call."""
    times = []
    for call in calls:
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def measure(
    daemon: TgtDaemon, backend: TgtBackend, disks: Path, made: int, fleet: int
) -> dict[str, tuple[float, float]]:
    """Grow the fleet to ``fleet`` targets, then time SAMPLE of each operation (and their anchors)."""
    for i in range(made, fleet - SAMPLE):
        await backend.apply(spec(daemon, disks, i))
    sample = list(range(fleet - SAMPLE, fleet))
    figures: dict[str, tuple[float, float]] = {}
    create = await timed([lambda i=i: backend.apply(spec(daemon, disks, i)) for i in sample])
    tids = range(50_000, 50_000 + SAMPLE)  # the shell's own targets, beside ggnet's fleet
    figures["create"] = (create, shell(daemon, shell_create(daemon, disks, tids)) / SAMPLE)
    next_boot = await timed([lambda i=i: backend.apply(spec(daemon, disks, i, "next-secret-0002")) for i in sample])
    figures["next boot"] = (next_boot, shell(daemon, shell_next_boot(daemon, disks, tids)) / SAMPLE)
    unchanged = await timed([lambda i=i: backend.apply(spec(daemon, disks, i, "next-secret-0002")) for i in sample])
    figures["unchanged"] = (unchanged, shell(daemon, [tgtadm(daemon, "--op show --mode target")] * SAMPLE) / SAMPLE)

    # the engine's boot path: the view of its last pass (one bulk observe), no read per boot
    view = await backend.observe()
    boot = [
        lambda i=i: backend.apply(spec(daemon, disks, i, "third-secret-0003"), view[spec(daemon, disks, i).iqn])
        for i in sample
    ]
    figures["boot (pass view)"] = (await timed(boot), figures["next boot"][1])
    # 50 boot requests at once (the engine's p95 budget is 100 ms for this, target work included)
    if fleet >= 50:
        storm = list(range(fleet - 50, fleet))
        latencies: list[float] = []

        async def one(i: int) -> None:
            started = time.perf_counter()
            await backend.apply(spec(daemon, disks, i, "storm-secret-0004"), view[spec(daemon, disks, i).iqn])
            latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in storm))
        wall = time.perf_counter() - started
        many = range(60_000, 60_050)
        shell(daemon, shell_create(daemon, disks, many))
        anchor = shell(daemon, shell_next_boot(daemon, disks, many))
        shell(daemon, shell_delete(daemon, disks, many))
        figures["50 at once: p95"] = (statistics.quantiles(latencies, n=20)[-1], anchor / 50)
        figures["50 at once: all"] = (wall, anchor)
    started = time.perf_counter()
    await backend.observe()
    figures["observe all"] = (time.perf_counter() - started, shell(daemon, [tgtadm(daemon, "--op show --mode target")]))
    delete = await timed([lambda i=i: backend.delete(spec(daemon, disks, i).iqn) for i in sample])
    figures["delete"] = (delete, shell(daemon, shell_delete(daemon, disks, tids)) / SAMPLE)
    for i in sample:  # back to the fleet size for the next round
        await backend.apply(spec(daemon, disks, i))
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleets", default="10,300")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    fleets = sorted(int(n) for n in args.fleets.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-tgt-") as tmp:
        work = Path(tmp)
        daemon = start_private_tgtd(work)
        try:
            backend = TgtBackend(daemon.control_port)
            results: dict[int, dict[str, list[tuple[float, float]]]] = {n: {} for n in fleets}
            for _ in range(args.rounds):
                made = 0
                for fleet in fleets:
                    for name, pair in (await measure(daemon, backend, work, made, fleet)).items():
                        results[fleet].setdefault(name, []).append(pair)
                    made = fleet
                daemon.delete_all_targets()
                daemon.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "account")
                for line in daemon.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "account").stdout.splitlines()[
                    1:
                ]:
                    daemon.tgtadm("--lld", "iscsi", "--op", "delete", "--mode", "account", "--user", line.strip())
                backend = TgtBackend(daemon.control_port)
        finally:
            daemon.stop()
    print(f"tgt per target, median of {SAMPLE} targets, best of {args.rounds} rounds (ms)")
    print(f"{'operation':<17} {'fleet':>6} {'ggnet':>8} {'tgtadm sh':>10} {'ratio':>7}")
    best: dict[tuple[int, str], float] = {}
    for fleet in fleets:
        for name, pairs in results[fleet].items():
            ours, anchor = min(p[0] for p in pairs), min(p[1] for p in pairs)
            best[fleet, name] = ours
            print(f"{name:<17} {fleet:>6} {ours * 1e3:>8.2f} {anchor * 1e3:>10.2f} {ours / anchor:>6.2f}x")
    if len(fleets) > 1:
        small, large = fleets[0], fleets[-1]
        print(f"\ngrowth from {small} to {large} targets (ggnet per target):")
        for name in results[small]:
            print(f"  {name:<17} {best[large, name] / best[small, name]:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
