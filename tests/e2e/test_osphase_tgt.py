"""The operating-system phase against tgtd: the client's OS logs in again from the iBFT and runs from its disk.

A diskless boot has two phases. The firmware's iPXE logs in to the machine's target and reads the
boot loader and kernel through int 13h (BIOS) or EFI BlockIO (UEFI); then the OS reads the iBFT
iPXE published and logs in again with the same values to keep its disk. These tests run the second
phase for real (Debian's kernel and iscsistart, see tests/e2e/osphase/), on BIOS, UEFI and Secure
Boot, with a game disk as the target's second LUN.

The targets are made by hand, the way ggnet makes them (tests/e2e/osphase/handmade.py: TgtBackend
makes the target with the writeback as LUN 1, tgtadm adds the game disk as LUN 2, the per-MAC
script is written by hand). Once the boot engine (``ggnet serve``) exists these tests boot through
it instead: ``make_machine``, ``renew_disks`` and ``write_script`` are the hand-made part.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from core.iscsi.base import TargetSpec
from core.iscsi.tgt import TgtBackend
from tests.e2e import qemu_client
from tests.e2e.osphase.client import (
    KERNEL_START,
    LOGIN_FAILED,
    LOGIN_START,
    SANBOOT_FAILED,
    DiskVisit,
    OsReport,
    clean,
    os_client,
)
from tests.e2e.osphase.disk import SECURE_BOOT_LOADER, OsPhaseDisk, boots_on_disk
from tests.e2e.osphase.handmade import GAME_LUN, Machine, make_machine, renew_disks, tftp_root, write_script
from tests.e2e.qemu_client import BootResult, Hook, boot_clients
from tests.e2e.tgtd import TgtDaemon

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        qemu_client.available("uefi-secure") is not None, reason=str(qemu_client.available("uefi-secure"))
    ),
]

ROOT_WRITTEN = "OSPHASE-ROOT-WRITE-OK"


@pytest.fixture
def tftp(tmp_path: Path) -> Path:
    return tftp_root(tmp_path / "tftp")


def explain(name: str, result: BootResult) -> str:
    return f"{name}: {result.reason} after {result.elapsed:.1f} s\n--- COM1\n{clean(result.com1_text)[-6000:]}\n--- COM2\n{clean(result.com2_text)[-2000:]}"


def timings(name: str, result: BootResult) -> str:
    return f"{name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.milestones.items())


async def sessions_of(daemon: TgtDaemon, machine: Machine) -> list[str]:
    """The initiators logged in to the machine's target now (one entry per session)."""
    targets = await TgtBackend(daemon.control_port).list_targets()
    return [s.initiator_iqn for t in targets if t.iqn == machine.spec.iqn for s in t.sessions]


