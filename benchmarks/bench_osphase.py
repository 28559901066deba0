#!/usr/bin/env python3
"""Time to "root mounted" of an OS-phase boot through ``ggnet serve`` on BIOS, UEFI and Secure Boot,
and the server's own time per boot, against the same boots from hand-made targets (the lab scripts)
in the same run.

    sudo .venv/bin/python benchmarks/bench_osphase.py [--rounds 3] [--lab DIR] [--skip-lab]

Figure: registered machines (tests/e2e/osphase/site.py: a private tgtd, ``ggnet serve``, the
OS-phase disk as their image) boot one at a time through the engine: boot.ipxe -> /boot/<mac> ->
this boot's writeback, target and sanboot script -> the OS logs in again from the iBFT. The time is
from QEMU's start to the first ``OSPHASE-ROOT-MOUNTED`` on the serial console. The server's time:
``prepare_ms`` of each boot in its boot history (the engine's own work: records, clone, target), and
the HTTP answer to ``GET /boot/<mac>`` timed from here (for a machine no client runs).
Anchor: the lab's scripts (shared/lab/osphase: bios/run_osphase.sh, uefi/run_uefi.sh --secboot-probe)
booting the lab's own disk from targets they make by hand, built by the lab's own script from the
same cached Debian packages; their runner times milestones from QEMU's start too. For the server's
time, the lab's provisioning steps themselves (a reflink-or-copy of the disk and the five tgtadm
calls of bios/run_osphase.sh), timed here on a private tgtd.
The machine is shared and loaded: each side runs ``--rounds`` times, alternating which goes first;
medians with the spread [min-max]. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e import debs
from tests.e2e.osphase.client import OsReport
from tests.e2e.osphase.disk import EFI_PACKAGES, ISCSI_PACKAGES, OsPhaseDisk, build_osphase_disk, kernel
from tests.e2e.osphase.site import OsSite, Pc, tgt_env
from tests.e2e.qemu_client import run_client
from tests.e2e.tgtd import TgtDaemon, free_control_port, free_tcp_port, start_private_tgtd

FIRMWARES = ("bios", "uefi", "uefi-secure")
MACHINES = {"bios": "benchbios", "uefi": "benchuefi", "uefi-secure": "benchsecure"}
HTTP_MACHINE = "benchhttp"  # booted by HTTP requests only: the answer's time, without a client
LAB_MILESTONES = {"sanboot": "Registered SAN", "kernel": "Linux version", "os login": "OSPHASE-LOGIN-OK",
                  "root mounted": "OSPHASE-ROOT-MOUNTED"}  # fmt: skip
Samples = dict[str, list[float]]


def find_lab() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        if (parent / "shared" / "lab" / "osphase").is_dir():
            return parent / "shared" / "lab" / "osphase"
    return None


# --- the figure: through ggnet serve -------------------------------------------------------------------


def ggnet_site(work: Path, disk: OsPhaseDisk) -> tuple[OsSite, TgtDaemon]:
    daemon = start_private_tgtd(work)
    site = OsSite(work, tgt_env(work, daemon))
    site.setup(disk)
    site.serve.start()
    site.add(*(Pc(name, mode) for mode, name in MACHINES.items()), Pc(HTTP_MACHINE))
    return site, daemon


async def ggnet_round(site: OsSite, run: int, root: Samples, prepare: Samples, http: list[float]) -> None:
    for firmware, name in MACHINES.items():
        result = await run_client(site.client(name, str(run)))
        if not result.ok or not OsReport.parse(result.com1_text).root_mounted:
            print(f"  {firmware} (ggnet): FAILED ({result.reason}), see {site.root / f'{name}-{run}'}")
            continue
        root.setdefault(firmware, []).append(result.milestones["root mounted"])
        prepare.setdefault(firmware, []).append(float(site.machine(name)["boots"][0]["prepare_ms"]))
        print(f"  {firmware} (ggnet): " + ", ".join(f"{k} {v:.1f} s" for k, v in result.milestones.items())
              + f"; prepare {prepare[firmware][-1]:.0f} ms")  # fmt: skip
    for _ in range(3):
        started = time.perf_counter()
        script = site.serve.boot_script(site.macs[HTTP_MACHINE])
        http.append((time.perf_counter() - started) * 1000)
        assert "sanboot" in script, script
    print(f"  HTTP answer to /boot/<mac>: {', '.join(f'{ms:.0f}' for ms in http[-3:])} ms")


# --- the anchor: the lab's scripts and hand-made targets ------------------------------------------------------


def lab_disk(lab: Path, work: Path) -> tuple[Path, Path]:
    """A copy of the lab, and its disk built by the lab's script with its host paths pointed at the
    unpacked packages (nothing installed)."""
    k = kernel()
    grub_bin, grub_signed, shim = (debs.unpack(p) for p in EFI_PACKAGES)
    copy = work / "lab"
    shutil.copytree(lab, copy)
    script = copy / "bios" / "build_osphase_disk.sh"
    text = script.read_text()
    for path, where in (
        ("/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed", "@SIGNED@"),
        ("/usr/lib/shim/shimx64.efi.signed", "@SHIM@"),
        ("/usr/lib/grub/x86_64-efi", "@GRUBDIR@"),
    ):
        text = text.replace(path, where)
    text = text.replace("grub-mkimage -O", "grub-mkimage -d @GRUBDIR@ -O")
    text = text.replace("@SIGNED@", str(grub_signed / "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"))
    text = text.replace("@SHIM@", str(shim / "usr/lib/shim/shimx64.efi.signed"))
    script.write_text(text.replace("@GRUBDIR@", str(grub_bin / "usr/lib/grub/x86_64-efi")))
    # its package cache: our downloads, and the unpacked kernel and open-iscsi where it looks for them
    cache = work / "lab-cache"
    (cache / "debs").mkdir(parents=True)
    for package in (k.package, *ISCSI_PACKAGES):
        deb = debs.download(package)
        (cache / "debs" / deb.name).symlink_to(deb)
    unpacked = cache / f"x-{k.version}"
    unpacked.mkdir()
    (unpacked / "kroot").symlink_to(k.root)
    for package in ISCSI_PACKAGES:
        shutil.copytree(debs.unpack(package), unpacked / "iscsi", symlinks=True, dirs_exist_ok=True)
    (unpacked / ".done").touch()
    out = work / "lab-disk.img"
    env = {**os.environ, "CACHE": str(cache), "KPKG": k.package, "AUTO_APT": "0"}
    started = time.monotonic()
    subprocess.run(["bash", str(script), str(out), "128", "gpt"], check=True, env=env, capture_output=True, timeout=600)
    print(f"build (lab script, packages cached): {time.monotonic() - started:.1f} s")
    return copy, out


def lab_round(copy: Path, disk: Path, work: Path, root: Samples) -> None:
    runs = {
        "bios": (copy / "bios" / "run_osphase.sh", ["--skip-negative"], "spike1", "good"),
        "uefi": (copy / "uefi" / "run_uefi.sh", ["--secboot-probe"], "spike2", "efi-osphase"),
    }
    for firmware, (script, extra, name, log) in runs.items():
        args = ["--disk", str(disk), "--work", str(work / name), "--port", str(free_tcp_port()),
                "--cp", str(free_control_port()), *extra]  # fmt: skip
        done = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=1200)
        (work / f"{name}.out").write_text(done.stdout + done.stderr)
        logs = [(firmware, log)] + ([("uefi-secure", "sb-shim")] if firmware == "uefi" else [])
        for key, log_name in logs:
            try:
                seen = json.loads((work / name / "logs" / f"{log_name}.json").read_text())["seen"]
            except (OSError, ValueError, KeyError):
                print(f"  {key} (lab): no timings, see {work / f'{name}.out'}")
                continue
            found = {k: seen[v] for k, v in LAB_MILESTONES.items() if v in seen}
            if "root mounted" in found:
                root.setdefault(key, []).append(found["root mounted"])
            print(f"  {key} (lab): " + ", ".join(f"{k} {v:.1f} s" for k, v in found.items()))
        verdict = re.findall(r"SPIKE\d (PASS|FAIL.*)", done.stdout)
        print(f"  lab {script.name}: {verdict[-1] if verdict else 'no verdict'} (rc {done.returncode})")


def handmade_provisioning_ms(daemon: TgtDaemon, disk: Path, work: Path, run: int) -> float:
    """What bios/run_osphase.sh does to serve one client, timed: its disk copy and five tgtadm calls."""
    tid, name = 100 + run, f"hand{run}"
    iqn, initiator, user = f"iqn.2024-01.lan.ggnet:{name}", f"iqn.2024-01.lan.ggnet:client.{name}", f"ggnet-{name}"
    copy = work / f"{name}.img"
    started = time.perf_counter()
    subprocess.run(["cp", "--reflink=auto", str(disk), str(copy)], check=True)
    for args in (
        ("--op", "new", "--mode", "target", "--tid", str(tid), "-T", iqn),
        ("--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", "1", "-b", str(copy), "--bstype", "rdwr"),
        ("--op", "bind", "--mode", "target", "--tid", str(tid), "--initiator-name", initiator),
        ("--op", "new", "--mode", "account", "--user", user, "--password", f"s3cret-for-{name}-0001"),
        ("--op", "bind", "--mode", "account", "--tid", str(tid), "--user", user),
    ):
        daemon.tgtadm("--lld", "iscsi", *args)
    return (time.perf_counter() - started) * 1000


# --- report ---------------------------------------------------------------------------------------------


def stat(values: list[float], unit: str, digits: int = 1) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.{digits}f} {unit} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def ratio(figure: list[float], anchor: list[float]) -> str:
    return f"{statistics.median(figure) / statistics.median(anchor):.2f}" if figure and anchor else "-"


async def bench(args: argparse.Namespace, work: Path) -> None:
    started = time.monotonic()
    disk = build_osphase_disk(work / "system.img")
    print(f"build (this harness, packages cached): {time.monotonic() - started:.1f} s")
    site, daemon = ggnet_site(work / "ggnet", disk)
    hand = start_private_tgtd(work / "handmade")
    lab = None if args.skip_lab or args.lab is None else lab_disk(args.lab, work)
    root: dict[str, Samples] = {"ggnet": {}, "lab": {}}
    prepare: Samples = {}
    http: list[float] = []
    handmade: list[float] = []
    try:
        for run in range(args.rounds):
            sides = ["ggnet", "lab"] if run % 2 == 0 else ["lab", "ggnet"]
            print(f"round {run + 1} of {args.rounds}: {' then '.join(sides)}")
            for side in sides:
                if side == "ggnet":
                    await ggnet_round(site, run, root["ggnet"], prepare, http)
                else:
                    handmade.append(handmade_provisioning_ms(hand, disk.path, work / "handmade", run))
                    if lab is not None:
                        lab_round(*lab, work / f"lab-{run}", root["lab"])
    finally:
        site.serve.stop()
        daemon.stop()
        hand.stop()
    n = args.rounds
    print(f"\ntime to root mounted, from QEMU's start (median [min-max] of {n} rounds, one client at a time)")
    print("  figure = through ggnet serve, anchor = the lab scripts' hand-made targets")
    for firmware in FIRMWARES:
        figure, anchor = root["ggnet"].get(firmware, []), root["lab"].get(firmware, [])
        print(
            f"  {firmware:<12} figure {stat(figure, 's'):<22} anchor {stat(anchor, 's'):<22} ratio {ratio(figure, anchor)}"
        )
    every = [ms for values in prepare.values() for ms in values]
    print("\nthe server's time per boot request (ms)")
    print(f"  figure: prepare_ms in the boot history   {stat(every, 'ms', 0)}")
    print(f"  figure: HTTP answer to GET /boot/<mac>    {stat(http, 'ms', 0)}")
    print(f"  anchor: the lab's provisioning (cp + 5 tgtadm) {stat(handmade, 'ms', 0)}")
    print(f"  ratio prepare_ms / anchor {ratio(every, handmade)}, HTTP / anchor {ratio(http, handmade)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="boots per side and firmware (alternating order)")
    parser.add_argument("--lab", type=Path, default=find_lab(), help="shared/lab/osphase")
    parser.add_argument("--skip-lab", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ggnet-bench-osphase-") as tmp:
        asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
