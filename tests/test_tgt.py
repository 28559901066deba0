"""tgt backend: parsing of real tgtd output, and the backend against a real private tgtd.

The drift table changes each field of a target behind ggnet's back with real tgtadm commands and
checks that observe + target_diff (+ verify_chap) name it and apply repairs it in place.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from core.config import Settings
from core.errors import BackendUnavailable, Invalid, NotFound
from core.iscsi import select as select_mod
from core.iscsi.base import InitiatorSession, LunIO, LunSpec, TargetSpec
from core.iscsi.diff import find_drift, target_diff
from core.iscsi.select import select_backend
from core.iscsi.tgt import (
    TgtBackend,
    TgtTarget,
    parse_show_connections,
    parse_show_portal,
    parse_show_target,
    parse_stats,
    split_targets,
    to_observed,
)
from core.iscsi.tgtd_socket import TgtdClient
from tests.e2e import libiscsi
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
    assert (first.tid, first.iqn, first.state) == (1, "iqn.2024-01.test:smoke", "ready")
    assert [(lun.lun, lun.type, lun.backing_file) for lun in first.luns] == [
        (0, "controller", None),
        (1, "disk", "/srv/ggnet/writebacks/pc01.raw"),
    ]
    assert [(n.sid, n.initiator, n.address) for n in first.nexuses] == [(2, "iqn.2024-01.test:ini", "127.0.0.1")]
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
        State: offline
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
    assert target.state == "offline"


def test_only_the_wanted_blocks_are_cut_out_of_a_whole_show():
    blocks = split_targets(SHOW_TARGET)
    assert {k: v[0] for k, v in blocks.items()} == {"iqn.2024-01.test:smoke": 1, "iqn.2024-01.test:second": 2}
    [second] = parse_show_target(blocks["iqn.2024-01.test:second"][1])
    assert second.iqn == "iqn.2024-01.test:second" and second.luns[0].lun == 0
    assert split_targets("") == {}


def test_to_observed_reports_disk_luns_counts_and_no_secret():
    first, second = parse_show_target(SHOW_TARGET)
    stats = parse_stats(
        "tgt lun sid rd_subm(bytes,cmds) rd_done(bytes,cmds) wr_subm(bytes,cmds) wr_done(bytes,cmds) errs\n"
        "  1   1   2       4096      8       4096      8        512      1        512      1    0\n"
        "  1   1   3       1024      2       1024      2          0      0          0      0    0\n"
    )
    observed = to_observed(first, ["127.0.0.1:3299"], stats)
    assert observed.luns == {1: "/srv/ggnet/writebacks/pc01.raw"}  # LUN 0 is tgtd's controller
    assert (observed.acls, observed.chap_users, observed.chap_secret) == (["iqn.2024-01.test:ini"], ["pc01user"], None)
    assert observed.enabled and observed.portals == ["127.0.0.1:3299"]
    assert observed.io == {1: LunIO(read_bytes=5120, written_bytes=512)}  # summed over both sessions
    assert to_observed(second, [], {}).luns == {}


def test_parse_empty_portals_and_connections():
    assert parse_show_target("") == []
    assert parse_show_portal(SHOW_PORTAL) == ["[::]:3260", "0.0.0.0:3260"]
    text = (
        "Session: 2\n    Connection: 0\n        Initiator: iqn.x:y\n        IP Address: 127.0.0.1\n"
        "Session: 5\n    Connection: 0\n        Initiator: iqn.x:y\n        IP Address: 127.0.0.1\n"
    )
    assert parse_show_connections(text) == [(2, 0), (5, 0)]


# --------------------------------------------------------------------------- against a real tgtd


def disk(path: Path, size: int = 1 << 20) -> Path:
    if not path.exists():
        with open(path, "wb") as f:
            f.truncate(size)
    return path


def spec_for(daemon: TgtDaemon, tmp_path: Path, name: str, game: bool = False, **changes: object) -> TargetSpec:
    luns = [LunSpec(1, disk(tmp_path / f"{name}.raw"))]
    if game:
        luns.append(LunSpec(2, disk(tmp_path / "game.raw")))
    values: dict[str, object] = {
        "iqn": f"iqn.2024-01.lan.ggnet:{name}",
        "luns": tuple(luns),
        "initiator_iqn": f"iqn.2024-01.lan.ggnet.client:{name}",
        "chap_username": f"ggnet-{name}",
        "chap_secret": f"secret-of-{name}-0123",
        "portal_host": daemon.portal_host,
        "portal_port": daemon.portal_port,
    }
    values.update(changes)
    return TargetSpec(**values)  # type: ignore[arg-type]


def tgtadm(daemon: TgtDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    return daemon.tgtadm("--lld", "iscsi", *args)


def accounts(daemon: TgtDaemon) -> list[str]:
    out = tgtadm(daemon, "--op", "show", "--mode", "account").stdout
    return [line.strip() for line in out.splitlines()[1:] if line.strip()]


def shown(daemon: TgtDaemon) -> dict[str, TgtTarget]:
    """tgtd's own view, read with tgtadm directly (not through the backend under test)."""
    return {t.iqn: t for t in parse_show_target(tgtadm(daemon, "--op", "show", "--mode", "target").stdout)}


