#!/usr/bin/env python3
"""Session start/stop wall time on tgt, and a boot storm of real iPXE clients.

    sudo .venv/bin/python benchmarks/bench_sessions.py [--counts 1,10,100] [--data-mib 128] [--storm 4]

For each writeback driver (reflink on an XFS file system made in a loop-mounted file; copy on
the machine's own file system) and each count N: N machines get a session (`start_sessions`,
default parallelism) on a 2 GiB image holding --data-mib MiB of data, then all are stopped.
Then the boot storm: --storm diskless QEMU clients boot at once from ggnet-provisioned
targets; the time until all have booted (written their sector) is printed.
Needs root (tgtd, loop mount). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import auth
from core.config import Settings
from core.context import Core
from core.iscsi.tgt import TgtBackend
from core.log import configure_logging
from core.services import images, machines, sessions, users
from tests.e2e.bootdisk import boot_image
from tests.e2e.qemu_client import ClientSpec, boot_clients
from tests.e2e.tgtd import start_private_tgtd

GIB = 1 << 30


def make_image(path: Path, data_mib: int) -> Path:
    """2 GiB raw: the test boot sector, then ``data_mib`` MiB of random data spread over the disk."""
    with open(path, "wb") as f:
        f.write(boot_image("bench"))
        chunk = os.urandom(1 << 20)
        stride = (2 * GIB) // max(1, data_mib)
        for i in range(data_mib):
            f.seek(max(1 << 20, i * stride))
            f.write(chunk)
        f.truncate(2 * GIB)
    return path


@contextmanager
def xfs_mount(workdir: Path) -> Iterator[Path]:
    backing, mountpoint = workdir / "xfs.img", workdir / "xfs"
    mountpoint.mkdir()
    with open(backing, "wb") as f:
        f.truncate(16 * GIB)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(backing)], check=True)
    subprocess.run(["mount", "-o", "loop", str(backing), str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


async def open_site(data_dir: Path, log_file: Path, driver: str, tgtd_port: int, portal_port: int):  # type: ignore[no-untyped-def]
    """A fresh ggnet site on the private tgtd, and its admin."""
    # the log stays open for the process's life: keep it off the loop-mounted file system
    settings = Settings(
        data_dir=data_dir,
        portal=f"127.0.0.1:{portal_port}",
        boot_address="10.0.2.2",
        tgt_control_port=tgtd_port,
        writeback_driver=driver,
        target_backend="tgt",
        log_file=log_file,
    )
    configure_logging(settings.log_file)
    core = Core.open(settings)
    core.use_backend(TgtBackend(tgtd_port))
    await core.db.upgrade()
    await users.create_first_admin(core, "bench", "bench-password")
    return core, await users.login(core, "bench", "bench-password")


async def run_driver(
    driver: str, data_dir: Path, log_file: Path, image: Path, counts: list[int], tgtd_port: int, portal_port: int
) -> None:
    core, admin = await open_site(data_dir, log_file, driver, tgtd_port, portal_port)
    t0 = time.perf_counter()
    await images.import_image(core, admin, image, name="win", kind="system")
    print(f"  [{driver}] import of the 2 GiB image: {time.perf_counter() - t0:.2f} s")
    made = 0
    for count in counts:
        while made < count:
            made += 1
            await machines.add_machine(
                core, admin, name=f"pc{made:03d}", mac=f"52:54:00:be:{made >> 8:02x}:{made & 255:02x}"
            )
            await images.assign_image(core, admin, f"pc{made:03d}", "win", None)
        names = [f"pc{i:03d}" for i in range(1, count + 1)]
        t0 = time.perf_counter()
        started = await sessions.start_sessions(core, admin, names)
        t_start = time.perf_counter() - t0
        failed = [r.message for r in started if not r.ok]
        t0 = time.perf_counter()
        stopped = await sessions.stop_sessions(core, admin, names)
        t_stop = time.perf_counter() - t0
        failed += [r.message for r in stopped if not r.ok]
        print(
            f"  [{driver}] {count:4d} machines: start {t_start:7.2f} s ({t_start / count * 1000:6.0f} ms each), "
            f"stop {t_stop:6.2f} s" + (f"  FAILURES: {failed[:3]}" if failed else "")
        )
    await core.close()


async def boot_storm(workdir: Path, image: Path, clients: int, tgtd_port: int, portal_port: int) -> None:
    core, admin = await open_site(workdir / "storm", workdir / "storm.log", "auto", tgtd_port, portal_port)
    settings = core.settings
    await images.import_image(core, admin, image, name="win", kind="system")
    macs = [f"52:54:00:5a:00:{i:02x}" for i in range(1, clients + 1)]
    for i, mac in enumerate(macs, 1):
        await machines.add_machine(core, admin, name=f"storm{i}", mac=mac)
        await images.assign_image(core, admin, f"storm{i}", "win", None)
    t0 = time.perf_counter()
    await sessions.start_sessions(core, admin, [f"storm{i}" for i in range(1, clients + 1)])
    t_prov = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = await boot_clients(
        [ClientSpec(workdir / f"client{i}", mac, settings.tftp_root, timeout=180) for i, mac in enumerate(macs)]
    )
    t_boot = time.perf_counter() - t0
    ok = sum(r.ok for r in results)
    print(
        f"  boot storm: {clients} clients, sessions started in {t_prov:.2f} s, all booted in {t_boot:.2f} s "
        f"({ok}/{clients} ok; each {', '.join(f'{r.elapsed:.1f}' for r in results)} s)"
    )
    await sessions.stop_sessions(core, admin, [f"storm{i}" for i in range(1, clients + 1)], force=True)
    await core.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,10,100")
    parser.add_argument("--data-mib", type=int, default=128)
    parser.add_argument("--storm", type=int, default=4)
    parser.add_argument("--drivers", default="reflink,copy")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (tgtd, loop mount)")
    auth.set_bcrypt_rounds(4)
    counts = [int(c) for c in args.counts.split(",")]
    with tempfile.TemporaryDirectory(prefix="ggnet-bench-", dir="/var/tmp") as tmp:
        workdir = Path(tmp)
        daemon = start_private_tgtd(workdir)
        try:
            port, portal = daemon.control_port, daemon.portal_port
            print(
                f"session start/stop on tgt, 2 GiB image with {args.data_mib} MiB of data, "
                f"parallelism {sessions.DEFAULT_PARALLEL}"
            )
            if "reflink" in args.drivers:
                with xfs_mount(workdir) as xfs:
                    image = make_image(xfs / "master.raw", args.data_mib)
                    asyncio.run(
                        run_driver("reflink", xfs / "data", workdir / "reflink.log", image, counts, port, portal)
                    )
            if "copy" in args.drivers:
                image = make_image(workdir / "master.raw", args.data_mib)
                asyncio.run(
                    run_driver("copy", workdir / "copy-data", workdir / "copy.log", image, counts, port, portal)
                )
            if args.storm:
                image = make_image(workdir / "storm.raw", 8)
                asyncio.run(boot_storm(workdir, image, args.storm, port, portal))
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
