"""The operating-system phase through ``ggnet serve`` on tgtd: the client's OS logs in again from the
iBFT and runs from the disk the engine made for this boot, on BIOS, UEFI and Secure Boot.

A diskless boot has two phases. The firmware's iPXE logs in to the machine's target and reads the
boot loader and kernel through int 13h (BIOS) or EFI BlockIO (UEFI); then the OS reads the iBFT
iPXE published and logs in again with the same values to keep its disk. Here registered machines
boot a real Linux (Debian's kernel and iscsistart, see tests/e2e/osphase/) through the engine:
``boot.ipxe`` (written by ggnet serve) chains ``/boot/<mac>``, whose answer is this boot's sanboot
script with this boot's CHAP secret; the game image is the target's second LUN. Nothing is made by
hand: the CLI records intent, the engine makes writebacks and targets.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import libiscsi, qemu_client
from tests.e2e.osphase.client import (
    KERNEL_START,
    LOGIN_FAILED,
    LOGIN_START,
    SANBOOT_FAILED,
    DiskVisit,
    OsReport,
    clean,
)
from tests.e2e.osphase.disk import OsPhaseDisk, boots_on_disk, build_game_disk
from tests.e2e.osphase.site import OsSite, Pc, tgt_env
from tests.e2e.qemu_client import BootResult, Hook, boot_clients
from tests.e2e.tgtd import start_private_tgtd
from tests.e2e.tgtd import unavailable as tgtd_unavailable

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        qemu_client.available("uefi-secure") is not None, reason=str(qemu_client.available("uefi-secure"))
    ),
    pytest.mark.skipif(libiscsi.unavailable() is not None, reason=str(libiscsi.unavailable())),
]

ROOT_WRITTEN = "OSPHASE-ROOT-WRITE-OK"
PORTAL = "127.0.0.1"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, osphase_disk: OsPhaseDisk) -> Iterator[OsSite]:
    """One boot server for the module (its tests register machines of their own): a private tgtd,
    the database with the OS-phase disk as system image ``osdisk`` and game image ``games`` (v1),
    and ``ggnet serve``."""
    why = tgtd_unavailable()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("osphase-site")
    daemon = start_private_tgtd(root)
    served = OsSite(root, tgt_env(root, daemon))
    try:
        served.setup(osphase_disk, games={"games": build_game_disk(root / "games-v1.img", "gamesv1")})
        served.serve.start()
        yield served
    finally:
        served.serve.stop()
        daemon.stop()


def explain(name: str, result: BootResult) -> str:
    return (
        f"{name}: {result.reason} after {result.elapsed:.1f} s\n--- COM1\n{clean(result.com1_text)[-6000:]}\n"
        f"--- COM2\n{clean(result.com2_text)[-2000:]}"
    )


def timings(name: str, result: BootResult) -> str:
    return f"{name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.milestones.items())


def sha16(secret: str) -> str:
    """What the guest prints of the iBFT's CHAP secret (the start of its sha256)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


async def boot(clients: dict[str, Any]) -> dict[str, BootResult]:
    """Boot the clients at once (a boot storm); their results by name, their milestones printed."""
    results = await boot_clients(list(clients.values()))
    out = dict(zip(clients, results, strict=True))
    for name, result in out.items():
        print(timings(name, result))
    return out


@dataclass(frozen=True)
class Seen:
    """What the target showed while the client's OS ran (its guest paused meanwhile)."""

    sessions: list[str]  # initiators logged in to the machine's target, one entry per session
    second_login: tuple[int, str]  # one more login of the machine's initiator with this boot's secret
    previous_secret_login: tuple[int, str] | None  # the same with the previous boot's secret


async def sessions_of(site: OsSite, name: str) -> list[str]:
    code, out, err = await site.aggnet("target", "list", "--json")
    assert code == 0, err
    return [i for t in json.loads(out) if t["machine"] == name for i in t["initiators"]]


