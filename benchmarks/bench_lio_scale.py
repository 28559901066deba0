#!/usr/bin/env python3
"""LioBackend at scale, in the LIO VM (tests/e2e/lio_vm; TCG, so absolute times are ~10× a real host).

    .venv/bin/python benchmarks/bench_lio_scale.py [--targets 200]

Creates --targets targets (system and game disk each) one after another with the backend, timing each
``apply`` inside the VM, then at full size: a CHAP change (the per-boot change), an unchanged apply,
``observe()`` of everything, ``observe([iqn])`` of one, and ``delete``. Anchors: the same operations at
the first targets, and rtslib's own listing (``RTSRoot().targets`` with each target's TPGs, LUNs and
ACLs, what the first LIO backend walked) at full size.
Prints figure, anchor and ratio (aim: the 200th target within 2× of the 1st). Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.lio_vm import LioVm

FIRST = 10  # targets averaged for "the first" and "the last"


def spec(vm: LioVm, i: int, secret: str = "first-secret-0001") -> dict[str, object]:
    disks = []
    for name in (f"pc{i:04d}.img", "game.img"):
        path = vm.workdir / name
        if not path.exists():
            with open(path, "wb") as f:
                f.truncate(8 << 20)
        disks.append(str(path))
    return {
        "iqn": f"iqn.2024-01.lan.ggnet:pc{i:04d}",
        "luns": [[0, disks[0]], [1, disks[1]]],
        "initiator_iqn": f"iqn.2024-01.lan.ggnet.client:pc{i:04d}",
        "chap_username": f"pc{i:04d}",
        "chap_secret": secret,
        "portal_host": "0.0.0.0",
        "portal_port": 3260,
    }


def timed(vm: LioVm, op: str, **args: object) -> float:
    vm.call(op, timeout=300, **args)
    return vm.last_elapsed  # measured inside the VM, without the virtio round trip


def median(values: list[float]) -> float:
    return statistics.median(values)


RTSLIB_LISTING = """
import time
root = rtslib_fb.RTSRoot()
started = time.perf_counter()
for target in root.targets:
    for tpg in target.tpgs:
        list(tpg.luns), list(tpg.node_acls), list(tpg.network_portals)
result = time.perf_counter() - started
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=200)
    args = parser.parse_args()
    count = args.targets
    with tempfile.TemporaryDirectory(prefix="bench-lio-") as tmp, LioVm(Path(tmp), memory_mib=512) as vm:
        creates = [timed(vm, "apply", spec=spec(vm, i)) for i in range(count)]
        chap_first = median([timed(vm, "apply", spec=spec(vm, i, "next-secret-0002")) for i in range(FIRST)])
        chap_last = median(
            [timed(vm, "apply", spec=spec(vm, i, "next-secret-0002")) for i in range(count - FIRST, count)]
        )
        same_last = median(
            [timed(vm, "apply", spec=spec(vm, i, "next-secret-0002")) for i in range(count - FIRST, count)]
        )
        one = median([timed(vm, "observe", iqns=[spec(vm, i)["iqn"]]) for i in range(count - FIRST, count)])
        every = min(timed(vm, "observe", iqns=None) for _ in range(3))
        rtslib_listing = min(vm.call("exec", code=RTSLIB_LISTING, timeout=600) for _ in range(3))
        deletes = [timed(vm, "delete", iqn=spec(vm, i)["iqn"]) for i in range(count - 1, -1, -1)]
    first, last = median(creates[1 : FIRST + 1]), median(creates[-FIRST:])  # the very first loads rtslib
    delete_full, delete_small = median(deletes[:FIRST]), median(deletes[-FIRST:])
    print(f"LIO in the TCG VM, {count} targets (2 LUNs each), median of {FIRST} (ms)")
    print(f"{'figure':<34} {'ggnet':>9} {'anchor':>9} {'ratio':>7}  anchor is")
    rows = [
        (f"apply new target #{count}", last, first, "targets #2-11"),
        (f"CHAP change at {count}", chap_last, chap_first, "CHAP change at targets #1-10"),
        (f"unchanged apply at {count}", same_last, first, "new target #2-11"),
        (f"observe one at {count}", one, first, "new target #2-11"),
        (f"observe all {count}", every, rtslib_listing, "rtslib's listing of the same"),
        (f"delete at {count}", delete_full, delete_small, f"delete at {FIRST}"),
    ]
    for name, ours, anchor, what in rows:
        print(f"{name:<34} {ours * 1e3:>9.1f} {anchor * 1e3:>9.1f} {ours / anchor:>6.2f}x  {what}")
    print(f"\nthe very first apply (rtslib import, first configfs use): {creates[0] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
