"""Sessions and reconcile on a real tgtd and real files, on SQLite and PostgreSQL.

The clients here are real QEMU/iPXE clients only where a logged-in initiator matters
(stop --force); everything else checks the target stack, the files and the database.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.auth import Actor
from core.context import Core
from core.iscsi.tgt import TgtBackend
from core.models import SessionState
from core.services import images, machines, sessions, targets
from core.storage.writeback import writeback_path
from tests.e2e import qemu_client
from tests.e2e.bootdisk import make_boot_disk, sector_marker, written_token
from tests.e2e.tgtd import TgtDaemon


@pytest.fixture
async def prov(core: Core, admin: Actor, tgtd_daemon: TgtDaemon, tmp_path: Path) -> Core:
    """The test's Core pointed at the private tgtd, with an image 'disk' and machines pc01..pc03."""
    core.settings.portal = f"127.0.0.1:{tgtd_daemon.portal_port}"
    core.settings.boot_address = "10.0.2.2"
    core.settings.tgt_control_port = tgtd_daemon.control_port
    core.settings.writeback_driver = "copy"
    core.use_backend(TgtBackend(tgtd_daemon.control_port))
    disk = make_boot_disk(tmp_path / "disk.raw", size_mib=8, token="sess")
    await images.import_image(core, admin, disk, name="disk", kind="system")
    for n in range(1, 4):
        await machines.add_machine(core, admin, name=f"pc0{n}", mac=f"52:54:00:5e:00:0{n}")
        await images.assign_image(core, admin, f"pc0{n}", "disk", None)
    return core


async def _states(core: Core, actor: Actor) -> dict[str, str]:
    return {s.machine: s.state for s in await sessions.list_sessions(core, actor, live_state=False)}


async def _target_iqns(core: Core) -> set[str]:
    backend, _ = await core.target_backend()
    return {t.iqn for t in await backend.list_targets()}


async def test_start_then_stop(prov: Core, admin: Actor) -> None:
    [result] = await sessions.start_sessions(prov, admin, ["pc01"])
    assert result.ok, result.message
    wb = writeback_path(prov.settings, (await machines.get_machine(prov, admin, "pc01")).id)
    assert wb.is_file()
    assert await _target_iqns(prov) == {"iqn.2024-01.lan.ggnet:pc01"}
    script = (prov.settings.tftp_root / "52-54-00-5e-00-01.ipxe").read_text()
    assert "sanboot iscsi:10.0.2.2::" in script and "iqn.2024-01.lan.ggnet:pc01" in script
    assert await _states(prov, admin) == {"pc01": "active"}

    [stopped] = await sessions.stop_sessions(prov, admin, ["pc01"])
    assert stopped.ok, stopped.message
    assert await _target_iqns(prov) == set()
    assert not wb.exists()
    assert "sanboot" not in (prov.settings.tftp_root / "52-54-00-5e-00-01.ipxe").read_text()
    assert await _states(prov, admin) == {}
    [again] = await sessions.stop_sessions(prov, admin, ["pc01"])
    assert not again.ok and "has no running session" in again.message


async def test_second_start_refused_even_from_two_consoles_at_once(prov: Core, admin: Actor, tmp_path: Path) -> None:
    other = Core.open(prov.settings)  # a second console: its own engine and connections
    other.use_backend(*(await prov.target_backend()))
    try:
        results = await asyncio.gather(
            sessions.start_sessions(prov, admin, ["pc02"]), sessions.start_sessions(other, admin, ["pc02"])
        )
    finally:
        await other.close()
    outcomes = sorted(r[0].ok for r in results)
    assert outcomes == [False, True]
    refused = next(r[0] for r in results if not r[0].ok)
    assert "already has a running session" in refused.message
    assert await _states(prov, admin) == {"pc02": "active"}
    assert await _target_iqns(prov) == {"iqn.2024-01.lan.ggnet:pc02"}


async def test_failure_midway_is_undone_and_recorded(prov: Core, admin: Actor, tgtd_daemon: TgtDaemon) -> None:
    tgtd_daemon.stop()  # the target stack goes away after the writeback was made
    [result] = await sessions.start_sessions(prov, admin, ["pc01"])
    assert not result.ok
    listed = await sessions.list_sessions(prov, admin, live_state=False)
    assert [(s.machine, s.state) for s in listed] == [("pc01", SessionState.ERROR.value)]
    assert listed[0].error
    wb = writeback_path(prov.settings, (await machines.get_machine(prov, admin, "pc01")).id)
    assert not wb.exists()  # the writeback made before the failure was removed again
    tgtd_daemon.start()
    [retry] = await sessions.start_sessions(prov, admin, ["pc01"])  # an errored session does not block
    assert retry.ok, retry.message


