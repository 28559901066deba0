"""Diskless QEMU/iPXE clients boot from targets that TgtBackend created on a private tgtd.

The boot scripts are written by hand here (the boot-file renderer is tested on its own): boot.ipxe
chains ``${mac:hexhyp}.ipxe``, which sets the initiator IQN and CHAP credentials and sanboots
``iscsi:10.0.2.2::<port>:<lun>:<target iqn>`` (10.0.2.2 is the host in QEMU's user network).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.iscsi.base import LunSpec, ObservedTarget, TargetSpec
from core.iscsi.tgt import TgtBackend
from tests.e2e import qemu_client
from tests.e2e.bootdisk import (
    BOOT_OK,
    WRITE_OK,
    make_boot_disk,
    sector_marker,
    written_token,
)
from tests.e2e.qemu_client import ClientSpec, boot_clients
from tests.e2e.tgtd import TgtDaemon

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(qemu_client.available() is not None, reason=str(qemu_client.available())),
]

SANBOOT_FAILED = "GGNET-SANBOOT-FAILED"
BOOT_IPXE = """#!ipxe
chain ${mac:hexhyp}.ipxe || goto unknown
exit
:unknown
echo GGNET-CHAIN-FAILED
"""


def machine_spec(daemon: TgtDaemon, disks: Path, name: str) -> TargetSpec:
    return TargetSpec(
        iqn=f"iqn.2024-01.lan.ggnet:{name}",
        luns=(LunSpec(1, make_boot_disk(disks / f"{name}.raw", size_mib=8, token=name)),),
        initiator_iqn=f"iqn.2024-01.lan.ggnet.client:{name}",
        chap_username=f"ggnet-{name}",
        chap_secret=f"chap-{name}-s3cr3t",
        portal_host=daemon.portal_host,
        portal_port=daemon.portal_port,
    )


def write_client_script(
    tftp: Path, mac: str, daemon: TgtDaemon, lun: int, target_iqn: str,
    initiator_iqn: str, username: str | None = None, password: str | None = None,
) -> None:  # fmt: skip
    lines = ["#!ipxe", f"set initiator-iqn {initiator_iqn}"]
    if username is not None:
        lines += [f"set username {username}", f"set password {password}"]
    lines += [
        f"sanboot iscsi:10.0.2.2::{daemon.portal_port}:{lun}:{target_iqn} || goto failed",
        ":failed",
        f"echo {SANBOOT_FAILED}",
        "exit 1",
    ]
    (tftp / f"{mac.replace(':', '-')}.ipxe").write_text("\n".join(lines) + "\n")


@pytest.fixture
def tftp(tmp_path: Path) -> Path:
    root = tmp_path / "tftp"
    root.mkdir()
    (root / "boot.ipxe").write_text(BOOT_IPXE)
    return root


async def test_two_machines_boot_their_own_disks_at_once(tgtd_daemon: TgtDaemon, tftp: Path, tmp_path: Path):
    backend = TgtBackend(tgtd_daemon.control_port)
    machines = {"pc01": "52:54:00:6e:00:01", "pc02": "52:54:00:6e:00:02"}
    specs = {name: machine_spec(tgtd_daemon, tmp_path, name) for name in machines}
    for name, spec in specs.items():
        await backend.apply(spec)
        write_client_script(tftp, machines[name], tgtd_daemon, backend.first_lun, spec.iqn,
                            spec.initiator_iqn, spec.chap_username, spec.chap_secret)  # fmt: skip

    async def reapply_and_list() -> list[ObservedTarget]:
        # what the engine's pass does to a running machine: apply again (idempotent) while it is logged in
        await backend.apply(specs["pc01"])
        return list((await backend.observe()).values())

    async def delete_while_logged_in() -> list[ObservedTarget]:
        await backend.delete(specs["pc02"].iqn)  # forced: stopping a session with --force
        return list((await backend.observe()).values())

    results = await boot_clients([
        ClientSpec(tmp_path / "pc01", machines["pc01"], tftp, while_booted=reapply_and_list),
        ClientSpec(tmp_path / "pc02", machines["pc02"], tftp, while_booted=delete_while_logged_in),
    ])  # fmt: skip

    for name, result in zip(machines, results, strict=False):
        print(f"{name}: {result.reason} after {result.elapsed:.2f} s")
        assert result.ok, f"{name}: {result.reason}\nCOM1:\n{result.com1_text}\nCOM2:\n{result.com2_text}"
        assert result.com1_text.split() == [BOOT_OK, sector_marker(name), WRITE_OK]
        # the write reached this machine's own backing file
        assert written_token(specs[name].luns[0].backing_file) == sector_marker(name)

    # pc01 is still logged in (the backend lists its session), and its target is unchanged
    seen = {t.iqn: t for t in results[0].while_booted_result}
    pc01 = seen[specs["pc01"].iqn]
    assert [s.initiator_iqn for s in pc01.sessions] == [specs["pc01"].initiator_iqn]
    assert pc01.sessions[0].address  # the client's address as tgtd sees it (NATed by QEMU)
    assert (pc01.luns, pc01.acls) == (
        {1: str(specs["pc01"].luns[0].backing_file)},
        [specs["pc01"].initiator_iqn],
    )
    # pc02's target went away although its client was logged in
    assert [t.iqn for t in results[1].while_booted_result] == [specs["pc01"].iqn]


async def test_wrong_initiator_and_missing_or_wrong_chap_are_refused(
    tgtd_daemon: TgtDaemon, tftp: Path, tmp_path: Path
):
    backend = TgtBackend(tgtd_daemon.control_port)
    pc01 = machine_spec(tgtd_daemon, tmp_path, "pc01")
    pc02 = machine_spec(tgtd_daemon, tmp_path, "pc02")
    await backend.apply(pc01)
    await backend.apply(pc02)
    lun = backend.first_lun
    clients = {
        # pc02 presents its own IQN at pc01's target, even with pc01's CHAP secret: the ACL refuses it
        "intruder": ("52:54:00:6e:00:10", (pc01.iqn, pc02.initiator_iqn, pc01.chap_username, pc01.chap_secret)),
        # pc01's IQN but no CHAP credentials
        "no-chap": ("52:54:00:6e:00:11", (pc01.iqn, pc01.initiator_iqn, None, None)),
        # pc01's IQN and user, wrong secret
        "wrong-secret": ("52:54:00:6e:00:12", (pc01.iqn, pc01.initiator_iqn, pc01.chap_username, "not-the-secret")),
        # the control: pc01 itself, at the same time, gets in
        "pc01": ("52:54:00:6e:00:13", (pc01.iqn, pc01.initiator_iqn, pc01.chap_username, pc01.chap_secret)),
    }
    for mac, (target_iqn, initiator, user, secret) in clients.values():
        write_client_script(tftp, mac, tgtd_daemon, lun, target_iqn, initiator, user, secret)

    results = dict(zip(clients, await boot_clients(
        [ClientSpec(tmp_path / name, mac, tftp) for name, (mac, _) in clients.items()]
    ), strict=False))  # fmt: skip

    # iPXE's own words say why (Debian 12's ipxe-qemu): tgtd hides a target from an initiator its ACL
    # does not name; the login without credentials and the one with a wrong secret are refused
    why = {
        "intruder": "Could not open SAN device: No such device",
        "no-chap": "Could not open SAN device: Error 0x430d6601",  # iPXE has no credentials to answer CHAP
        "wrong-secret": "Could not open SAN device: Operation not permitted",
    }
    for name, words in why.items():
        result = results[name]
        print(f"{name}: {result.reason} after {result.elapsed:.2f} s")
        assert result.reason == f"fail: {SANBOOT_FAILED}", f"{name}: {result.reason}\n{result.com2_text}"
        assert BOOT_OK not in result.com1_text  # the boot sector never ran
        assert words in result.com2_text, result.com2_text
    assert results["pc01"].ok, results["pc01"].reason
    print(f"pc01: {results['pc01'].reason} after {results['pc01'].elapsed:.2f} s")
    assert written_token(pc02.luns[0].backing_file) is None  # nothing reached pc02's disk
