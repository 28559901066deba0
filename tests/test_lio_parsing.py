"""The LIO backend's host-side parts: reading a configfs tree (a copy of the kernel's layout in a
temporary directory), session text, backstore naming, health, rtslib's exception names, and the one
lock around rtslib. The kernel side runs in a VM: tests/e2e/test_lio_targets.py and test_lio_boot.py."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import rtslib_fb

from core.errors import BackendUnavailable
from core.iscsi import lio
from core.iscsi.base import InitiatorSession, LunIO, LunSpec, TargetSpec
from core.iscsi.diff import target_diff
from core.iscsi.lio import (
    LioBackend,
    assess_health,
    backing_of,
    backstore_name,
    hba_slots,
    parse_acl_info,
    read_target,
    read_targets,
)

TARGET = "iqn.2024-01.lan.ggnet:pc01"
INITIATOR = "iqn.2024-01.lan.ggnet.client:pc01"

# captured from kernel 6.1 (Debian) in the LIO VM while an iPXE client was logged in:
# /sys/kernel/config/target/iscsi/<target>/tpgt_1/acls/<initiator>/info
INFO_LOGGED_IN = (
    "InitiatorName: iqn.2024-01.lan.ggnet.client:pc01\n"
    "InitiatorAlias: \n"
    "LIO Session ID: 1   ISID: 0x40 00 27 23 90 6d  TSIH: 1  SessionType: Normal\n"
    "Session State: TARG_SESS_STATE_LOGGED_IN\n"
    "---------------------[iSCSI Session Values]-----------------------\n"
    "  CmdSN/WR  :  CmdSN/WC  :  ExpCmdSN  :  MaxCmdSN  :     ITT    :     TTT\n"
    " 0x00000040   0x00000040   0x00000007   0x00000046   0x0800ae18   0x00000006\n"
    "----------------------[iSCSI Connections]-------------------------\n"
    "CID: 0  Connection State: TARG_CONN_STATE_LOGGED_IN\n"
    "   Address 10.0.2.2 TCP  StatSN: 0x8c4eb89e\n"
)
INFO_NO_SESSION = "No active iSCSI Session for Initiator Endpoint: iqn.2024-01.lan.ggnet.client:pc01\n"

SPEC = TargetSpec(
    iqn=TARGET,
    luns=(LunSpec(0, Path("/srv/ggnet/writebacks/pc01.raw")), LunSpec(1, Path("/srv/ggnet/games/g1.raw"))),
    initiator_iqn=INITIATOR,
    chap_username="pc01",
    chap_secret="pc01-chap-secret",
    portal_host="0.0.0.0",
    portal_port=3260,
)


def test_a_logged_in_session_from_real_kernel_text() -> None:
    assert parse_acl_info(INITIATOR, INFO_LOGGED_IN) == InitiatorSession(INITIATOR, "10.0.2.2")


def test_no_session_from_real_kernel_text() -> None:
    assert parse_acl_info(INITIATOR, INFO_NO_SESSION) is None
    assert parse_acl_info(INITIATOR, None) is None


@pytest.mark.parametrize("state", ["FREE", "ACTIVE", "FAILED", "IN_CONTINUE"])
def test_a_session_not_logged_in_is_not_listed(state: str) -> None:
    text = INFO_LOGGED_IN.replace("TARG_SESS_STATE_LOGGED_IN", f"TARG_SESS_STATE_{state}")
    assert parse_acl_info(INITIATOR, text) is None


def test_the_address_of_a_logged_in_connection_wins() -> None:
    two = INFO_LOGGED_IN.replace(
        "CID: 0  Connection State: TARG_CONN_STATE_LOGGED_IN\n   Address 10.0.2.2 TCP  StatSN: 0x8c4eb89e\n",
        "CID: 0  Connection State: TARG_CONN_STATE_CLEANUP_WAIT\n   Address 192.0.2.7 TCP  StatSN: 0x1\n"
        "CID: 1  Connection State: TARG_CONN_STATE_LOGGED_IN\n   Address fe80::5054:ff:fe12:3456 TCP  StatSN: 0x2\n",
    )
    assert parse_acl_info(INITIATOR, two) == InitiatorSession(INITIATOR, "fe80::5054:ff:fe12:3456")
    none_live = two.replace("TARG_CONN_STATE_LOGGED_IN", "TARG_CONN_STATE_IN_LOGOUT")
    assert parse_acl_info(INITIATOR, none_live) == InitiatorSession(INITIATOR, "192.0.2.7")
    no_connection = INFO_LOGGED_IN.split("CID: 0")[0]
    assert parse_acl_info(INITIATOR, no_connection) == InitiatorSession(INITIATOR, None)


# --------------------------------------------------------------------------- a configfs tree on disk


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def link(directory: Path, pointing_to: Path, root: Path) -> None:
    """A symlink as configfs makes them: relative, from inside ``directory`` up to the mount point."""
    directory.mkdir(parents=True, exist_ok=True)
    up = len(directory.relative_to(root.parent).parts)
    (directory / "3f2a1b9c0d").symlink_to("../" * up + str(pointing_to.relative_to(root.parent)))


def backstore(root: Path, index: int, name: str, file: str, plugin: str = "fileio") -> Path:
    path = root / "core" / f"{plugin}_{index}" / name
    write(path / "udev_path", f"{file}\n" if plugin == "fileio" else "")
    write(path / "info", f"Status: ACTIVATED  Max Queue Depth: 128  SectorSize: 512  HwMaxSectors: 16384\n"
                         f"        TCM FILEIO ID: 0        File: {file}  Size: 8388608  Mode: O_DSYNC\n")  # fmt: skip
    return path


def kernel_tree(tmp_path: Path) -> Path:
    """/sys/kernel/config/target as the backend leaves it for SPEC, one client logged in."""
    root = tmp_path / "target"
    (root / "iscsi" / "discovery_auth").mkdir(parents=True)
    tpg = root / "iscsi" / TARGET / "tpgt_1"
    write(tpg / "enable", "1\n")
    write(tpg / "attrib" / "authentication", "1\n")
    write(tpg / "attrib" / "generate_node_acls", "0\n")
    (tpg / "np" / "0.0.0.0:3260").mkdir(parents=True)
    acl = tpg / "acls" / INITIATOR
    write(acl / "auth" / "userid", "pc01\n")
    write(acl / "auth" / "password", "pc01-chap-secret\n")
    write(acl / "info", INFO_LOGGED_IN)
    for lun in SPEC.luns:
        store = backstore(root, hba_slots(backstore_name(TARGET, lun.lun))[0], backstore_name(TARGET, lun.lun),
                          str(lun.backing_file))  # fmt: skip
        lun_dir = tpg / "lun" / f"lun_{lun.lun}"
        link(lun_dir, store, root)
        write(lun_dir / "statistics" / "scsi_tgt_port" / "read_mbytes", f"{3 + lun.lun}\n")
        write(lun_dir / "statistics" / "scsi_tgt_port" / "write_mbytes", "1\n")
        link(acl / f"lun_{lun.lun}", lun_dir, root)
    return root


def test_a_target_read_from_configfs(tmp_path: Path) -> None:
    root = kernel_tree(tmp_path)
    observed = read_target(root, TARGET.upper().replace("IQN.", "iqn."))  # any case
    assert observed is not None
    assert observed.iqn == TARGET
    assert observed.luns == {0: "/srv/ggnet/writebacks/pc01.raw", 1: "/srv/ggnet/games/g1.raw"}
    assert (observed.acls, observed.chap_users, observed.chap_secret) == ([INITIATOR], ["pc01"], "pc01-chap-secret")
    assert observed.portals == ["0.0.0.0:3260"] and observed.enabled
    assert observed.sessions == [InitiatorSession(INITIATOR, "10.0.2.2")]
    assert observed.io == {0: LunIO(3 << 20, 1 << 20), 1: LunIO(4 << 20, 1 << 20)}  # the kernel counts MiB
    assert target_diff(observed, SPEC) == []
    assert read_target(root, "iqn.2024-01.lan.ggnet:pc02") is None
    assert set(read_targets(root, None)) == {TARGET}  # discovery_auth is no target
    assert set(read_targets(root, [TARGET.upper().replace("IQN.", "iqn."), "iqn.2024-01.x:none"])) == {TARGET}


def unlink_tree(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            unlink_tree(child)
        else:
            child.unlink()
    path.rmdir()


def other_backstore(root: Path, tpg: Path) -> None:
    lun_dir = tpg / "lun" / "lun_0"
    for entry in lun_dir.iterdir():
        if entry.is_symlink():
            entry.unlink()
    link(lun_dir, backstore(root, 3, "someone", "/srv/other.raw"), root)


def ramdisk_backstore(root: Path, tpg: Path) -> None:
    lun_dir = tpg / "lun" / "lun_0"
    for entry in lun_dir.iterdir():
        if entry.is_symlink():
            entry.unlink()
    link(lun_dir, backstore(root, 4, "rd", "", plugin="rd_mcp"), root)


def second_tpg(root: Path, tpg: Path) -> None:
    (tpg.parent / "tpgt_2" / "np" / "0.0.0.0:3261").mkdir(parents=True)
    (tpg.parent / "tpgt_2" / "acls" / "iqn.2024-01.lan.x:other").mkdir(parents=True)


DRIFT = {
    "portal removed": (lambda root, tpg: (tpg / "np" / "0.0.0.0:3260").rmdir(), ["portal"]),
    "mapped LUN removed": (lambda root, tpg: unlink_tree(tpg / "acls" / INITIATOR / "lun_1"), ["lun"]),
    "TPG LUN added": (lambda root, tpg: link(tpg / "lun" / "lun_5", backstore(root, 9, "x", "/x.raw"), root), []),
    "backing file swapped": (other_backstore, ["backing_file"]),
    "backstore not a file": (ramdisk_backstore, ["backing_file"]),
    "initiator added": (lambda root, tpg: (tpg / "acls" / "iqn.2024-01.lan.x:intruder").mkdir(), ["lun", "acl"]),
    "user renamed": (lambda root, tpg: write(tpg / "acls" / INITIATOR / "auth" / "userid", "pc99\n"), ["chap_user"]),
    "user unset": (lambda root, tpg: write(tpg / "acls" / INITIATOR / "auth" / "userid", "NULL\n"), ["chap_user"]),
    "secret replaced": (lambda root, tpg: write(tpg / "acls" / INITIATOR / "auth" / "password", "x-12345\n"),
                        ["chap_secret"]),
    "disabled": (lambda root, tpg: write(tpg / "enable", "0\n"), ["enabled"]),
    "no authentication": (lambda root, tpg: write(tpg / "attrib" / "authentication", "0\n"), ["enabled"]),
    "demo mode": (lambda root, tpg: write(tpg / "attrib" / "generate_node_acls", "1\n"), ["enabled"]),
    "a second TPG": (second_tpg, ["lun", "acl", "enabled"]),
}  # fmt: skip


@pytest.mark.parametrize("change", list(DRIFT))
def test_each_drift_in_configfs_is_seen(tmp_path: Path, change: str) -> None:
    root = kernel_tree(tmp_path)
    make, expected = DRIFT[change]
    make(root, root / "iscsi" / TARGET / "tpgt_1")
    assert target_diff(read_target(root, TARGET), SPEC) == expected
    # an unmapped TPG LUN is invisible to the initiator ("TPG LUN added" is no drift); apply still removes it


def test_backstore_names_and_slots() -> None:
    assert backstore_name("iqn.2024-01.lan.ggnet:PC01", 0) == backstore_name("iqn.2024-01.lan.ggnet:pc01", 0)
    assert backstore_name(TARGET, 0) != backstore_name(TARGET, 1)
    assert "/" not in backstore_name(TARGET, 0) and " " not in backstore_name(TARGET, 0)
    slots = hba_slots(backstore_name(TARGET, 0))
    assert slots == hba_slots(backstore_name(TARGET, 0))  # found again by name, by any process
    assert len(set(slots)) == lio.HBA_SLOTS and all(1 << 19 <= s < 1 << 20 for s in slots)
    assert lio._ours(backstore_name(TARGET, 1), TARGET) and lio._ours(TARGET, TARGET)  # and the first version's
    assert not lio._ours(backstore_name("iqn.2024-01.lan.ggnet:pc011", 0), TARGET)


def test_the_file_of_a_backstore(tmp_path: Path) -> None:
    root = tmp_path / "target"
    assert backing_of(backstore(root, 1, "a", "/srv/a.raw")) == "/srv/a.raw"
    no_udev = backstore(root, 2, "b", "/srv/b.raw")
    (no_udev / "udev_path").write_text("\n")  # made by someone who did not set udev_path
    assert backing_of(no_udev) == "/srv/b.raw"
    assert backing_of(backstore(root, 3, "c", "/dev/sdb", plugin="iblock")) is None


MOUNTS_WITH_CONFIGFS = (
    "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n"
    "configfs /sys/kernel/config configfs rw,nosuid,nodev,noexec,relatime 0 0\n"
)


def test_health_says_what_is_missing() -> None:
    no_configfs = assess_health("sysfs /sys sysfs rw 0 0\n", True, None)
    assert not no_configfs.ok and "configfs is not mounted" in no_configfs.detail
    no_module = assess_health(MOUNTS_WITH_CONFIGFS, False, None)
    assert not no_module.ok and "target_core_mod" in no_module.detail
    no_rtslib = assess_health(MOUNTS_WITH_CONFIGFS, True, "rtslib-fb cannot be loaded: libudev.so.1 missing")
    assert not no_rtslib.ok and "libudev.so.1" in no_rtslib.detail
    ready = assess_health(MOUNTS_WITH_CONFIGFS, True, None)
    assert ready.ok and "LIO" in ready.detail


def test_both_spellings_of_rtslibs_not_in_configfs_error() -> None:
    # rtslib-fb 2.1 (Debian's python3-rtslib-fb) is not installed here: its module surface, by name
    class RTSLibError(Exception):
        pass

    class RTSLibNotInCFS(RTSLibError):
        pass

    old = SimpleNamespace(RTSLibError=RTSLibError, RTSLibNotInCFS=RTSLibNotInCFS)
    assert lio._rtslib_errors(old) == (RTSLibError, RTSLibNotInCFS)
    assert lio._rtslib_errors(rtslib_fb) == (rtslib_fb.RTSLibError, rtslib_fb.RTSLibNotInCFSError)


def test_rtslib_objects_take_the_index_ggnet_chooses() -> None:
    """The backend opens backstores by index (no walk over every HBA): both rtslib versions take it."""
    import inspect

    assert "index" in inspect.signature(rtslib_fb.FileIOStorageObject.__init__).parameters
    assert "mode" in inspect.signature(rtslib_fb.Target.__init__).parameters


async def test_rtslib_calls_run_one_at_a_time_off_the_event_loop() -> None:
    events: list[tuple[str, str]] = []
    threads: set[int] = set()

    def work(name: str) -> str:
        threads.add(threading.get_ident())
        events.append(("enter", name))
        time.sleep(0.05)
        events.append(("leave", name))
        return name

    # two backend instances: the lock is the process's, not the instance's
    first, second = LioBackend(), LioBackend()
    results = await asyncio.gather(*(b._run(f"job {i}", work, str(i)) for i, b in enumerate([first, second] * 3)))
    assert results == ["0", "1", "2", "3", "4", "5"]
    assert threading.get_ident() not in threads
    for i in range(0, len(events), 2):  # every enter is followed by its own leave
        assert events[i][0] == "enter" and events[i + 1] == ("leave", events[i][1])


async def test_rtslib_errors_become_backend_unavailable() -> None:
    def fail() -> None:
        raise rtslib_fb.RTSLibError("Could not create NetworkPortal in configFS")

    with pytest.raises(BackendUnavailable, match="LIO could not apply target x: Could not create NetworkPortal"):
        await LioBackend()._run("apply target x", fail)

    def configfs_refuses() -> None:
        raise OSError(22, "Invalid argument")

    with pytest.raises(BackendUnavailable, match="LIO could not delete target x: .*Invalid argument"):
        await LioBackend()._run("delete target x", configfs_refuses)


async def test_observe_reads_without_rtslib(tmp_path: Path) -> None:
    backend = LioBackend(root=kernel_tree(tmp_path))
    assert list(await backend.observe()) == [TARGET] and await backend.verify_chap(SPEC) is None
    assert os.path.isdir(tmp_path / "target" / "core")
