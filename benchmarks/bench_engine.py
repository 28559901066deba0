#!/usr/bin/env python3
"""The boot engine on tgtd with reflink writebacks, against the shell floor measured in the same run.

    sudo .venv/bin/python benchmarks/bench_engine.py [--fleets 10,300] [--rounds 5] [--only boot,pass,start,storm]
    sudo .venv/bin/python benchmarks/bench_engine.py --only pass --profile /tmp/pass.prof   # cProfile of a pass

Each fleet size N gets its own site: a loop-mounted XFS made with ``mkfs.xfs -m reflink=1`` holding
the data directory (SQLite, images, writebacks), a private tgtd, N machines with one image (a
1 GiB sparse raw disk with 32 MiB of data), and ``ggnet serve`` as a separate process. Figures:

- **boot** (the largest fleet, every machine booted once before): a PC's boot request, HTTP
  ``GET /boot/<mac>`` to the iPXE script — a new reflink clone, a new CHAP secret, the target
  changed. *one*: 50 machines one after another, p50 and p95; anchor: the shell floor per boot,
  ``cp --reflink=always`` of the image plus the tgtadm calls a reboot needs (unbind the initiator,
  swap the LUN's file, replace the account, bind both), run by ``sh`` for 50 machines of its own,
  divided by 50. *50 at once*: 50 machines ask together, p50 and p95 of their latencies and the
  time until the last has its answer; anchor: the same shell loop's time for all 50 (a shell
  serves them one after another, so its last machine is ready after all of it). Aim: p95 at 50
  at once ≤ 100 ms, and within 3x of the anchor.
- **pass** (each fleet): a pass with nothing to do (aim ≤ 0.3 s at 300 machines), anchor: one
  ``tgtadm --op show --mode target`` (what any pass must read). Then tgtd restarts empty and one
  pass converges every target again; anchor: the tgtadm calls that create N targets (target, LUN,
  account, account binding, initiator binding) from ``sh``, on an empty tgtd too (aim within 3x).
  Both run in this process (the engine's own ``run_pass``), ``ggnet serve`` stopped.
- **start** (each fleet): ``ggnet session start --all`` with ``ggnet serve`` running (prepare now:
  the CLI records the intent, serve's pass prepares, the CLI waits until every boot is ready),
  after ``session stop --all`` has taken effect; anchor: ``cp --reflink=always`` plus the five
  tgtadm calls of a new target per machine from ``sh``. Per machine; aim within 2x, and flat from
  10 to 300 machines. Also ``session start`` of one machine (the fixed cost: the CLI's start, its
  login, serve noticing the intent within 0.25 s, the CLI's 0.2 s polls) and the cost per machine
  beyond that one. (The CLI's admin was created at bcrypt cost 4: this measures the engine, not
  the password hash.)
- **storm**: 8 stock-iPXE QEMU clients (tests/e2e/qemu_client, prevboot disk) powered on at once
  all boot through ``ggnet serve``: the time until the last writes its sector, against one
  client alone (TCG: ~6 s of iPXE banner and DHCP each, on 2 shared cores).

Every figure is the median over --rounds rounds, with its spread (min-max); ratios compare
figures of the same run. Per machine figures are printed for each fleet with their growth from
the smallest fleet to the largest (flat = ~1). Needs root (tgtd, mount). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import auth
from core.config import Settings
from core.context import Core
from core.log import configure_logging
from tests.e2e.bootdisk import WRITE_OK, make_prev_disk
from tests.e2e.serve import GgnetServe
from tests.e2e.tgtd import TgtDaemon, free_tcp_port, start_private_tgtd

PASSWORD = "bench-admin-pass"
STORM = 8
AT_ONCE = 50


# --------------------------------------------------------------------------- figures


@dataclass
class Figure:
    name: str
    fleet: int
    ours: list[float] = field(default_factory=list)  # seconds, one per round
    anchor: list[float] = field(default_factory=list)
    anchor_name: str = ""
    unit: str = "ms"

    def add(self, ours: float, anchor: float | None = None) -> None:
        self.ours.append(ours)
        if anchor is not None:
            self.anchor.append(anchor)


def spread(values: list[float], scale: float) -> str:
    if not values:
        return "-"
    med = statistics.median(values) * scale
    if len(values) == 1:
        return f"{med:.1f}"
    return f"{med:.1f} ({min(values) * scale:.1f}-{max(values) * scale:.1f})"


def report(figures: list[Figure]) -> None:
    print(f"\n{'figure':<44} {'fleet':>5} {'ggnet: median (min-max)':>24} {'anchor':>24} {'ratio':>7}  anchor is")
    for fig in figures:
        scale = 1e3 if fig.unit == "ms" else 1.0
        ratio = "-"
        if fig.anchor:
            # the ratio of each round's pair (same round, same load), then their median
            pairs = [o / a for o, a in zip(fig.ours, fig.anchor, strict=False) if a > 0]
            ratio = f"{statistics.median(pairs):.2f}x" if pairs else "-"
        print(f"{fig.name + ' (' + fig.unit + ')':<44} {fig.fleet:>5} {spread(fig.ours, scale):>24} "
              f"{spread(fig.anchor, scale):>24} {ratio:>7}  {fig.anchor_name}")  # fmt: skip
    per_machine: dict[str, list[Figure]] = {}
    for fig in figures:
        if "per machine" in fig.name:
            per_machine.setdefault(fig.name, []).append(fig)
    for name, figs in per_machine.items():
        if len(figs) > 1:
            small, large = min(figs, key=lambda f: f.fleet), max(figs, key=lambda f: f.fleet)
            growth = statistics.median(large.ours) / statistics.median(small.ours)
            print(f"growth of '{name}' from {small.fleet} to {large.fleet} machines: {growth:.2f}x (flat = 1)")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


# --------------------------------------------------------------------------- the site


@contextlib.contextmanager
def xfs_mount(root: Path, size_gib: int = 4) -> Iterator[Path]:
    image, mountpoint = root / "xfs.img", root / "xfs"
    mountpoint.mkdir()
    with open(image, "wb") as f:
        f.truncate(size_gib << 30)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True, capture_output=True, timeout=120)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True, capture_output=True, timeout=60)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=60)


def mac(i: int) -> str:
    return f"52:54:00:eb:{i >> 8:02x}:{i & 0xFF:02x}"


class ProfiledServe(GgnetServe):
    """``ggnet serve`` under cProfile (written to ``profile`` when it stops)."""

    def __init__(self, env: dict[str, str], log_path: Path, profile: Path) -> None:
        super().__init__(env, log_path)
        self.profile = profile

    def start(self, wait: bool = True) -> GgnetServe:
        from tests.e2e import serve as serve_module

        code = "import cProfile, sys; from ggnet_tui.cli import main; cProfile.run('main([\"serve\"])', sys.argv[1])"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-c", code, f"{self.profile}.{len(self.stopped)}"],
                                            env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True)  # fmt: skip
        serve_module._live.add(self.process.pid)
        if wait:
            self.wait_healthy()
        return self


class Site:
    """N machines, one image, a private tgtd, the data directory on XFS; ggnet serve on demand."""

    def __init__(
        self, root: Path, fleet: int, image: Path, tftp: Path | None = None, profile: Path | None = None
    ) -> None:
        self.root = root
        self.fleet = fleet
        self.image = image
        self.tgtd: TgtDaemon = start_private_tgtd(root)
        self.data = root / "xfs" / "data"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GGNET_")},
            "GGNET_DATA_DIR": str(self.data),
            "GGNET_TFTP_ROOT": str(tftp or root / "tftp"),
            "GGNET_TARGET_BACKEND": "tgt",
            "GGNET_TGT_CONTROL_PORT": str(self.tgtd.control_port),
            "GGNET_PORTAL": f"127.0.0.1:{self.tgtd.portal_port}",
            "GGNET_HTTP_ADDRESS": f"127.0.0.1:{free_tcp_port()}",
            "GGNET_BOOT_ADDRESS": "10.0.2.2",
            "GGNET_WRITEBACK_DRIVER": "reflink",
            "GGNET_RESERVED_SPACE": "1M",
            "GGNET_WOL_ADDRESS": "127.0.0.1:9",
            "GGNET_SERVER_NAME": "bench",
            "GGNET_USER": "admin",
            "GGNET_PASSWORD": PASSWORD,
        }
        self.settings = Settings(**{k.removeprefix("GGNET_").lower(): v for k, v in self.env.items()
                                    if k.startswith("GGNET_") and k not in ("GGNET_USER", "GGNET_PASSWORD")})  # fmt: skip
        self.serve = (
            GgnetServe(self.env, root / "serve.log")
            if profile is None
            else ProfiledServe(self.env, root / "serve.log", Path(f"{profile}.serve{fleet}"))
        )
        self.core: Core | None = None

    async def setup(self) -> None:
        from core.services import images, machines, users

        configure_logging(self.settings.log_file)
        self.core = Core.open(self.settings)
        await self.core.db.upgrade()
        auth.set_bcrypt_rounds(4)
        await users.create_first_admin(self.core, "admin", PASSWORD)
        actor = await users.login(self.core, "admin", PASSWORD)
        await images.import_image(self.core, actor, self.image, name="desk")
        csv = "name,mac\n" + "".join(f"pc{i:04d},{mac(i)}\n" for i in range(self.fleet))
        await machines.import_csv(self.core, actor, csv)
        await images.assign_images(self.core, actor, [f"pc{i:04d}" for i in range(self.fleet)], "desk")

    async def close(self) -> None:
        self.serve.stop()
        if self.core is not None:
            await self.core.close()
        self.tgtd.stop()

    def ggnet(self, *args: str) -> float:
        from tests.cli import ggnet_executable

        started = time.perf_counter()
        done = subprocess.run([ggnet_executable(), *args], env=self.env, capture_output=True, text=True, timeout=900)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"ggnet {' '.join(args)}: {done.stderr[-2000:]}")
        return elapsed

    def tgtadm(self, args: str) -> str:
        return f"tgtadm -C {self.tgtd.control_port} --lld iscsi {args}"

    def sh(self, lines: list[str]) -> float:
        """Seconds ``sh`` takes to run ``lines`` (a script file: hundreds of tgtadm lines)."""
        script = self.root / "shell.sh"
        script.write_text("\n".join(lines) + "\n")
        started = time.perf_counter()
        subprocess.run(["sh", "-e", str(script)], check=True, stdout=subprocess.DEVNULL, timeout=900)
        return time.perf_counter() - started

    # the shell floor: the same work with cp and tgtadm

    def shell_files(self, i: int, generation: int) -> tuple[str, str]:
        d = self.data / "shell"
        return str(d / f"sh{i}-{generation}.raw"), str(d / f"sh{i}-{generation + 1}.raw")

    def shell_create(self, tids: range, clone: bool) -> list[str]:
        (self.data / "shell").mkdir(exist_ok=True)
        lines = []
        for tid in tids:
            disk, _ = self.shell_files(tid, 0)
            if clone:
                lines.append(f"cp --reflink=always {self.image_file} {disk}")
            lines += [
                self.tgtadm(f"--op new --mode target --tid {tid} -T iqn.2024-01.lan.shell:sh{tid}"),
                self.tgtadm(f"--op new --mode logicalunit --tid {tid} --lun 1 -b {disk}"),
                self.tgtadm(f"--op new --mode account --user sh{tid} --password first-secret-01"),
                self.tgtadm(f"--op bind --mode account --tid {tid} --user sh{tid}"),
                self.tgtadm(f"--op bind --mode target --tid {tid} -I iqn.2024-01.lan.shell.client:sh{tid}"),
            ]
        return lines

    def shell_disks(self, tids: range) -> list[str]:
        """The shell's disks, made beforehand (untimed) for figures without a clone."""
        (self.data / "shell").mkdir(exist_ok=True)
        return [f"cp --reflink=always {self.image_file} {self.shell_files(tid, 0)[0]}" for tid in tids]

    def shell_reboot(self, tids: range, generation: int) -> list[str]:
        lines = []
        for tid in tids:
            _old, new = self.shell_files(tid, generation)
            lines += [
                f"cp --reflink=always {self.image_file} {new}",
                self.tgtadm(f"--op unbind --mode target --tid {tid} -I iqn.2024-01.lan.shell.client:sh{tid}"),
                self.tgtadm(f"--op delete --mode logicalunit --tid {tid} --lun 1"),
                self.tgtadm(f"--op new --mode logicalunit --tid {tid} --lun 1 -b {new}"),
                self.tgtadm(f"--op delete --mode account --user sh{tid}"),
                self.tgtadm(f"--op new --mode account --user sh{tid} --password next-secret-{generation:04d}"),
                self.tgtadm(f"--op bind --mode account --tid {tid} --user sh{tid}"),
                self.tgtadm(f"--op bind --mode target --tid {tid} -I iqn.2024-01.lan.shell.client:sh{tid}"),
            ]
        return lines

    def shell_delete(self, tids: range) -> list[str]:
        lines = []
        for tid in tids:
            lines += [
                self.tgtadm(f"--op delete --mode account --user sh{tid}") + " || true",
                self.tgtadm(f"--op delete --mode target --tid {tid} --force") + " || true",
            ]
        lines.append(f"rm -f {self.data / 'shell'}/*.raw")
        return lines

    @property
    def image_file(self) -> Path:
        return next((self.data / "images").glob("*.raw"))