def watch(site: OsSite, name: str, previous_secret: str | None = None, at_kernel: bool = True) -> list[Hook]:
    """Who is logged in when the kernel starts (iPXE's session: BIOS keeps it open); at the OS's first
    write, who is, and whether the target lets one more login of the machine's initiator in beside
    the OS's with this boot's secret, and with the previous boot's."""

    async def at_kernel_start() -> list[str]:
        return await sessions_of(site, name)

    async def at_first_write() -> Seen:
        code, out, err = await site.aggnet("machine", "show", name, "--json")
        assert code == 0, err
        machine = json.loads(out)
        iqn = machine["boots"][0]["target_iqn"]
        initiator, user = machine["initiator_iqn"], machine["chap_username"]
        now = await libiscsi.login(
            PORTAL, site.portal_port, iqn, site.first_lun, initiator, user, machine["chap_secret"]
        )
        old = None
        if previous_secret is not None:
            old = await libiscsi.login(PORTAL, site.portal_port, iqn, site.first_lun, initiator, user, previous_secret)
        return Seen(await sessions_of(site, name), now, old)

    hooks = [Hook(ROOT_WRITTEN, at_first_write, pause=True)]
    return [Hook(KERNEL_START, at_kernel_start, pause=True), *hooks] if at_kernel else hooks


def wait_gone(paths: list[Path], timeout: float = 60) -> list[Path]:
    """The files still there once they are gone or ``timeout`` passed (the engine removes them in a pass)."""
    deadline = time.monotonic() + timeout
    while any(p.exists() for p in paths) and time.monotonic() < deadline:
        time.sleep(0.5)
    return [p for p in paths if p.exists()]


