"""The LIO backend's pure parts: session data, spec comparison, health, rtslib's exception names,
and the one lock around rtslib. (The kernel side runs in tests/e2e/test_lio_boot.py, in a VM.)"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import rtslib_fb
from rtslib_fb.target import NodeACL

from core.errors import BackendUnavailable
from core.iscsi import lio
from core.iscsi.base import InitiatorSession, TargetSpec
from core.iscsi.lio import (
    LioBackend,
    ObservedAcl,
    ObservedTarget,
    assess_health,
    backstore_name,
    differences,
    session_from_rtslib,
)

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


def rtslib_session(tmp_path: Path, info: str) -> dict | None:
    """What rtslib's own parser (``NodeACL.session``) makes of an ACL's ``info`` file."""
    (tmp_path / "info").write_text(info)
    return NodeACL._get_session(SimpleNamespace(path=str(tmp_path)))


def test_a_logged_in_session_from_real_kernel_text(tmp_path: Path) -> None:
    data = rtslib_session(tmp_path, INFO_LOGGED_IN)
    assert session_from_rtslib(INITIATOR, data) == InitiatorSession(INITIATOR, "10.0.2.2")


def test_no_session_from_real_kernel_text(tmp_path: Path) -> None:
    assert session_from_rtslib(INITIATOR, rtslib_session(tmp_path, INFO_NO_SESSION)) is None


@pytest.mark.parametrize("state", ["FREE", "ACTIVE", "FAILED", "IN_CONTINUE"])
def test_a_session_not_logged_in_is_not_listed(tmp_path: Path, state: str) -> None:
    data = rtslib_session(tmp_path, INFO_LOGGED_IN.replace("TARG_SESS_STATE_LOGGED_IN", f"TARG_SESS_STATE_{state}"))
    assert data is not None and data["state"] == state
    assert session_from_rtslib(INITIATOR, data) is None


def test_the_address_of_a_logged_in_connection_wins() -> None:
    data = {
        "state": "LOGGED_IN",
        "connections": [
            {"cid": 0, "cstate": "CLEANUP_WAIT", "address": "192.0.2.7", "transport": "TCP"},
            {"cid": 1, "cstate": "LOGGED_IN", "address": "fe80::5054:ff:fe12:3456", "transport": "TCP"},
        ],
    }
    assert session_from_rtslib(INITIATOR, data) == InitiatorSession(INITIATOR, "fe80::5054:ff:fe12:3456")
    data["connections"][1]["cstate"] = "IN_LOGOUT"
    assert session_from_rtslib(INITIATOR, data) == InitiatorSession(INITIATOR, "192.0.2.7")
    assert session_from_rtslib(INITIATOR, {"state": "LOGGED_IN", "connections": []}) == InitiatorSession(
        INITIATOR, None
    )


SPEC = TargetSpec(
    iqn="iqn.2024-01.lan.ggnet:pc01",
    backing_file=Path("/srv/ggnet/writebacks/pc01.raw"),
    initiator_iqn=INITIATOR,
    chap_username="pc01",
    chap_secret="pc01-chap-secret",
    portal_host="0.0.0.0",
    portal_port=3260,
)


def observed(**changes: object) -> ObservedTarget:
    base = ObservedTarget(
        tpg_tags=[1],
        enabled=True,
        authentication="1",
        generate_node_acls="0",
        lun_files={0: "/srv/ggnet/writebacks/pc01.raw"},
        acls={INITIATOR: ObservedAcl("pc01", "pc01-chap-secret", [0])},
        portals=["0.0.0.0:3260"],
    )
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def test_an_identical_target_has_no_differences() -> None:
    assert differences(observed(), SPEC) == []
    # configfs keeps IQNs in lower case; the spec may not
    spec = TargetSpec(**{**SPEC.__dict__, "initiator_iqn": INITIATOR.upper().replace("IQN.", "iqn.")})
    assert differences(observed(), spec) == []


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"tpg_tags": [1, 2]}, "tpg"),
        ({"enabled": False}, "enable"),
        ({"authentication": "0"}, "authentication"),
        ({"generate_node_acls": "1"}, "generate_node_acls"),  # demo mode
        ({"lun_files": {0: "/srv/ggnet/writebacks/pc02.raw"}}, "backing_file"),
        ({"lun_files": {0: None}}, "backing_file"),  # not FileIO
        ({"lun_files": {0: "/srv/ggnet/writebacks/pc01.raw", 1: "/x"}}, "backing_file"),
        ({"acls": {}}, "acl"),
        ({"acls": {"iqn.2024-01.lan.ggnet.client:pc02": ObservedAcl("pc01", "pc01-chap-secret", [0])}}, "acl"),
        (
            {
                "acls": {
                    INITIATOR: ObservedAcl("pc01", "pc01-chap-secret", [0]),
                    "iqn.2024-01.lan.ggnet.client:pc02": ObservedAcl("x", "y", [0]),
                }
            },
            "acl",
        ),
        ({"acls": {INITIATOR: ObservedAcl("pc01", "pc01-chap-secret", [])}}, "mapped_lun"),
        ({"acls": {INITIATOR: ObservedAcl("pc01", "an-old-secret-1", [0])}}, "chap"),
        ({"acls": {INITIATOR: ObservedAcl("pc99", "pc01-chap-secret", [0])}}, "chap"),
        ({"portals": ["127.0.0.1:3260"]}, "portal"),
        ({"portals": []}, "portal"),
    ],
)
def test_each_difference_is_named(changes: dict[str, object], named: str) -> None:
    found = differences(observed(**changes), SPEC)
    assert found == [named]
    assert not any("secret" in item for item in found)  # names only: the caller logs them


def test_the_backstore_is_named_after_its_target() -> None:
    assert backstore_name("iqn.2024-01.lan.ggnet:PC01") == backstore_name("iqn.2024-01.lan.ggnet:pc01")
    assert backstore_name("iqn.2024-01.lan.ggnet:pc01") != backstore_name("iqn.2024-01.lan.ggnet:pc02")
    assert "/" not in backstore_name(SPEC.iqn) and " " not in backstore_name(SPEC.iqn)


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

    with pytest.raises(BackendUnavailable, match="LIO could not create target x: Could not create NetworkPortal"):
        await LioBackend()._run("create target x", fail)

    def configfs_refuses() -> None:
        raise OSError(22, "Invalid argument")

    with pytest.raises(BackendUnavailable, match="LIO could not list targets: .*Invalid argument"):
        await LioBackend()._run("list targets", configfs_refuses)
