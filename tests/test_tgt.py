"""tgt backend: parsing of real tgtadm output, and the backend against a real private tgtd."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import pytest

from core.config import Settings
from core.errors import BackendUnavailable, Conflict, NotFound
from core.iscsi import select as select_mod
from core.iscsi.base import InitiatorSession, TargetSpec
from core.iscsi.select import select_backend
from core.iscsi.tgt import (
    TgtBackend,
    parse_show_portal,
    parse_show_target,
    portal_covered,
    to_actual,
)
from tests.e2e.tgtd import TgtDaemon, free_control_port, free_tcp_port, tgtd_daemon

__all__ = ["tgtd_daemon"]  # the fixture, imported for the tests below

# Captured from tgt 1.0.85 (Debian 12) while a QEMU/iPXE client was logged in to target 1 with CHAP;
# target 2 was created bare (no LUN, no ACL). Only the backing path was rewritten.
SHOW_TARGET = """\
Target 1: iqn.2024-01.test:smoke
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 2
            Initiator: iqn.2024-01.test:ini alias: none
            Connection: 0
                IP Address: 127.0.0.1
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00010000
            SCSI SN: beaf10
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
        LUN: 1
            Type: disk
            SCSI ID: IET     00010001
            SCSI SN: beaf11
            Size: 8 MB, Block size: 512
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: rdwr
            Backing store path: /srv/ggnet/writebacks/pc01.raw
            Backing store flags: 
    Account information:
        pc01user
    ACL information:
        iqn.2024-01.test:ini
Target 2: iqn.2024-01.test:second
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00020000
            SCSI SN: beaf20
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
    Account information:
    ACL information:
"""

SHOW_PORTAL = "Portal: [::]:3260,1\nPortal: 0.0.0.0:3260,1\n"  # a tgtd started without --iscsi portal=


def test_parse_show_target_with_logged_in_client():
    first, second = parse_show_target(SHOW_TARGET)
    assert (first.tid, first.iqn) == (1, "iqn.2024-01.test:smoke")
    assert [(lun.lun, lun.type, lun.backing_file) for lun in first.luns] == [
        (0, "controller", None),
        (1, "disk", "/srv/ggnet/writebacks/pc01.raw"),
    ]
    assert first.sessions == [InitiatorSession("iqn.2024-01.test:ini", "127.0.0.1")]
    assert first.accounts == ["pc01user"]
    assert first.acls == ["iqn.2024-01.test:ini"]
    assert (second.tid, second.iqn) == (2, "iqn.2024-01.test:second")
    assert (second.disk, second.sessions, second.accounts, second.acls) == (None, [], [], [])


def test_parse_outgoing_account_and_address_rule():
    # captured: an incoming and an outgoing (mutual CHAP) account, and an ACL by address besides one by name
    text = """\
Target 1: iqn.2024-01.x:a
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
    Account information:
        in1
        out1 (outgoing)
    ACL information:
        ALL
        iqn.2024-01.x:ini
"""
    [target] = parse_show_target(text)
    assert target.accounts == ["in1"]  # only incoming accounts authenticate initiators
    assert target.acls == ["ALL", "iqn.2024-01.x:ini"]


def test_to_actual_reports_the_disk_lun_not_the_controller():
    first, second = parse_show_target(SHOW_TARGET)
    actual = to_actual(first, ["127.0.0.1:3299"])
    assert (actual.iqn, actual.lun, actual.backing_file) == (
        "iqn.2024-01.test:smoke",
        1,
        "/srv/ggnet/writebacks/pc01.raw",
    )
    assert actual.acls == ["iqn.2024-01.test:ini"] and actual.portals == ["127.0.0.1:3299"]
    assert actual.sessions == [InitiatorSession("iqn.2024-01.test:ini", "127.0.0.1")]
    assert (to_actual(second, []).lun, to_actual(second, []).backing_file) == (None, None)


def test_parse_empty_and_portals():
    assert parse_show_target("") == []
    assert parse_show_portal(SHOW_PORTAL) == ["[::]:3260", "0.0.0.0:3260"]
    assert portal_covered(["127.0.0.1:3299"], "127.0.0.1", 3299)
    assert portal_covered(["[::]:3260"], "192.168.1.5", 3260)
    assert not portal_covered(["127.0.0.1:3299"], "127.0.0.1", 3300)
    assert not portal_covered(["127.0.0.1:3299"], "10.0.0.1", 3299)


# --------------------------------------------------------------------------- against a real tgtd


def spec_for(daemon: TgtDaemon, tmp_path: Path, name: str, **changes: object) -> TargetSpec:
    disk = tmp_path / f"{name}.raw"
    if not disk.exists():
        with open(disk, "wb") as f:
            f.truncate(1 << 20)
    values: dict[str, object] = {
        "iqn": f"iqn.2024-01.lan.ggnet:{name}",
        "backing_file": disk,
        "initiator_iqn": f"iqn.2024-01.lan.ggnet.client:{name}",
        "chap_username": f"ggnet-{name}",
        "chap_secret": f"secret-of-{name}-0123",
        "portal_host": daemon.portal_host,
        "portal_port": daemon.portal_port,
    }
    values.update(changes)
    return TargetSpec(**values)  # type: ignore[arg-type]


def accounts(daemon: TgtDaemon) -> list[str]:
    out = daemon.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "account").stdout
    return [line.strip() for line in out.splitlines()[1:] if line.strip()]


def shown(daemon: TgtDaemon) -> dict[str, object]:
    """tgtd's own view, read with tgtadm directly (not through the backend under test)."""
    text = daemon.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "target").stdout
    return {t.iqn: t for t in parse_show_target(text)}