async def test_bios_uefi_and_secure_boot_clients_run_their_os_from_the_disks_ggnet_made(
    site: OsSite, osphase_disk: OsPhaseDisk, tmp_path: Path
) -> None:
    site.add(
        Pc("pcbios", "bios", game="games"),  # fresh: new disks at every boot
        Pc("pcuefi", "uefi", keep=True, game="games"),  # keep: the same disks across boots
        Pc("pcsecure", "uefi-secure"),  # its image names Debian's signed shim as its loader
    )

    first = await boot({
        "pcbios": site.client("pcbios", "1", hooks=watch(site, "pcbios")),
        "pcuefi": site.client("pcuefi", "1", hooks=watch(site, "pcuefi", at_kernel=False)),
        "pcsecure": site.client("pcsecure", "1"),
    })  # fmt: skip

    shown, luns, boot_ids = {}, site.luns(), {}
    for name, result in first.items():
        assert result.ok, explain(name, result)
        report = OsReport.parse(result.com1_text)
        machine = shown[name] = site.machine(name)
        current = machine["boots"][0]
        # the OS logged in with what iPXE published: this machine's initiator, target, CHAP user and
        # this boot's secret, at the address ggnet serve wrote into the script
        assert (report.ibft["initiator"], report.ibft["target"], report.ibft["chap"]) == (
            machine["initiator_iqn"], current["target_iqn"], machine["chap_username"])  # fmt: skip
        assert report.ibft["addr"] == f"10.0.2.2:{site.portal_port}"
        assert report.ibft["secret_sha256"] == sha16(machine["chap_secret"])
        assert report.root == DiskVisit("fresh", 0, None, report.boot_id) and report.boot_id
        # what the OS wrote is in the writeback the engine made for this boot, under the data directory
        system = luns[name][site.first_lun]
        assert system.parent == Path(site.env["GGNET_DATA_DIR"]) / "writebacks"
        assert boots_on_disk(system, osphase_disk.root_offset) == [report.boot_id]
        assert not boots_on_disk(osphase_disk.path, osphase_disk.root_offset)  # the image itself is untouched
        assert current["state"] == "ready" and current["image"] == "osdisk" and current["image_version"] == 1
        boot_ids[name] = report.boot_id
    for name in ("pcbios", "pcuefi"):
        report = OsReport.parse(first[name].com1_text)
        # one login, both LUNs: the system disk (root mounted from it) and the game image's writeback
        assert sorted(report.disks) == [site.first_lun, site.first_lun + 1] and report.root_mounted
        assert report.game_content == "gamesv1" and report.game == DiskVisit("fresh", 0, None, report.boot_id)
        assert boots_on_disk(luns[name][site.first_lun + 1]) == [report.boot_id]
        assert (shown[name]["boots"][0]["game_image"], shown[name]["boots"][0]["game_version"]) == ("games", 1)
        # Two sessions of one initiator: a second login of the machine's initiator is let in beside the
        # OS's (the OS then still writes its game disk and finishes). iPXE's own session is such a
        # second one while it lasts: iPXE never logs out; on BIOS it is still there when the kernel
        # starts; iPXE's EFI build closes its connection before.
        seen = first[name].hooks[ROOT_WRITTEN].result
        initiator = shown[name]["initiator_iqn"]
        assert seen.sessions and set(seen.sessions) == {initiator}, seen
        assert seen.second_login[0] == 0 and "IET" in seen.second_login[1], seen.second_login
        print(f"{name}: {len(seen.sessions)} session(s) of {initiator} at the OS's first write")
    assert first["pcbios"].hooks[KERNEL_START].result == [shown["pcbios"]["initiator_iqn"]]  # iPXE's, open
    assert "SYSLINUX" in first["pcbios"].com2_text  # the boot loader came from the iSCSI disk
    uefi = OsReport.parse(first["pcuefi"].com1_text)
    assert "GGNET-EFI-GRUB-START" in first["pcuefi"].com1_text and not uefi.secure_boot
    secure = OsReport.parse(first["pcsecure"].com1_text)  # Debian's signed shim -> GRUB -> kernel
    assert secure.secure_boot and "Kernel is locked down from EFI Secure Boot" in first["pcsecure"].com1_text
    assert secure.lines.get("GAME-NONE") is not None and sorted(secure.disks) == [site.first_lun]

    # A new game version becomes active; the image's Secure Boot loader is unset (its disk's default
    # loader, \EFI\BOOT\BOOTX64.EFI, is an unsigned GRUB). Boot all three again.
    site.ggnet(
        "image", "import", str(build_game_disk(tmp_path / "games-v2.img", "gamesv2")), "--new-version-of", "games"
    )
    site.ggnet("image", "set", "osdisk", "--no-efi-loader")
    old_secret = shown["pcbios"]["chap_secret"]
    second = await boot({
        "pcbios": site.client("pcbios", "2", hooks=watch(site, "pcbios", previous_secret=old_secret)),
        "pcuefi": site.client("pcuefi", "2"),
        "pcsecure": site.client("pcsecure", "2", expect=SANBOOT_FAILED),
    })  # fmt: skip
    for name, result in second.items():
        assert result.ok, explain(name, result)

    # the fresh machine: new disks from the images (the new game version), a new secret in its iBFT;
    # during this boot its secret works, the previous boot's no longer does
    fresh = OsReport.parse(second["pcbios"].com1_text)
    machine = site.machine("pcbios")
    assert machine["chap_secret"] != old_secret
    assert fresh.ibft["secret_sha256"] == sha16(machine["chap_secret"]) != sha16(old_secret)
    assert fresh.root == DiskVisit("fresh", 0, None, fresh.boot_id) and fresh.boot_id != boot_ids["pcbios"]
    assert fresh.game_content == "gamesv2" and fresh.game == DiskVisit("fresh", 0, None, fresh.boot_id)
    assert (machine["boots"][0]["game_version"], machine["boots"][1]["state"]) == (2, "ended")
    seen = second["pcbios"].hooks[ROOT_WRITTEN].result
    assert seen.second_login[0] == 0, seen.second_login
    assert seen.previous_secret_login is not None and seen.previous_secret_login[0] != 0, seen.previous_secret_login
    now = site.luns()
    renewed = now["pcbios"]
    assert set(renewed.values()).isdisjoint(luns["pcbios"].values())
    assert boots_on_disk(renewed[site.first_lun], osphase_disk.root_offset) == [fresh.boot_id]
    assert boots_on_disk(renewed[site.first_lun + 1]) == [fresh.boot_id]
    assert wait_gone(list(luns["pcbios"].values())) == []  # the previous boot's writebacks are removed

    # the keep machine: the same disks, with what its first boot wrote (the game disk too, although
    # a new game version is active: a kept disk is kept)
    kept = OsReport.parse(second["pcuefi"].com1_text)
    assert kept.root == DiskVisit("kept", 1, boot_ids["pcuefi"], kept.boot_id)
    assert kept.game == DiskVisit("kept", 1, boot_ids["pcuefi"], kept.boot_id) and kept.game_content == "gamesv1"
    assert now["pcuefi"] == luns["pcuefi"]
    assert boots_on_disk(luns["pcuefi"][site.first_lun], osphase_disk.root_offset) == [boot_ids["pcuefi"], kept.boot_id]

    # Secure Boot without a signed loader: iPXE opened the disk, the firmware refused the unsigned one
    text = clean(second["pcsecure"].com1_text)
    assert "Registered SAN device 0x80" in text and "Boot from SAN device 0x80 failed" in text, text[-3000:]
    assert "GGNET-EFI-GRUB-START" not in text and KERNEL_START not in text
    assert boots_on_disk(now["pcsecure"][site.first_lun], osphase_disk.root_offset) == []