def assert_serves(daemon: TgtDaemon, spec: TargetSpec) -> TgtTarget:
    target = shown(daemon)[spec.iqn]
    assert [(lun.lun, lun.backing_file) for lun in target.luns if lun.lun] == [
        (lun.lun, str(lun.backing_file)) for lun in spec.luns
    ]
    assert target.acls == [spec.initiator_iqn]  # exactly one initiator, never ALL
    assert target.accounts == [spec.chap_username]
    assert target.state == "ready"
    return target


async def drift(backend: TgtBackend, spec: TargetSpec) -> list[str]:
    return await find_drift(backend, spec, (await backend.observe([spec.iqn])).get(spec.iqn.lower()))


async def test_apply_observe_verify_and_delete(tgtd_daemon: TgtDaemon, tmp_path: Path):
    backend = TgtBackend(tgtd_daemon.control_port)
    spec = spec_for(tgtd_daemon, tmp_path, "pc01", game=True)
    assert await backend.apply(spec) == ["missing"]
    assert_serves(tgtd_daemon, spec)
    assert accounts(tgtd_daemon) == [spec.chap_username]

    observed = (await backend.observe([spec.iqn.upper().replace("IQN.", "iqn.")]))[spec.iqn]  # any case
    assert target_diff(observed, spec) == [] and observed.chap_secret is None  # tgtd cannot show it
    assert observed.luns == {1: str(spec.luns[0].backing_file), 2: str(spec.luns[1].backing_file)}
    assert observed.io == {1: LunIO(0, 0), 2: LunIO(0, 0)} and observed.sessions == []
    assert await backend.verify_chap(spec) is True
    assert await backend.verify_chap(dataclasses.replace(spec, chap_secret="not-the-secret-1")) is False
    assert await backend.verify_chap(dataclasses.replace(spec, chap_username="someone-else")) is False
    assert await backend.verify_chap(dataclasses.replace(spec, initiator_iqn="iqn.2024-01.lan.x:intruder")) is False
    assert shown(tgtd_daemon)[spec.iqn].nexuses == []  # a probe leaves no session behind
    assert await backend.observe(["iqn.2024-01.lan.ggnet:nope"]) == {}

    await backend.delete(spec.iqn)
    assert shown(tgtd_daemon) == {} and accounts(tgtd_daemon) == []
    assert await backend.observe() == {}


async def test_verify_chap_agrees_with_a_real_initiator(tgtd_daemon: TgtDaemon, tmp_path: Path):
    if libiscsi.unavailable():
        pytest.skip(str(libiscsi.unavailable()))
    backend = TgtBackend(tgtd_daemon.control_port)
    spec = spec_for(tgtd_daemon, tmp_path, "pc01")
    await backend.apply(spec)
    for trial in (spec, dataclasses.replace(spec, chap_secret="not-the-secret-1"),
                  dataclasses.replace(spec, initiator_iqn="iqn.2024-01.lan.x:intruder")):  # fmt: skip
        login = libiscsi.inquiry("127.0.0.1", spec.portal_port, spec.iqn, 1, trial.initiator_iqn,
                                 trial.chap_username, trial.chap_secret)  # fmt: skip
        assert (login.returncode == 0) is await backend.verify_chap(trial), login.stderr