def make_image(path: Path, size_gib: int = 1, data_mib: int = 32) -> Path:
    """A sparse raw disk with some data spread over it (a clone copies extent maps, not bytes)."""
    with open(path, "wb") as f:
        f.truncate(size_gib << 30)
        chunk = os.urandom(1 << 20)
        step = (size_gib << 30) // data_mib
        for k in range(data_mib):
            f.seek(k * step)
            f.write(chunk)
    return path


# --------------------------------------------------------------------------- HTTP client


async def get(port: int, path: str) -> tuple[float, bytes]:
    """One HTTP/1.1 GET with Connection: close, as iPXE asks; (seconds, body)."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 10.0.2.2\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    elapsed = time.perf_counter() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0] or b"sanboot" not in body:
        raise RuntimeError(f"GET {path}: {answer[:600]!r}")
    return elapsed, body


# --------------------------------------------------------------------------- figures


async def boot_figures(site: Site, rounds: int, figures: list[Figure]) -> None:
    port = int(site.env["GGNET_HTTP_ADDRESS"].rpartition(":")[2])
    n = min(AT_ONCE, site.fleet)
    site.serve.start()
    try:
        for i in range(site.fleet):  # every machine booted once: the requests below are reboots
            await get(port, f"/boot/{mac(i).replace(':', '-')}")
        shell_tids = range(20_000, 20_000 + n)
        site.sh(site.shell_create(shell_tids, clone=True))
        fleet = site.fleet
        one_p50, one_p95 = Figure("boot request, one: p50", fleet), Figure("boot request, one: p95", fleet)
        many_p50 = Figure(f"boot request, {n} at once: p50", fleet)
        many_p95 = Figure(f"boot request, {n} at once: p95", fleet)
        many_all = Figure(f"boot request, {n} at once: until the last", fleet)
        for r in range(rounds):
            await asyncio.sleep(1.5)  # let the pass the previous boots asked for run
            base = (2 * r * n) % max(1, site.fleet - n + 1)
            one = [(await get(port, f"/boot/{mac(base + k).replace(':', '-')}"))[0] for k in range(n)]
            anchor = site.sh(site.shell_reboot(shell_tids, 2 * r)) / n
            one_p50.add(statistics.median(one), anchor)
            one_p95.add(percentile(one, 95), anchor)
            await asyncio.sleep(1.5)
            started = time.perf_counter()
            many = [t for t, _ in await asyncio.gather(*(get(port, f"/boot/{mac(base + k).replace(':', '-')}")
                                                          for k in range(n)))]  # fmt: skip
            wall = time.perf_counter() - started
            anchor_all = site.sh(site.shell_reboot(shell_tids, 2 * r + 1))
            many_p50.add(statistics.median(many), anchor_all)
            many_p95.add(percentile(many, 95), anchor_all)
            many_all.add(wall, anchor_all)
            print(f"  boot round {r}: one p50 {statistics.median(one) * 1e3:.1f} ms, {n} at once p95 "
                  f"{percentile(many, 95) * 1e3:.1f} ms, all {wall * 1e3:.0f} ms; shell {anchor * 1e3:.1f} ms/boot",
                  flush=True)  # fmt: skip
        for fig in (one_p50, one_p95):
            fig.anchor_name = "sh: cp --reflink + 7 tgtadm, per boot"
        for fig in (many_p50, many_p95, many_all):
            fig.anchor_name = f"sh: the same for {n} boots"
        figures += [one_p50, one_p95, many_p50, many_p95, many_all]
        site.sh(site.shell_delete(shell_tids))
    finally:
        site.serve.stop()


async def pass_figures(site: Site, rounds: int, figures: list[Figure], profile: Path | None) -> None:
    from core.engine.engine import Engine

    assert site.core is not None
    engine = Engine(site.core, mode="once")
    if not await engine.lock.acquire(wait=False):
        raise RuntimeError("the engine lock is held")
    try:
        await engine.refresh_backend()
        if not await _all_ready(site):  # every machine booted (prepared now, as `session start --all`)
            from core.services import boots, users

            actor = await users.login(site.core, "admin", PASSWORD)
            await boots.prepare(site.core, actor, [], all_machines=True)
        report = await engine.run_pass(audit=False)
        if report.errors:
            raise RuntimeError(f"first pass: {report.errors[:3]}")
        if not await _all_ready(site):
            raise RuntimeError("not every machine has a ready boot")
        idle = Figure("pass, nothing to do", site.fleet)
        idle.anchor_name = "tgtadm --op show --mode target"
        restart = Figure("pass after tgtd restarted empty", site.fleet)
        restart.anchor_name = "sh: 5 tgtadm per target, every target"
        tids = range(20_000, 20_000 + site.fleet)
        site.sh(site.shell_disks(tids))
        for r in range(rounds):
            await engine.run_pass(audit=False)
            profiler = cProfile.Profile() if profile is not None and r == rounds - 1 else None
            started = time.perf_counter()
            if profiler:
                profiler.enable()
            report = await engine.run_pass(audit=False)
            if profiler:
                profiler.disable()
                profiler.dump_stats(str(profile) + ".idle")
            took = time.perf_counter() - started
            if report.repaired or report.errors:
                raise RuntimeError(f"an idle pass did something: {report.repaired[:3]} {report.errors[:3]}")
            idle.add(took, site.sh([site.tgtadm("--op show --mode target")]))

            site.tgtd.restart_empty()
            anchor = site.sh(site.shell_create(tids, clone=False))
            site.tgtd.restart_empty()
            profiler = cProfile.Profile() if profile is not None and r == rounds - 1 else None
            started = time.perf_counter()
            if profiler:
                profiler.enable()
            report = await engine.run_pass(audit=False)
            if profiler:
                profiler.disable()
                profiler.dump_stats(str(profile) + ".restart")
            took = time.perf_counter() - started
            if report.errors or len(report.repaired) < site.fleet:
                raise RuntimeError(f"restart pass: {len(report.repaired)} repaired, {report.errors[:3]}")
            restart.add(took, anchor)
            print(f"  pass round {r}: idle {idle.ours[-1] * 1e3:.0f} ms, after restart {took * 1e3:.0f} ms "
                  f"(shell {anchor * 1e3:.0f} ms)", flush=True)  # fmt: skip
        figures += [idle, restart]
        per = Figure("pass after restart, per machine", site.fleet)
        per.ours = [t / site.fleet for t in restart.ours]
        per.anchor = [t / site.fleet for t in restart.anchor]
        per.anchor_name = "sh: per target"
        figures.append(per)
    finally:
        await engine.close()


async def _all_ready(site: Site) -> bool:
    from sqlalchemy import func, select

    from core.models import Boot

    assert site.core is not None
    async with site.core.db.session() as session:
        ready = (await session.execute(select(func.count()).select_from(Boot).where(Boot.state == "ready"))).scalar()
    return ready == site.fleet


async def start_figures(site: Site, rounds: int, figures: list[Figure]) -> None:
    start = Figure("session start --all, per machine", site.fleet)
    start.anchor_name = "sh: cp --reflink + 5 tgtadm, per machine"
    one = Figure("session start of one machine", site.fleet)
    one.anchor_name = "sh: the same for one machine"
    marginal = Figure("session start, per machine beyond one", site.fleet)
    marginal.anchor_name = "sh: cp --reflink + 5 tgtadm, per machine"
    site.serve.start()
    try:
        tids = range(20_000, 20_000 + site.fleet)
        for r in range(rounds):
            await stop_all(site)
            took_one = site.ggnet("session", "start", "pc0000")
            await stop_all(site)
            took = site.ggnet("session", "start", "--all")
            anchor_one = site.sh(site.shell_create(tids[:1], clone=True))
            site.sh(site.shell_delete(tids[:1]))
            anchor = site.sh(site.shell_create(tids, clone=True))
            site.sh(site.shell_delete(tids))
            start.add(took / site.fleet, anchor / site.fleet)
            one.add(took_one, anchor_one)
            if site.fleet > 1:
                marginal.add((took - took_one) / (site.fleet - 1), anchor / site.fleet)
            print(f"  start round {r}: {took:.2f} s for {site.fleet}, {took_one:.2f} s for one "
                  f"(shell {anchor:.2f} s, {anchor_one * 1e3:.0f} ms)", flush=True)  # fmt: skip
    finally:
        site.serve.stop()
    figures += [start, one] + ([marginal] if site.fleet > 1 else [])


async def stop_all(site: Site) -> None:
    """``session stop --all``, then until serve's pass has removed every target (the CLI's wait
    returns once the intent is recorded when ggnet serve runs)."""
    try:
        site.ggnet("session", "stop", "--all")
    except RuntimeError as exc:  # the first round of --only start: nothing booted yet
        if "nothing to stop" not in str(exc):
            raise
    for _ in range(600):
        shown = site.tgtd.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "target").stdout
        if "Target " not in shown:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("ggnet serve did not remove the targets within 60 s")


async def storm_figures(root: Path, rounds: int, figures: list[Figure]) -> None:
    from tests.e2e import qemu_client
    from tests.e2e.qemu_client import ClientSpec, boot_clients, run_client

    why = qemu_client.available()
    if why:
        print(f"storm skipped: {why}")
        return
    tftp = root / "tftp"
    with xfs_mount(root, size_gib=1):
        site = Site(root, STORM, make_prev_disk(root / "prev.raw", token="storm"), tftp=tftp)
        try:
            await site.setup()
            site.serve.start()
            fail = ("GGNET-INT13-ERR", "GGNET-SANBOOT-FAILED", "GGNET-CHAIN-FAILED", "GGNET-NOT-BOOTING")

            def spec(i: int, run: str) -> ClientSpec:
                return ClientSpec(
                    root / "clients" / f"{run}-{i}", mac(i), tftp, expect=WRITE_OK, fail=fail, timeout=300
                )

            alone = Figure("boot storm: one client alone, to its write", 1, unit="s")
            storm = Figure(f"boot storm: {STORM} at once, until the last", STORM, unit="s")
            for r in range(rounds):
                result = await run_client(spec(0, f"alone{r}"))
                if not result.ok:
                    raise RuntimeError(f"one client: {result.reason} {result.com2_text[-1500:]}")
                started = time.perf_counter()
                results = await boot_clients([spec(i, f"storm{r}") for i in range(STORM)])
                wall = time.perf_counter() - started
                bad = [x.reason for x in results if not x.ok]
                if bad:
                    raise RuntimeError(f"storm: {bad}")
                alone.add(result.elapsed)
                storm.add(max(x.elapsed for x in results), result.elapsed)
                print(f"  storm round {r}: alone {result.elapsed:.1f} s, {STORM} at once {wall:.1f} s", flush=True)
            storm.anchor_name = "one client alone, same round"
            figures += [alone, storm]
        finally:
            await site.close()


# --------------------------------------------------------------------------- main


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleets", default="10,300")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="boot,pass,start,storm")
    parser.add_argument(
        "--profile", type=Path, default=None, help="cProfile ggnet serve and the last round's passes into FILE.*"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (tgtd, mount)")
    only = set(args.only.split(","))
    fleets = sorted(int(n) for n in args.fleets.split(","))
    figures: list[Figure] = []
    for fleet in fleets:
        wanted = {"pass", "start"} | ({"boot"} if fleet == fleets[-1] else set())
        if not wanted & only:
            continue
        with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp, xfs_mount(Path(tmp)):
            root = Path(tmp)
            site = Site(root, fleet, make_image(root / "image.raw"), profile=args.profile)
            try:
                print(f"fleet {fleet}: setting up", flush=True)
                await site.setup()
                if "boot" in wanted & only:
                    await boot_figures(site, args.rounds, figures)
                if "pass" in only:
                    await pass_figures(site, args.rounds, figures, args.profile)
                if "start" in only:
                    await start_figures(site, args.rounds, figures)
            finally:
                await site.close()
                if (root / "serve.log").exists():  # kept for a look after the run
                    shutil.copy(root / "serve.log", f"/tmp/bench-engine-serve-{fleet}.log")
    if "storm" in only:
        with tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp:
            await storm_figures(Path(tmp), max(1, min(args.rounds, 3)), figures)
    report(figures)


if __name__ == "__main__":
    asyncio.run(main())