async def test_keep_writeback_survives_stop_and_is_reused(prov: Core, admin: Actor) -> None:
    await sessions.start_sessions(prov, admin, ["pc03"], kind="keep")
    wb = writeback_path(prov.settings, (await machines.get_machine(prov, admin, "pc03")).id)
    with open(wb, "r+b") as f:  # what the client wrote during the session
        f.seek(2 * 512)
        f.write(b"GGNET-SECTOR2-kept\r\n\0")
    [stopped] = await sessions.stop_sessions(prov, admin, ["pc03"])
    assert stopped.ok and "kept" in stopped.message
    assert written_token(wb) == sector_marker("kept")
    await sessions.start_sessions(prov, admin, ["pc03"])
    assert written_token(wb) == sector_marker("kept")  # the next session boots the kept disk


async def test_maintenance_apply_makes_the_next_active_version(prov: Core, admin: Actor) -> None:
    await sessions.start_sessions(prov, admin, ["pc01"], kind="maintenance")
    wb = writeback_path(prov.settings, (await machines.get_machine(prov, admin, "pc01")).id)
    with open(wb, "r+b") as f:
        f.seek(2 * 512)
        f.write(b"GGNET-SECTOR2-updated\r\n\0")
    [stopped] = await sessions.stop_sessions(prov, admin, ["pc01"], apply=True)
    assert stopped.ok, stopped.message
    versions = await images.list_versions(prov, admin, "disk")
    active = [v for v in versions if v.is_active]
    assert [v.number for v in active] == [2]
    assert written_token(images.version_path(prov.settings, active[0])) == sector_marker("updated")


async def test_apply_refused_for_a_normal_session(prov: Core, admin: Actor) -> None:
    await sessions.start_sessions(prov, admin, ["pc01"])
    [result] = await sessions.stop_sessions(prov, admin, ["pc01"], apply=True)
    assert not result.ok and "only a maintenance session" in result.message
    assert await _states(prov, admin) == {"pc01": "active"}


async def test_many_machines_start_with_bounded_parallelism(prov: Core, admin: Actor) -> None:
    for n in range(4, 10):
        await machines.add_machine(prov, admin, name=f"pc0{n}", mac=f"52:54:00:5e:00:0{n}")
        await images.assign_image(prov, admin, f"pc0{n}", "disk", None)
    results = await sessions.start_sessions(prov, admin, [], all_machines=True, parallel=3)
    assert len(results) == 9 and all(r.ok for r in results), [r.message for r in results if not r.ok]
    assert len(await _target_iqns(prov)) == 9
    stopped = await sessions.stop_sessions(prov, admin, [], all_machines=True, parallel=3)
    assert all(r.ok for r in stopped)
    assert await _target_iqns(prov) == set()


async def test_reconcile_repairs_only_what_ggnet_owns(
    prov: Core, admin: Actor, tgtd_daemon: TgtDaemon, tmp_path: Path
) -> None:
    await sessions.start_sessions(prov, admin, ["pc01", "pc02"])
    backend, _ = await prov.target_backend()
    # drift: pc01's target vanished, a stale ggnet target and a foreign target exist, a stray writeback
    await backend.delete_target("iqn.2024-01.lan.ggnet:pc01")
    stale_file = make_boot_disk(tmp_path / "stale.raw", 1)
    from core.iscsi.base import LunSpec, TargetSpec

    await backend.create_target(
        TargetSpec(
            "iqn.2024-01.lan.ggnet:gone",
            (LunSpec(backend.first_lun, stale_file),),
            "iqn.2024-01.lan.x:y",
            "gone",
            "abcdefgh12345678",
            "127.0.0.1",
            tgtd_daemon.portal_port,
        )
    )
    await backend.create_target(
        TargetSpec(
            "iqn.2020-01.com.example:foreign",
            (LunSpec(backend.first_lun, stale_file),),
            "iqn.2024-01.lan.x:z",
            "foreign",
            "abcdefgh12345678",
            "127.0.0.1",
            tgtd_daemon.portal_port,
        )
    )
    stray = prov.settings.data_dir / "writebacks" / "machine-999.raw"
    stray.write_bytes(b"x")

    dry = await targets.reconcile(prov, admin, dry_run=True)
    kinds = sorted((d.kind, d.subject) for d in dry.drift)
    assert kinds == [
        ("missing-target", "iqn.2024-01.lan.ggnet:pc01"),
        ("stray-target", "iqn.2024-01.lan.ggnet:gone"),
        ("stray-writeback", str(stray)),
    ]
    assert stray.exists()  # dry run changes nothing

    report = await targets.reconcile(prov, admin)
    assert not report.errors
    assert await _target_iqns(prov) == {
        "iqn.2024-01.lan.ggnet:pc01",
        "iqn.2024-01.lan.ggnet:pc02",
        "iqn.2020-01.com.example:foreign",
    }
    assert not stray.exists()
    assert (await targets.reconcile(prov, admin, dry_run=True)).drift == []