async def test_create_list_delete(tgtd_daemon: TgtDaemon, tmp_path: Path):
    backend = TgtBackend(tgtd_daemon.control_port)
    spec = spec_for(tgtd_daemon, tmp_path, "pc01")
    await backend.create_target(spec)

    target = shown(tgtd_daemon)[spec.iqn]
    assert target.disk is not None and target.disk.lun == 1 == backend.lun
    assert target.disk.backing_file == str(spec.backing_file)
    assert target.acls == [spec.initiator_iqn]  # exactly one initiator, never ALL
    assert target.accounts == [spec.chap_username]
    assert accounts(tgtd_daemon) == [spec.chap_username]

    [actual] = await backend.list_targets()
    assert (actual.iqn, actual.lun, actual.backing_file) == (spec.iqn, 1, str(spec.backing_file))
    assert actual.acls == [spec.initiator_iqn] and actual.sessions == []
    assert actual.portals == [f"127.0.0.1:{tgtd_daemon.portal_port}"]

    await backend.delete_target(spec.iqn)
    assert shown(tgtd_daemon) == {} and accounts(tgtd_daemon) == []
    assert await backend.list_targets() == []


async def test_create_and_delete_are_idempotent(tgtd_daemon: TgtDaemon, tmp_path: Path):
    backend = TgtBackend(tgtd_daemon.control_port)
    spec = spec_for(tgtd_daemon, tmp_path, "pc01")
    await backend.create_target(spec)
    await backend.create_target(spec)
    # a changed spec (new writeback, new secret, new initiator) makes the same target identical to it
    changed = spec_for(tgtd_daemon, tmp_path, "pc01-new", iqn=spec.iqn, chap_username=spec.chap_username,
                       initiator_iqn="iqn.2024-01.lan.ggnet.client:pc01-replaced")  # fmt: skip
    await backend.create_target(changed)
    targets = shown(tgtd_daemon)
    assert list(targets) == [spec.iqn]
    target = targets[spec.iqn]
    assert target.disk is not None and target.disk.backing_file == str(changed.backing_file)
    assert target.acls == [changed.initiator_iqn]
    assert target.accounts == [spec.chap_username] and accounts(tgtd_daemon) == [spec.chap_username]

    await backend.delete_target(spec.iqn)
    await backend.delete_target(spec.iqn)
    await backend.delete_target("iqn.2024-01.lan.ggnet:never-existed")
    assert shown(tgtd_daemon) == {} and accounts(tgtd_daemon) == []


async def test_two_targets_at_once_and_delete_only_what_was_asked(tgtd_daemon: TgtDaemon, tmp_path: Path):
    backend = TgtBackend(tgtd_daemon.control_port)
    a, b, c = (spec_for(tgtd_daemon, tmp_path, name) for name in ("pc01", "pc02", "pc03"))
    await asyncio.gather(*(backend.create_target(s) for s in (a, b, c)))
    # someone else's target, made by hand, with its own account
    tgtd_daemon.tgtadm(
        "--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "40", "-T", "iqn.2001-04.com.other:x"
    )
    tgtd_daemon.tgtadm(
        "--lld", "iscsi", "--op", "new", "--mode", "account", "--user", "other", "--password", "pw-other-123"
    )
    tgtd_daemon.tgtadm("--lld", "iscsi", "--op", "bind", "--mode", "account", "--tid", "40", "--user", "other")

    targets = shown(tgtd_daemon)
    assert len({t.tid for t in targets.values()}) == 4
    for s in (a, b, c):
        t = targets[s.iqn]
        assert t.disk is not None and t.disk.backing_file == str(s.backing_file)
        assert (t.acls, t.accounts) == ([s.initiator_iqn], [s.chap_username])

    await backend.delete_target(b.iqn)
    assert sorted(shown(tgtd_daemon)) == sorted([a.iqn, c.iqn, "iqn.2001-04.com.other:x"])
    assert sorted(accounts(tgtd_daemon)) == sorted([a.chap_username, c.chap_username, "other"])
    listed = {t.iqn for t in await backend.list_targets()}
    assert listed == {a.iqn, c.iqn, "iqn.2001-04.com.other:x"}