async def test_apply_is_idempotent_and_changes_in_place(tgtd_daemon: TgtDaemon, tmp_path: Path):
    backend = TgtBackend(tgtd_daemon.control_port)
    spec = spec_for(tgtd_daemon, tmp_path, "pc01")
    await backend.apply(spec)
    tid = shown(tgtd_daemon)[spec.iqn].tid
    assert await backend.apply(spec) == [] and await backend.apply(spec) == []
    observed = (await backend.observe([spec.iqn]))[spec.iqn]
    assert await backend.apply(spec, observed) == []  # with the caller's fresh view: no read needed

    # the next boot: a new writeback, a new secret, a game disk: one apply, the same target
    changed = spec_for(tgtd_daemon, tmp_path, "pc01-next", game=True, iqn=spec.iqn,
                       initiator_iqn=spec.initiator_iqn, chap_username=spec.chap_username)  # fmt: skip
    assert await backend.apply(changed) == ["lun", "backing_file", "chap_secret"]
    assert assert_serves(tgtd_daemon, changed).tid == tid  # changed in place, never recreated
    assert await drift(backend, changed) == [] and accounts(tgtd_daemon) == [spec.chap_username]
    await backend.delete(spec.iqn)
    await backend.delete(spec.iqn)
    await backend.delete("iqn.2024-01.lan.ggnet:never-existed")
    assert shown(tgtd_daemon) == {} and accounts(tgtd_daemon) == []


# each field of the vocabulary changed behind ggnet's back, the tgtadm way
DRIFT: dict[str, tuple[str, Callable[[TgtDaemon, TargetSpec, int, Path], None]]] = {
    "portal removed": ("portal", lambda d, s, tid, tmp: tgtadm(
        d, "--op", "delete", "--mode", "portal", "--param", f"portal=127.0.0.1:{d.portal_port}")),
    "game LUN removed": ("lun", lambda d, s, tid, tmp: tgtadm(
        d, "--op", "delete", "--mode", "logicalunit", "--tid", str(tid), "--lun", "2")),
    "LUN added": ("lun", lambda d, s, tid, tmp: tgtadm(
        d, "--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", "3", "-b", str(disk(tmp / "x.raw")))),
    "backing file swapped": ("backing_file", lambda d, s, tid, tmp: (
        tgtadm(d, "--op", "delete", "--mode", "logicalunit", "--tid", str(tid), "--lun", "1"),
        tgtadm(d, "--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", "1",
               "-b", str(disk(tmp / "other.raw"))))),
    "initiator replaced": ("acl", lambda d, s, tid, tmp: (
        tgtadm(d, "--op", "unbind", "--mode", "target", "--tid", str(tid), "-Q", s.initiator_iqn),
        tgtadm(d, "--op", "bind", "--mode", "target", "--tid", str(tid), "-Q", "iqn.2024-01.lan.x:intruder"))),
    "everyone allowed": ("acl", lambda d, s, tid, tmp: tgtadm(
        d, "--op", "bind", "--mode", "target", "--tid", str(tid), "-I", "ALL")),
    "account unbound": ("chap_user", lambda d, s, tid, tmp: tgtadm(
        d, "--op", "unbind", "--mode", "account", "--tid", str(tid), "--user", s.chap_username)),
    "account renamed": ("chap_user", lambda d, s, tid, tmp: (
        tgtadm(d, "--op", "delete", "--mode", "account", "--user", s.chap_username),
        tgtadm(d, "--op", "new", "--mode", "account", "--user", "renamed", "--password", s.chap_secret),
        tgtadm(d, "--op", "bind", "--mode", "account", "--tid", str(tid), "--user", "renamed"))),
    "secret replaced": ("chap_secret", lambda d, s, tid, tmp: (
        tgtadm(d, "--op", "delete", "--mode", "account", "--user", s.chap_username),
        tgtadm(d, "--op", "new", "--mode", "account", "--user", s.chap_username, "--password", "someone-elses-1"),
        tgtadm(d, "--op", "bind", "--mode", "account", "--tid", str(tid), "--user", s.chap_username))),
    "target offline": ("enabled", lambda d, s, tid, tmp: tgtadm(
        d, "--op", "update", "--mode", "target", "--tid", str(tid), "-n", "state", "-v", "offline")),
}  # fmt: skip