def session_hooks(daemon: TgtDaemon, machine: Machine) -> list[Hook]:
    """Who is logged in when the kernel starts; and at the OS's first write, who is, and whether one
    more login of the same initiator (libiscsi's iscsi-inq, on the host) is let in beside the OS's."""
    spec = machine.spec

    async def at_kernel_start() -> list[str]:
        return await sessions_of(daemon, machine)

    async def at_first_write() -> tuple[list[str], int, str]:
        sessions = await sessions_of(daemon, machine)
        url = f"iscsi://{spec.chap_username}%{spec.chap_secret}@127.0.0.1:{daemon.portal_port}/{spec.iqn}/1"
        proc = await asyncio.create_subprocess_exec(
            "iscsi-inq", "-i", spec.initiator_iqn, url,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        return sessions, proc.returncode or 0, out.decode(errors="replace")

    return [Hook(KERNEL_START, at_kernel_start), Hook(ROOT_WRITTEN, at_first_write)]


async def test_bios_and_uefi_clients_run_their_os_from_their_own_disks(
    tgtd_daemon: TgtDaemon, osphase_disk: OsPhaseDisk, tftp: Path, tmp_path: Path
) -> None:
    machines = {
        "bios": await make_machine(tgtd_daemon, osphase_disk, tmp_path, "pcbios", "52:54:00:0e:00:01", "gamesbios"),
        "uefi": await make_machine(tgtd_daemon, osphase_disk, tmp_path, "pcuefi", "52:54:00:0e:00:02", "gamesuefi"),
    }
    for machine in machines.values():
        write_script(tftp, tgtd_daemon, machine)

    first = dict(zip(machines, await boot_clients([
        os_client(tmp_path / f"{firmware}-1", m.mac, tftp, firmware, hooks=session_hooks(tgtd_daemon, m))  # type: ignore[arg-type]
        for firmware, m in machines.items()
    ]), strict=True))  # fmt: skip

    boot_ids = {}
    for firmware, machine in machines.items():
        result = first[firmware]
        print(timings(f"{firmware} boot 1", result))
        assert result.ok, explain(firmware, result)
        report = OsReport.parse(result.com1_text)
        # the OS logged in with what iPXE published: this machine's initiator, target and CHAP user
        assert (report.ibft["initiator"], report.ibft["target"], report.ibft["chap"]) == (
            machine.spec.initiator_iqn, machine.spec.iqn, machine.spec.chap_username)  # fmt: skip
        assert report.ibft["addr"] == f"10.0.2.2:{tgtd_daemon.portal_port}"
        # one login, both LUNs: the system disk (root mounted from it) and the game disk
        assert sorted(report.disks) == [1, GAME_LUN] and report.root_mounted
        assert report.root == DiskVisit("fresh", 0, None, report.boot_id) and report.boot_id
        assert boots_on_disk(machine.spec.luns[0].backing_file, osphase_disk.root_offset) == [report.boot_id]
        assert report.game_content == f"games{firmware}"
        assert report.game == DiskVisit("fresh", 0, None, report.boot_id)
        assert machine.game is not None and boots_on_disk(machine.game) == [report.boot_id]
        # Two sessions of one initiator: the target lets a second login of the machine's initiator in
        # beside the OS's (the OS then still writes its game disk and finishes). iPXE's own session
        # is such a second one while it lasts: iPXE never logs out; on BIOS it is still there when
        # the kernel starts and stays until the target's TCP retransmits to the OS, whose network
        # stack resets it (sometimes before, mostly after the OS's login); iPXE's EFI build closes
        # its connection before the kernel starts.
        sessions, inq_status, inq_out = result.hooks[ROOT_WRITTEN].result
        assert sessions and set(sessions) == {machine.spec.initiator_iqn}, sessions
        assert inq_status == 0 and "IET" in inq_out, inq_out
        print(f"{firmware}: {len(sessions)} session(s) of {machine.spec.initiator_iqn} at the OS's first write")
        if firmware == "bios":
            assert result.hooks[KERNEL_START].result == [machine.spec.initiator_iqn]  # iPXE's, open
        boot_ids[firmware] = report.boot_id
    assert "SYSLINUX" in first["bios"].com2_text  # the boot loader came from the iSCSI disk
    assert "GGNET-EFI-GRUB-START" in first["uefi"].com1_text and not OsReport.parse(first["uefi"].com1_text).secure_boot

    # Boot both again. The BIOS machine keeps its disks (the same writebacks); the UEFI machine gets
    # fresh copies of the images, as a `fresh` machine does at every boot.
    machines["uefi"] = uefi = await renew_disks(tgtd_daemon, osphase_disk, machines["uefi"], boot=2)
    second = dict(zip(machines, await boot_clients([
        os_client(tmp_path / f"{firmware}-2", m.mac, tftp, firmware) for firmware, m in machines.items()  # type: ignore[arg-type]
    ]), strict=True))  # fmt: skip
    for firmware, result in second.items():
        print(timings(f"{firmware} boot 2", result))
        assert result.ok, explain(firmware, result)
    kept, fresh = OsReport.parse(second["bios"].com1_text), OsReport.parse(second["uefi"].com1_text)
    assert kept.root == DiskVisit("kept", 1, boot_ids["bios"], kept.boot_id)
    assert kept.game == DiskVisit("kept", 1, boot_ids["bios"], kept.boot_id)
    assert boots_on_disk(machines["bios"].spec.luns[0].backing_file, osphase_disk.root_offset) == [
        boot_ids["bios"],
        kept.boot_id,
    ]
    assert fresh.root == DiskVisit("fresh", 0, None, fresh.boot_id)
    assert fresh.game == DiskVisit("fresh", 0, None, fresh.boot_id)
    assert boots_on_disk(uefi.spec.backing_file, osphase_disk.root_offset) == [fresh.boot_id]
    assert uefi.game is not None and boots_on_disk(uefi.game) == [fresh.boot_id]
    assert machines["bios"].game is not None
    assert boots_on_disk(machines["bios"].game) == [boot_ids["bios"], kept.boot_id]


async def test_secure_boot_refuses_the_unsigned_loader_and_boots_the_signed_chain(
    tgtd_daemon: TgtDaemon, osphase_disk: OsPhaseDisk, tftp: Path, tmp_path: Path
) -> None:
    unsigned = await make_machine(tgtd_daemon, osphase_disk, tmp_path, "pcunsigned", "52:54:00:0e:00:03")
    signed = await make_machine(tgtd_daemon, osphase_disk, tmp_path, "pcsigned", "52:54:00:0e:00:04", "gamessb")
    write_script(tftp, tgtd_daemon, unsigned)  # the disk's default loader, \EFI\BOOT\BOOTX64.EFI: unsigned GRUB
    write_script(tftp, tgtd_daemon, signed, loader=SECURE_BOOT_LOADER)  # Debian's signed shim -> GRUB -> kernel

    refused, booted = await boot_clients([
        os_client(tmp_path / "unsigned", unsigned.mac, tftp, "uefi-secure", expect=SANBOOT_FAILED),
        os_client(tmp_path / "signed", signed.mac, tftp, "uefi-secure"),
    ])  # fmt: skip

    print(timings("uefi-secure unsigned", refused))
    assert refused.ok, explain("unsigned", refused)
    text = clean(refused.com1_text)
    # iPXE opened the disk, OVMF refused to start the unsigned loader (the same disk boots without Secure Boot)
    assert "Registered SAN device 0x80" in text and "Boot from SAN device 0x80 failed" in text, text[-3000:]
    assert "GGNET-EFI-GRUB-START" not in text and KERNEL_START not in text
    assert boots_on_disk(unsigned.spec.backing_file, osphase_disk.root_offset) == []

    print(timings("uefi-secure signed", booted))
    assert booted.ok, explain("signed", booted)
    report = OsReport.parse(booted.com1_text)
    assert report.secure_boot and "Kernel is locked down from EFI Secure Boot" in booted.com1_text
    assert report.root == DiskVisit("fresh", 0, None, report.boot_id) and report.boot_id
    assert boots_on_disk(signed.spec.backing_file, osphase_disk.root_offset) == [report.boot_id]
    assert report.game_content == "gamessb" and signed.game is not None
    assert boots_on_disk(signed.game) == [report.boot_id]


async def test_os_phase_login_is_refused_when_the_target_changes_after_ipxe_logged_in(
    tgtd_daemon: TgtDaemon, osphase_disk: OsPhaseDisk, tftp: Path, tmp_path: Path
) -> None:
    """The iBFT holds what iPXE logged in with. If the target's CHAP secret or ACL changes between the
    two phases (a new per-boot secret, a machine taken offline), the OS's login must be refused."""
    backend = TgtBackend(tgtd_daemon.control_port)
    rotated = await make_machine(tgtd_daemon, osphase_disk, tmp_path, "pcrotated", "52:54:00:0e:00:05")
    moved = await make_machine(tgtd_daemon, osphase_disk, tmp_path, "pcmoved", "52:54:00:0e:00:06")
    for machine in (rotated, moved):
        write_script(tftp, tgtd_daemon, machine)
    changes = {  # applied the moment the kernel starts: iPXE's login is over, the OS's not begun
        "secret": dataclasses.replace(rotated.spec, chap_secret="pcrotatednewsecret02"),
        "acl": dataclasses.replace(moved.spec, initiator_iqn="iqn.2024-01.lan.ggnet.client:someoneelse"),
    }

    def change(spec: TargetSpec) -> Hook:
        async def apply() -> None:
            await backend.create_target(spec)  # what ggnet does to change a target: the same call

        return Hook(KERNEL_START, apply)

    results = dict(zip(changes, await boot_clients([
        os_client(tmp_path / name, machine.mac, tftp, "bios", expect=LOGIN_FAILED, hooks=[change(changes[name])])
        for name, machine in (("secret", rotated), ("acl", moved))
    ]), strict=True))  # fmt: skip

    for name, machine in (("secret", rotated), ("acl", moved)):
        result = results[name]
        print(timings(f"refused ({name} changed)", result))
        assert result.ok, explain(name, result)
        assert "Registered SAN device 0x80" in result.com2_text  # iPXE's own login had succeeded
        # the target was changed before the OS started its login, and that login was refused
        assert LOGIN_START not in result.hooks[KERNEL_START].text
        report = OsReport.parse(result.com1_text)
        assert "LOGIN-START" in report.lines and not report.root_mounted
        assert boots_on_disk(machine.spec.luns[0].backing_file, osphase_disk.root_offset) == []
    # why, in tgtd's and iscsistart's words: the old secret fails CHAP; tgtd hides the target from an
    # initiator its ACL no longer names
    assert f"authentication of {rotated.spec.initiator_iqn} failed" in tgtd_daemon.log_path.read_text(errors="replace")
    assert "login rejected: initiator error - target not found" in results["acl"].com1_text