async def test_refusals_change_nothing(tgtd_daemon: TgtDaemon, tmp_path: Path):
    backend = TgtBackend(tgtd_daemon.control_port)
    a = spec_for(tgtd_daemon, tmp_path, "pc01")
    await backend.create_target(a)
    # another machine may not reuse pc01's CHAP account
    stolen = spec_for(tgtd_daemon, tmp_path, "pc02", chap_username=a.chap_username)
    with pytest.raises(Conflict, match=a.iqn):
        await backend.create_target(stolen)
    missing = spec_for(tgtd_daemon, tmp_path, "pc03", backing_file=tmp_path / "nope.raw")
    with pytest.raises(NotFound, match="nope.raw"):
        await backend.create_target(missing)
    assert list(shown(tgtd_daemon)) == [a.iqn]
    assert accounts(tgtd_daemon) == [a.chap_username]


def chattr(flag: str, path: Path) -> bool:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True, check=False).returncode == 0


async def test_a_failure_midway_leaves_nothing_behind(tgtd_daemon: TgtDaemon, tmp_path: Path):
    backend = TgtBackend(tgtd_daemon.control_port)
    spec = spec_for(tgtd_daemon, tmp_path, "pc01")
    # tgtd cannot open an immutable file read-write, even as root: the LUN step fails after the target exists
    if not chattr("+i", spec.backing_file):
        pytest.skip("optional: chattr +i is not supported on this file system")
    try:
        with pytest.raises(BackendUnavailable, match="tgtd cannot serve .* as LUN 1"):
            await backend.create_target(spec)
    finally:
        assert chattr("-i", spec.backing_file)
    assert shown(tgtd_daemon) == {} and accounts(tgtd_daemon) == []
    await backend.create_target(spec)  # and it works once the file is usable
    assert list(shown(tgtd_daemon)) == [spec.iqn]


async def test_portal_is_added_when_missing(tgtd_daemon: TgtDaemon, tmp_path: Path):
    backend = TgtBackend(tgtd_daemon.control_port)
    port = free_tcp_port()
    await backend.create_target(spec_for(tgtd_daemon, tmp_path, "pc01", portal_port=port))
    [actual] = await backend.list_targets()
    assert f"127.0.0.1:{port}" in actual.portals
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # tgtd listens there now


async def test_health_and_unreachable_daemon(tgtd_daemon: TgtDaemon, tmp_path: Path):
    assert (await TgtBackend(tgtd_daemon.control_port).health()).ok
    missing = await TgtBackend(tgtd_daemon.control_port, tgtadm=str(tmp_path / "no-tgtadm")).health()
    assert not missing.ok and "not installed" in missing.detail
    dead = TgtBackend(free_control_port())
    health = await dead.health()
    assert not health.ok and f"control port {dead.control_port}" in health.detail
    with pytest.raises(BackendUnavailable, match="does not answer"):
        await dead.list_targets()
    with pytest.raises(BackendUnavailable, match="does not answer"):
        await dead.create_target(spec_for(tgtd_daemon, tmp_path, "pc01"))


async def test_select_backend(tgtd_daemon: TgtDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # this machine has no LIO; point the probe at a path that surely does not exist either way
    monkeypatch.setattr(select_mod, "LIO_CONFIGFS", tmp_path / "no-configfs")
    settings = Settings(data_dir=tmp_path, target_backend="auto", tgt_control_port=tgtd_daemon.control_port)
    backend, health = await select_backend(settings)
    assert isinstance(backend, TgtBackend) and health.ok
    assert backend.control_port == tgtd_daemon.control_port

    nothing = Settings(data_dir=tmp_path, target_backend="auto", tgt_control_port=free_control_port())
    backend, health = await select_backend(nothing)
    assert backend is None and not health.ok
    assert health.detail.startswith("no iSCSI target stack") and "tgtd" in health.detail and "LIO" in health.detail

    # asked for tgt explicitly: the backend, unhealthy until tgtd is started
    backend, health = await select_backend(nothing.model_copy(update={"target_backend": "tgt"}))
    assert isinstance(backend, TgtBackend) and not health.ok and "does not answer" in health.detail

    backend, health = await select_backend(Settings(data_dir=tmp_path, target_backend="lio"))
    assert backend is None and not health.ok and "LIO" in health.detail