@pytest.mark.parametrize("change", list(DRIFT))
async def test_drift_behind_ggnets_back_is_found_and_repaired_in_place(tgtd_daemon: TgtDaemon, tmp_path: Path,
                                                                       change: str):  # fmt: skip
    backend = TgtBackend(tgtd_daemon.control_port)
    spec = spec_for(tgtd_daemon, tmp_path, "pc01", game=True)
    neighbour = spec_for(tgtd_daemon, tmp_path, "pc02")
    await backend.apply(spec)
    await backend.apply(neighbour)
    tid = shown(tgtd_daemon)[spec.iqn].tid
    field, make_drift = DRIFT[change]

    make_drift(tgtd_daemon, spec, tid, tmp_path)

    assert await drift(backend, spec) == [field]
    assert await backend.apply(spec) == [field]
    assert assert_serves(tgtd_daemon, spec).tid == tid
    assert await drift(backend, spec) == [] and await backend.verify_chap(spec) is True
    assert await drift(backend, neighbour) == []  # the other machine's target is untouched
    assert await backend.apply(spec) == []


class Killed(BaseException):
    """The process died here: no except clause of the backend may swallow it."""


def dies_after(backend: TgtBackend, requests: int) -> list[str]:
    """From the ``requests``-th request to tgtd on, ``backend`` acts as if its process had died."""
    sent: list[str] = []
    original = backend.tgtd.request

    async def request(req):  # type: ignore[no-untyped-def]
        sent.append(req.describe())
        if len(sent) >= requests:
            raise Killed()
        return await original(req)

    backend.tgtd.request = request  # type: ignore[method-assign]
    return sent


def never_open_wider(daemon: TgtDaemon, spec: TargetSpec) -> None:
    """Whatever the moment: no initiator but the machine's, and never one without an account."""
    target = shown(daemon).get(spec.iqn)
    if target is not None:
        assert set(target.acls) <= {spec.initiator_iqn}
        assert not target.acls or target.accounts


@pytest.mark.parametrize("start", ["nothing", "the previous boot's target"])
async def test_an_apply_killed_at_any_request_is_completed_by_the_next(tgtd_daemon: TgtDaemon, tmp_path: Path,
                                                                       start: str):  # fmt: skip
    old = spec_for(tgtd_daemon, tmp_path, "pc01")
    new = spec_for(tgtd_daemon, tmp_path, "pc01-next", game=True, iqn=old.iqn, initiator_iqn=old.initiator_iqn,
                   chap_username=old.chap_username)  # fmt: skip

    async def prepare() -> None:
        if start != "nothing":
            await TgtBackend(tgtd_daemon.control_port).apply(old)

    counting = TgtBackend(tgtd_daemon.control_port)
    await prepare()
    sent = dies_after(counting, 10_000)
    await counting.apply(new)
    await counting.delete(new.iqn)
    assert len(sent) > 10
    for kill_at in range(1, len(sent) + 1):
        await prepare()
        victim = TgtBackend(tgtd_daemon.control_port)
        dies_after(victim, kill_at)
        with pytest.raises(Killed):
            await victim.apply(new)
            await victim.delete(new.iqn)
        never_open_wider(tgtd_daemon, new)
        fresh = TgtBackend(tgtd_daemon.control_port)  # the next process
        if new.iqn in shown(tgtd_daemon):
            await fresh.apply(new)
            assert_serves(tgtd_daemon, new)
            assert await drift(fresh, new) == []
        await fresh.delete(new.iqn)
        assert shown(tgtd_daemon) == {} and accounts(tgtd_daemon) == [], f"killed at {sent[kill_at - 1]}"


async def test_a_half_made_target_is_completed(tgtd_daemon: TgtDaemon, tmp_path: Path):
    backend = TgtBackend(tgtd_daemon.control_port)
    spec = spec_for(tgtd_daemon, tmp_path, "pc01", game=True)
    # what an interrupted apply (or a person) leaves: the target and its first LUN, nothing else
    tgtadm(tgtd_daemon, "--op", "new", "--mode", "target", "--tid", "7", "-T", spec.iqn)
    tgtadm(tgtd_daemon, "--op", "new", "--mode", "logicalunit", "--tid", "7", "--lun", "1", "-b",
           str(spec.luns[0].backing_file))  # fmt: skip
    assert await drift(backend, spec) == ["lun", "acl", "chap_user"]
    assert await backend.apply(spec) == ["lun", "acl", "chap_user"]
    assert assert_serves(tgtd_daemon, spec).tid == 7
    assert await drift(backend, spec) == []