async def test_stop_needs_force_while_the_client_is_logged_in(prov: Core, admin: Actor, tmp_path: Path) -> None:
    why = qemu_client.available()
    if why:
        pytest.skip(why)
    await sessions.start_sessions(prov, admin, ["pc01"])

    async def try_stops() -> tuple[str, bool, list[str]]:
        [refused] = await sessions.stop_sessions(prov, admin, ["pc01"])
        listed = await sessions.list_sessions(prov, admin)
        [forced] = await sessions.stop_sessions(prov, admin, ["pc01"], force=True)
        return refused.message, forced.ok, [f"{s.machine}:{s.logged_in}" for s in listed]

    result = await qemu_client.run_client(
        qemu_client.ClientSpec(
            tmp_path / "client", "52:54:00:5e:00:01", prov.settings.tftp_root, while_booted=try_stops
        )
    )
    assert result.ok, result.reason
    refused_message, forced_ok, live = result.while_booted_result
    assert "still logged in" in refused_message and "--force" in refused_message
    assert live == ["pc01:True"]
    assert forced_ok
    assert await _target_iqns(prov) == set()


async def test_start_refused_before_anything_exists_without_a_boot_address(prov: Core, admin: Actor) -> None:
    from core.errors import Invalid

    prov.settings.portal = "0.0.0.0:3260"
    prov.settings.boot_address = None
    with pytest.raises(Invalid, match="GGNET_BOOT_ADDRESS"):
        await sessions.start_sessions(prov, admin, ["pc01"])
    assert await _states(prov, admin) == {}
    assert await _target_iqns(prov) == set()
    assert not any((prov.settings.data_dir / "writebacks").glob("machine-*.raw"))


async def test_sessions_and_reconcile_permissions(prov: Core, admin: Actor) -> None:
    """Viewers are refused before anything happens (and the refusal is audited); operators may."""
    from sqlalchemy import select

    from core.errors import PermissionDenied
    from core.models import AuditEvent, Role
    from tests.conftest import make_user

    vera = await make_user(prov, "vera", Role.VIEWER)
    oscar = await make_user(prov, "oscar", Role.OPERATOR)
    refused = [
        (sessions.start_sessions(prov, vera, ["pc01"]), "session.start"),
        (sessions.stop_sessions(prov, vera, ["pc01"]), "session.stop"),
        (targets.reconcile(prov, vera), "target.reconcile"),
    ]
    for call, action in refused:
        with pytest.raises(PermissionDenied, match="viewer 'vera' may not"):
            await call
        async with prov.db.session() as s:
            last = (await s.execute(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1))).scalar_one()
        assert (last.actor, last.action, last.outcome) == ("vera", action, "denied")
    assert await _target_iqns(prov) == set()
    assert (await targets.reconcile(prov, vera, dry_run=True)).drift == []  # reading the drift is allowed

    [started] = await sessions.start_sessions(prov, oscar, ["pc01"])
    assert started.ok
    assert (await targets.reconcile(prov, oscar)).errors == []
    [stopped] = await sessions.stop_sessions(prov, oscar, ["pc01"])
    assert stopped.ok


async def test_unknown_session_kind_is_a_clear_error(prov: Core, admin: Actor) -> None:
    from core.errors import Invalid

    with pytest.raises(Invalid, match="kind: must be one of normal, keep, maintenance"):
        await sessions.start_sessions(prov, admin, ["pc01"], kind="turbo")
    assert await _states(prov, admin) == {}
