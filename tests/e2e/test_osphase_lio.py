"""The operating-system phase on kernel LIO: ``ggnet serve`` runs in the LIO VM (lio_vm/serve.py) with
its LioBackend, and a BIOS client on the host boots through it: iPXE's login, then its OS's login
from the iBFT, its root file system and game disk from the target the engine made (LIO serves the
system disk as LUN 0, the game disk as LUN 1).

The engine's database and writebacks live in the VM's tmpfs: what the test reads back comes from the
agent beside ggnet (the target as LIO holds it: sessions, LUNs, this boot's secret) and from copies
of the writebacks brought to the shared work directory (what the OS wrote).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import libiscsi
from tests.e2e.lio_vm.serve import LioGgnet
from tests.e2e.osphase.client import KERNEL_START, DiskVisit, OsReport, clean, os_client
from tests.e2e.osphase.disk import OsPhaseDisk, boots_on_disk, build_game_disk
from tests.e2e.osphase.site import mac_of
from tests.e2e.qemu_client import Hook, run_client

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(900),
    pytest.mark.skipif(libiscsi.unavailable() is not None, reason=str(libiscsi.unavailable())),
]

ROOT_WRITTEN = "OSPHASE-ROOT-WRITE-OK"


def copy_out(site: LioGgnet, path: str, dest: Path) -> Path:
    """A copy of a file of the VM (a writeback in its tmpfs) on the shared work directory."""
    code = f"import subprocess\nresult = subprocess.run(['cp', '--sparse=always', {path!r}, {str(dest)!r}]).returncode"
    assert site.vm.call("exec", code=code) == 0
    return dest


async def test_bios_client_runs_its_os_from_kernel_lio_through_ggnet_serve(
    lio_ggnet: LioGgnet, osphase_disk: OsPhaseDisk
) -> None:
    site, work = lio_ggnet, lio_ggnet.vm.workdir
    game = build_game_disk(work / "games.img", "gameslio")
    site.ggnet("init", "--admin", "admin")
    site.ggnet("image", "import", str(osphase_disk.path), "--name", "osdisk")  # the host's file, read over 9p
    site.ggnet("image", "import", str(game), "--name", "games", "--kind", "game")
    mac = mac_of("pclio")
    site.ggnet("machine", "add", "pclio", "--mac", mac, "--boot-mode", "bios")
    machine: Any = site.json("machine", "set", "pclio", "--image", "osdisk", "--game-image", "games")
    initiator, user = machine["initiator_iqn"], machine["chap_username"]
    site.start()

    async def target() -> dict[str, Any]:
        [(_, found)] = (await asyncio.to_thread(site.vm.call, "observe", iqns=None)).items()
        return dict(found)

    async def at_kernel_start() -> list[str]:
        return [s["initiator_iqn"] for s in (await target())["sessions"]]

    async def at_first_write() -> tuple[list[str], tuple[int, str], dict[str, Any]]:
        found = await target()
        second = await libiscsi.login("127.0.0.1", site.portal_port, found["iqn"], 0, initiator, user,
                                      found["chap_secret"])  # fmt: skip
        return [s["initiator_iqn"] for s in (await target())["sessions"]], second, found

    hooks = [Hook(KERNEL_START, at_kernel_start, pause=True), Hook(ROOT_WRITTEN, at_first_write, pause=True)]
    result = await run_client(os_client(work / "pclio", mac, site.tftp_root, "bios", hooks=hooks))
    print("\npclio: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.milestones.items()))
    assert result.ok, f"{result.reason}\n{clean(result.com1_text)[-5000:]}\n{clean(result.com2_text)[-1500:]}"

    report = OsReport.parse(result.com1_text)
    sessions, second, found = result.hooks[ROOT_WRITTEN].result
    # the OS logged in to the target the engine made, with this boot's secret from its iBFT
    assert (report.ibft["initiator"], report.ibft["target"], report.ibft["chap"]) == (initiator, found["iqn"], user)
    assert report.ibft["addr"] == f"10.0.2.2:{site.portal_port}"
    assert report.ibft["secret_sha256"] == hashlib.sha256(found["chap_secret"].encode()).hexdigest()[:16]
    # both LUNs through that one login; root from LUN 0, the game image's content on LUN 1
    assert sorted(report.disks) == [0, 1] and report.root_mounted
    assert report.root == DiskVisit("fresh", 0, None, report.boot_id) and report.boot_id
    assert report.game_content == "gameslio" and report.game == DiskVisit("fresh", 0, None, report.boot_id)
    # Two sessions of one initiator on LIO: iPXE's is still open when the kernel starts (BIOS), and a
    # second login of the machine's initiator is let in beside the OS's; the OS then goes on writing
    assert result.hooks[KERNEL_START].result == [initiator]
    assert sessions and set(sessions) == {initiator}, sessions
    assert second[0] == 0 and "LIO-ORG" in second[1], second
    # what the OS wrote is in the writebacks the engine made, in the VM's data directory
    system, game_wb = (found["luns"][lun] for lun in ("0", "1"))
    assert Path(system).parent == Path(game_wb).parent == Path(site.env["GGNET_DATA_DIR"]) / "writebacks"
    assert boots_on_disk(copy_out(site, system, work / "system-wb.img"), osphase_disk.root_offset) == [report.boot_id]
    assert boots_on_disk(copy_out(site, game_wb, work / "game-wb.img")) == [report.boot_id]
    [boot] = site.json("boot", "history", "pclio")
    assert (boot["state"], boot["image"], boot["game_image"], boot["target_iqn"]) == (
        "ready", "osdisk", "games", found["iqn"])  # fmt: skip