async def test_many_targets_at_once_and_delete_only_what_was_asked(tgtd_daemon: TgtDaemon, tmp_path: Path):
    backend = TgtBackend(tgtd_daemon.control_port)
    specs = [spec_for(tgtd_daemon, tmp_path, f"pc{i:02d}") for i in range(12)]
    assert await asyncio.gather(*(backend.apply(s) for s in specs)) == [["missing"]] * 12
    # someone else's target, made by hand, with its own account
    tgtadm(tgtd_daemon, "--op", "new", "--mode", "target", "--tid", "40", "-T", "iqn.2001-04.com.other:x")
    tgtadm(tgtd_daemon, "--op", "new", "--mode", "account", "--user", "other", "--password", "pw-other-123")
    tgtadm(tgtd_daemon, "--op", "bind", "--mode", "account", "--tid", "40", "--user", "other")

    targets = shown(tgtd_daemon)
    assert len({t.tid for t in targets.values()}) == 13
    for s in specs:
        assert_serves(tgtd_daemon, s)
    await asyncio.gather(*(backend.delete(s.iqn) for s in specs[1:]))
    assert sorted(shown(tgtd_daemon)) == sorted([specs[0].iqn, "iqn.2001-04.com.other:x"])
    assert sorted(accounts(tgtd_daemon)) == sorted([specs[0].chap_username, "other"])
    assert set(await backend.observe()) == {specs[0].iqn, "iqn.2001-04.com.other:x"}


async def test_an_account_another_target_uses_is_kept(tgtd_daemon: TgtDaemon, tmp_path: Path):
    backend = TgtBackend(tgtd_daemon.control_port)
    spec = spec_for(tgtd_daemon, tmp_path, "pc01")
    await backend.apply(spec)
    tgtadm(tgtd_daemon, "--op", "new", "--mode", "target", "--tid", "40", "-T", "iqn.2001-04.com.other:x")
    tgtadm(tgtd_daemon, "--op", "bind", "--mode", "account", "--tid", "40", "--user", spec.chap_username)
    await backend.delete(spec.iqn)
    assert list(shown(tgtd_daemon)) == ["iqn.2001-04.com.other:x"] and accounts(tgtd_daemon) == [spec.chap_username]


async def test_delete_while_an_initiator_reads(tgtd_daemon: TgtDaemon, tmp_path: Path):
    """tgtadm's delete --force refuses ("this logical unit is still active") while commands are in
    flight (whether one is at a given instant is timing, so the test does not insist on seeing it);
    the backend's delete closes the door and the connections first, then deletes."""
    if libiscsi.unavailable():
        pytest.skip(str(libiscsi.unavailable()))
    backend = TgtBackend(tgtd_daemon.control_port)
    other, ours = (spec_for(tgtd_daemon, tmp_path, name) for name in ("pc01", "pc02"))
    for spec in (other, ours):
        disk(spec.luns[0].backing_file.with_suffix(".big"), 64 << 20)
        spec.luns[0].backing_file.unlink()
        spec.luns[0].backing_file.with_suffix(".big").rename(spec.luns[0].backing_file)
        await backend.apply(spec)
    readers = [libiscsi.Reader(tmp_path / f"{s.chap_username}.log", "127.0.0.1", s.portal_port, s.iqn, 1,
                               s.initiator_iqn, s.chap_username, s.chap_secret) for s in (other, ours)]  # fmt: skip
    with readers[0], readers[1]:
        for reader in readers:
            reader.wait_reading()
        assert all(shown(tgtd_daemon)[s.iqn].nexuses for s in (other, ours))  # both logged in
        await backend.delete(ours.iqn)
        assert ours.iqn not in shown(tgtd_daemon) and ours.chap_username not in accounts(tgtd_daemon)
    await backend.delete(other.iqn)
    assert shown(tgtd_daemon) == {}


async def test_no_secret_ever_reaches_an_argv(tgtd_daemon: TgtDaemon, tmp_path: Path):
    """While ggnet's tgt code applies targets with fresh secrets, /proc/<pid>/cmdline of no process holds one."""
    backend = TgtBackend(tgtd_daemon.control_port)
    secrets = [f"burst-secret-{i:03d}-x" for i in range(40)]
    control = "control-secret-in-argv-1"  # tgtadm's way, to prove the watcher sees what it should
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        wanted = [s.encode() for s in [*secrets, control]]
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            cmdline = f.read()
                    except OSError:
                        continue
                    seen.update(w.decode() for w in wanted if w in cmdline)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for i, secret in enumerate(secrets):
            await backend.apply(spec_for(tgtd_daemon, tmp_path, f"pc{i % 4:02d}", chap_secret=secret))
        subprocess.run(["sh", "-c", f"tgtadm -C {tgtd_daemon.control_port} --lld iscsi --op new --mode account "
                        f"--user control --password {control}; sleep 0.3"], check=True, timeout=10)  # fmt: skip
    finally:
        stop.set()
        watcher.join(10)
    assert seen == {control}


