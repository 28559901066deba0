#!/usr/bin/env python3
"""Time to "root mounted" of an OS-phase boot on BIOS, UEFI and Secure Boot, against the lab scripts in the same run.

    sudo .venv/bin/python benchmarks/bench_osphase.py [--lab DIR] [--skip-lab] [--lab-first]

Figure: one client at a time boots the OS-phase disk (tests/e2e/osphase) from a target made by
hand on a private tgtd (tests/e2e/osphase/handmade.py; once ``ggnet serve`` answers the boot
requests, boot through it instead and keep this as the hand-made reference). The time is from
QEMU's start to the first ``OSPHASE-ROOT-MOUNTED`` on the serial console.
Anchor: the lab's scripts (shared/lab/osphase: bios/run_osphase.sh, uefi/run_uefi.sh
--secboot-probe) booting the lab's own disk, built by the lab's own script from the same cached
Debian packages (its host paths pointed at the unpacked packages, so nothing is installed). Their
runner times milestones from QEMU's start too.
Also the disk build: this harness's builder against the lab's (packages cached in both).
Run it alone (TCG clients share the two cores with everything else). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e import debs
from tests.e2e.osphase.client import OsReport, os_client
from tests.e2e.osphase.disk import EFI_PACKAGES, ISCSI_PACKAGES, SECURE_BOOT_LOADER, build_osphase_disk, kernel
from tests.e2e.osphase.handmade import make_machine, tftp_root, write_script
from tests.e2e.qemu_client import run_client
from tests.e2e.tgtd import free_control_port, free_tcp_port, start_private_tgtd

FIRMWARES = ("bios", "uefi", "uefi-secure")
LAB_MILESTONES = {"sanboot": "Registered SAN", "kernel": "Linux version", "os login": "OSPHASE-LOGIN-OK",
                  "root mounted": "OSPHASE-ROOT-MOUNTED"}  # fmt: skip


def find_lab() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        if (parent / "shared" / "lab" / "osphase").is_dir():
            return parent / "shared" / "lab" / "osphase"
    return None


async def harness(work: Path) -> dict[str, dict[str, float]]:
    work.mkdir(parents=True)
    started = time.monotonic()
    disk = build_osphase_disk(work / "system.img")
    print(f"build (this harness, packages cached): {time.monotonic() - started:.1f} s")
    daemon = start_private_tgtd(work)
    figures = {}
    try:
        tftp = tftp_root(work / "tftp")
        for i, firmware in enumerate(FIRMWARES):
            machine = await make_machine(daemon, disk, work, f"bench{i}", f"52:54:00:be:00:0{i}")
            write_script(tftp, daemon, machine, SECURE_BOOT_LOADER if firmware == "uefi-secure" else None)
            result = await run_client(os_client(work / firmware, machine.mac, tftp, firmware))  # type: ignore[arg-type]
            if not result.ok or not OsReport.parse(result.com1_text).root_mounted:
                print(f"{firmware}: FAILED ({result.reason}), see {work / firmware}")
                continue
            figures[firmware] = result.milestones
            print(f"{firmware} (harness): " + ", ".join(f"{k} {v:.1f} s" for k, v in result.milestones.items()))
    finally:
        daemon.stop()
    return figures


def lab_disk(lab: Path, work: Path) -> Path:
    """The lab's disk, built by the lab's script with its host paths pointed at the unpacked packages."""
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
    return out


def lab_runs(lab: Path, work: Path) -> dict[str, dict[str, float]]:
    copy = work / "lab"
    disk = lab_disk(lab, work)
    runs = {
        "bios": (copy / "bios" / "run_osphase.sh", ["--skip-negative"], "spike1", "good"),
        "uefi": (copy / "uefi" / "run_uefi.sh", ["--secboot-probe"], "spike2", "efi-osphase"),
    }
    anchors: dict[str, dict[str, float]] = {}
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
                print(f"{key} (lab): no timings, see {work / f'{name}.out'}")
                continue
            anchors[key] = {k: seen[v] for k, v in LAB_MILESTONES.items() if v in seen}
            print(f"{key} (lab): " + ", ".join(f"{k} {v:.1f} s" for k, v in anchors[key].items()))
        verdict = re.findall(r"SPIKE\d (PASS|FAIL.*)", done.stdout)
        print(f"  lab {script.name}: {verdict[-1] if verdict else 'no verdict'} (rc {done.returncode})")
    return anchors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lab", type=Path, default=find_lab(), help="shared/lab/osphase")
    parser.add_argument("--skip-lab", action="store_true")
    parser.add_argument("--lab-first", action="store_true", help="run the lab scripts first (load drifts)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ggnet-bench-osphase-") as tmp:
        work = Path(tmp)
        anchors: dict[str, dict[str, float]] = {}
        run_lab = not args.skip_lab and args.lab is not None
        if run_lab and args.lab_first:
            anchors = lab_runs(args.lab, work)
        figures = asyncio.run(harness(work / "harness"))
        if run_lab and not args.lab_first:
            anchors = lab_runs(args.lab, work)
    print("\ntime to root mounted (from QEMU's start): figure = this harness, anchor = lab scripts")
    for firmware in FIRMWARES:
        figure = figures.get(firmware, {}).get("root mounted")
        anchor = anchors.get(firmware, {}).get("root mounted")
        ratio = f"{figure / anchor:.2f}" if figure and anchor else "-"
        print(f"  {firmware:<12} figure {figure or '-'} s   anchor {anchor or '-'} s   ratio {ratio}")


if __name__ == "__main__":
    main()