def credentials(machine: dict[str, Any]) -> tuple[str, str, str, str]:
    """(target IQN, initiator IQN, CHAP user, this boot's secret) of a machine's current boot."""
    return machine["boots"][0]["target_iqn"], machine["initiator_iqn"], machine["chap_username"], machine["chap_secret"]


async def test_a_machine_taken_offline_or_disabled_while_it_runs_is_refused_its_os_login(site: OsSite) -> None:
    """The moment its kernel starts (iPXE's login is over, the OS's not begun; the guest is paused
    meanwhile), one machine is taken offline (``session stop --force``) and one disabled. The engine
    removes their targets: the OS's login from the iBFT is refused, and what the iBFT holds opens
    nothing else on the server — not the neighbour's target, not a discovery."""
    site.add(Pc("pcoffline"), Pc("pcdisabled"), Pc("pcneighbour"))
    site.ggnet("session", "start", "pcneighbour")  # prepared, its target ready; no client needed
    neighbour = credentials(site.machine("pcneighbour"))

    def act(name: str, *command: str) -> Hook:
        async def action() -> dict[str, Any]:
            code, out, err = await site.aggnet("machine", "show", name, "--json")
            assert code == 0, err
            iqn, initiator, user, secret = credentials(json.loads(out))
            code, out, err = await site.aggnet(*command)
            assert code == 0, err
            deadline = time.monotonic() + 60
            while iqn in [t["iqn"] for t in json.loads((await site.aggnet("target", "list", "--json"))[1])]:
                assert time.monotonic() < deadline, f"the target of {name} is still there"
                await asyncio.sleep(0.5)
            port, lun = site.portal_port, site.first_lun
            return {
                "own": await libiscsi.login(PORTAL, port, iqn, lun, initiator, user, secret),
                "neighbour": await libiscsi.login(PORTAL, port, neighbour[0], lun, initiator, user, secret),
                "discovered": await libiscsi.discover(PORTAL, port, initiator, user, secret),
            }

        return Hook(KERNEL_START, action, pause=True)

    results = await boot({
        "pcoffline": site.client("pcoffline", "1", expect=LOGIN_FAILED,
                                 hooks=[act("pcoffline", "session", "stop", "--force", "pcoffline")]),
        "pcdisabled": site.client("pcdisabled", "1", expect=LOGIN_FAILED,
                                  hooks=[act("pcdisabled", "machine", "set", "pcdisabled", "--disable")]),
    })  # fmt: skip

    for name, result in results.items():
        assert result.ok, explain(name, result)
        assert "Registered SAN device 0x80" in result.com2_text  # iPXE's own login had succeeded
        hook = result.hooks[KERNEL_START]
        assert LOGIN_START not in hook.text  # the target was gone before the OS began its login ...
        report = OsReport.parse(result.com1_text)
        assert "LOGIN-START" in report.lines and not report.root_mounted  # ... and that login was refused
        assert "login rejected: initiator error - target not found" in result.com1_text
        # with everything its iBFT held, the machine reaches nothing: its own target is gone, the
        # neighbour's refuses it, a discovery shows it no target
        assert hook.result["own"][0] != 0 and hook.result["neighbour"][0] != 0, hook.result
        assert hook.result["discovered"] == [], hook.result
        history = site.machine(name)["boots"]
        assert history[0]["state"] == "ended" and history[0]["end_reason"] == (
            "offline" if name == "pcoffline" else "disabled"
        )
    # the neighbour was never disturbed: its target is there and its own credentials open it
    served = {t["machine"] for t in site.json("target", "list")}
    assert "pcneighbour" in served and not served & {"pcoffline", "pcdisabled"}
    iqn, initiator, user, secret = neighbour
    assert (await libiscsi.login(PORTAL, site.portal_port, iqn, site.first_lun, initiator, user, secret))[0] == 0
    assert await libiscsi.discover(PORTAL, site.portal_port, initiator, user, secret) == [iqn]
    # the disabled machine's next boot request is refused with a sentence
    assert "pcdisabled may not boot" in site.serve.boot_script(site.macs["pcdisabled"])