async def test_refusals_change_nothing(tgtd_daemon: TgtDaemon, tmp_path: Path):
    backend = TgtBackend(tgtd_daemon.control_port)
    a = spec_for(tgtd_daemon, tmp_path, "pc01")
    await backend.apply(a)
    missing = spec_for(tgtd_daemon, tmp_path, "pc03", luns=(LunSpec(1, tmp_path / "nope.raw"),))
    with pytest.raises(NotFound, match="nope.raw"):
        await backend.apply(missing)
    with pytest.raises(Invalid, match="chap_secret: must be non-empty, without spaces"):
        await backend.apply(spec_for(tgtd_daemon, tmp_path, "pc04", chap_secret="has space"))
    with pytest.raises(Invalid, match="luns.backing_file: must be an absolute path without commas"):
        await backend.apply(spec_for(tgtd_daemon, tmp_path, "pc04", luns=(LunSpec(1, Path("rel.raw")),)))
    with pytest.raises(Invalid, match="luns: must be distinct"):
        await backend.apply(spec_for(tgtd_daemon, tmp_path, "pc04", luns=(LunSpec(1, a.luns[0].backing_file),) * 2))
    assert list(shown(tgtd_daemon)) == [a.iqn]
    assert accounts(tgtd_daemon) == [a.chap_username]


def chattr(flag: str, path: Path) -> bool:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True, check=False).returncode == 0


async def test_a_failure_midway_leaves_nothing_behind(tgtd_daemon: TgtDaemon, tmp_path: Path):
    backend = TgtBackend(tgtd_daemon.control_port)
    spec = spec_for(tgtd_daemon, tmp_path, "pc01")
    # tgtd cannot open an immutable file read-write, even as root: the LUN step fails after the target exists
    if not chattr("+i", spec.luns[0].backing_file):
        pytest.skip("optional: chattr +i is not supported on this file system")
    try:
        with pytest.raises(BackendUnavailable, match="tgtd cannot serve .* as LUN 1"):
            await backend.apply(spec)
    finally:
        assert chattr("-i", spec.luns[0].backing_file)
    assert shown(tgtd_daemon) == {} and accounts(tgtd_daemon) == []
    await backend.apply(spec)  # and it works once the file is usable
    assert list(shown(tgtd_daemon)) == [spec.iqn]


async def test_portal_is_added_when_missing(tgtd_daemon: TgtDaemon, tmp_path: Path):
    backend = TgtBackend(tgtd_daemon.control_port)
    port = free_tcp_port()
    spec = spec_for(tgtd_daemon, tmp_path, "pc01", portal_port=port)
    assert await backend.apply(spec) == ["missing"]
    assert f"127.0.0.1:{port}" in (await backend.observe())[spec.iqn].portals
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # tgtd listens there now
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        taken = spec_for(tgtd_daemon, tmp_path, "pc02", portal_port=busy.getsockname()[1])
        with pytest.raises(BackendUnavailable, match=r"tgtd cannot listen on 127\.0\.0\.1:\d+ \(GGNET_PORTAL\)"):
            await backend.apply(taken)
    finally:
        busy.close()


async def test_health_and_unreachable_daemon(tgtd_daemon: TgtDaemon, tmp_path: Path):
    assert (await TgtBackend(tgtd_daemon.control_port).health()).ok
    dead = TgtBackend(free_control_port())
    health = await dead.health()
    assert not health.ok and f"control port {dead.control_port}" in health.detail
    assert "systemctl start tgt" in health.detail
    with pytest.raises(BackendUnavailable, match="does not answer"):
        await dead.observe()
    with pytest.raises(BackendUnavailable, match="does not answer"):
        await dead.apply(spec_for(tgtd_daemon, tmp_path, "pc01"))
    assert isinstance(dead.tgtd, TgtdClient)


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
    assert re.search("LIO", health.detail)
