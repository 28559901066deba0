"""End to end on kernel LIO: the project's own LioBackend provisions inside a VM (see lio_vm/), and
a diskless QEMU client with the stock iPXE ROM sanboots from it — and nothing else gets in.

One VM serves every test of this module (they run in file order): the good client boots and
writes, wrong initiators and wrong secrets are refused, then the target is replaced and deleted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.iscsi.base import LunSpec, TargetSpec
from core.iscsi.lio import backstore_name
from tests.e2e import qemu_client
from tests.e2e.bootdisk import make_boot_disk, sector_marker, written_token
from tests.e2e.lio_vm import LioVm, LioVmError, ensure_initramfs, ensure_kernel, missing_prerequisites
from tests.e2e.qemu_client import ClientSpec, boot_clients, run_client

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TARGET = "iqn.2024-01.lan.ggnet:pc01"
INITIATOR = "iqn.2024-01.lan.ggnet.client:pc01"
USERNAME = "pc01"
SECRET = "pc01-chap-secret"  # 16 characters, what Windows' initiator also accepts
TOKEN = "lio-pc01"
MAC = "52:54:00:4c:10:01"
SANBOOT_FAILED = "GGNET-SANBOOT-FAILED"


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"the kernel-LIO end-to-end test must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LioVm]:
    reason = missing_prerequisites() or qemu_client.available()
    if reason:
        _unavailable(reason)
    started = time.monotonic()
    try:
        ensure_initramfs(ensure_kernel())  # downloads Debian's kernel on the first run, then cached
    except (LioVmError, OSError) as exc:
        _unavailable(f"cannot prepare the LIO VM's kernel: {exc}")
    prepared = time.monotonic() - started
    with LioVm(tmp_path_factory.mktemp("liovm")) as machine:
        print(f"\nLIO VM: kernel and initramfs {prepared:.1f} s, then {machine.timings}")
        yield machine


def spec_for(vm: LioVm, initiator: str = INITIATOR) -> TargetSpec:
    return TargetSpec(
        iqn=TARGET,
        luns=(LunSpec(0, vm.workdir / "pc01.img"),),  # the work directory is the VM's read-write 9p share
        initiator_iqn=initiator,
        chap_username=USERNAME,
        chap_secret=SECRET,
        portal_host="0.0.0.0",  # inside the VM; QEMU forwards 127.0.0.1:<vm.port> on the host to it
        portal_port=3260,
    )


def as_json(spec: TargetSpec) -> dict[str, object]:
    data = dataclasses.asdict(spec)
    data["luns"] = [[lun.lun, str(lun.backing_file)] for lun in spec.luns]
    return data


def tftp_root(path: Path, port: int, mac: str, initiator: str, secret: str) -> Path:
    """boot.ipxe chaining the per-MAC script, as ggnet renders them (written by hand here)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "boot.ipxe").write_text("#!ipxe\nchain ${mac:hexhyp}.ipxe || goto failed\nexit\n"
                                    ":failed\necho GGNET-CHAIN-FAILED\n")  # fmt: skip
    (path / f"{mac.replace(':', '-')}.ipxe").write_text(
        "#!ipxe\n"
        f"set initiator-iqn {initiator}\n"
        f"set username {USERNAME}\n"
        f"set password {secret}\n"
        f"sanboot iscsi:10.0.2.2::{port}:0:{TARGET} || goto failed\n"
        ":failed\n"
        f"echo {SANBOOT_FAILED}\n"
        "exit 1\n"
    )
    return path


async def test_client_boots_from_lio_and_its_write_lands_in_the_host_file(vm: LioVm, tmp_path: Path) -> None:
    assert vm.call("health")["ok"] is True
    spec = spec_for(vm)
    make_boot_disk(spec.luns[0].backing_file, 8, TOKEN)
    vm.call("apply", spec=as_json(spec))
    vm.call("apply", spec=as_json(spec))  # the same spec again: nothing changes
    tpg = f"target/iscsi/{TARGET}/tpgt_1"
    assert vm.call("read", path=f"{tpg}/attrib/generate_node_acls").strip() == "0"  # never demo mode
    assert vm.call("read", path=f"{tpg}/attrib/authentication").strip() == "1"
    assert vm.call("read", path=f"{tpg}/enable").strip() == "1"
    assert vm.call("ls", path=f"{tpg}/acls") == [INITIATOR]

    async def list_then_delete_while_logged_in() -> tuple[object, object]:
        # what `session stop --force` does: delete the target under a logged-in client
        during = await asyncio.to_thread(targets, vm)
        await asyncio.to_thread(vm.call, "delete", iqn=TARGET)
        return during, await asyncio.to_thread(targets, vm)

    tftp = tftp_root(tmp_path / "tftp", vm.port, MAC, INITIATOR, SECRET)
    result = await run_client(ClientSpec(tmp_path / "client", MAC, tftp, while_booted=list_then_delete_while_logged_in))
    print(f"\ngood client: {result.reason} in {result.elapsed:.1f} s")

    assert result.ok, f"{result.reason}\nCOM1:\n{result.com1_text}\nCOM2:\n{result.com2_text}\n{vm.console_text()}"
    assert sector_marker(TOKEN) in result.com1_text  # LBA 1 read over iSCSI
    assert written_token(spec.luns[0].backing_file) == sector_marker(TOKEN)  # LBA 2 written, in the host's file
    during, after_delete = result.while_booted_result
    [target] = during
    assert target["iqn"] == TARGET
    assert target["luns"] == {"0": str(spec.luns[0].backing_file)}
    assert target["acls"] == [INITIATOR]
    assert target["portals"] == ["0.0.0.0:3260"]
    # the client's connection reaches the VM through QEMU's user network, from its gateway
    assert target["sessions"] == [{"initiator_iqn": INITIATOR, "address": "10.0.2.2"}]
    assert after_delete == []
    assert _fileio_backstores(vm) == []


async def test_wrong_initiator_and_wrong_secret_are_refused(vm: LioVm, tmp_path: Path) -> None:
    spec = spec_for(vm)
    make_boot_disk(spec.luns[0].backing_file, 8, TOKEN)  # fresh: LBA 2 empty again
    vm.call("apply", spec=as_json(spec))
    intruder = "iqn.2024-01.lan.ggnet.client:pc02"
    clients = [
        # another machine's IQN with pc01's (leaked) CHAP secret: the ACL keeps it out
        ClientSpec(tmp_path / "intruder", "52:54:00:4c:10:02",
                   tftp_root(tmp_path / "tftp-intruder", vm.port, "52:54:00:4c:10:02", intruder, SECRET)),
        # pc01's IQN without the secret: CHAP keeps it out
        ClientSpec(tmp_path / "no-secret", "52:54:00:4c:10:03",
                   tftp_root(tmp_path / "tftp-no-secret", vm.port, "52:54:00:4c:10:03", INITIATOR, "wrong-secret-123")),
    ]  # fmt: skip
    intruder_result, no_secret_result = await boot_clients(clients)
    print(f"\nrefused clients: {intruder_result.elapsed:.1f} s, {no_secret_result.elapsed:.1f} s")

    for result in (intruder_result, no_secret_result):
        assert result.reason == f"fail: {SANBOOT_FAILED}", f"{result.reason}\n{result.com2_text}"
        assert "Could not open SAN device" in result.com2_text  # iPXE's own words
        assert sector_marker(TOKEN) not in result.com1_text
    assert written_token(spec.luns[0].backing_file) is None
    # and the kernel says why: the ACL for one, CHAP for the other
    assert f"{intruder} is not authorized" in vm.console_text()
    assert "Security negotiation failed" in vm.console_text()


async def test_a_differing_target_is_replaced_and_delete_removes_everything(vm: LioVm) -> None:
    spec = spec_for(vm)
    make_boot_disk(spec.luns[0].backing_file, 8, TOKEN)
    vm.call("apply", spec=as_json(spec))
    other = spec_for(vm, initiator="iqn.2024-01.lan.ggnet.client:pc01-new")
    vm.call("apply", spec=as_json(other))
    [target] = targets(vm)
    assert target["acls"] == [other.initiator_iqn]
    assert _fileio_backstores(vm) == [backstore_name(TARGET, 0)]  # changed in place: the same backstore

    # a neighbour, to show that deleting one target leaves the others alone
    neighbour = dataclasses.replace(
        spec, iqn="iqn.2024-01.lan.ggnet:pc02", luns=(LunSpec(0, vm.workdir / "pc02.img"),),
        initiator_iqn="iqn.2024-01.lan.ggnet.client:pc02",
    )  # fmt: skip
    make_boot_disk(neighbour.luns[0].backing_file, 8, "pc02")
    vm.call("apply", spec=as_json(neighbour))
    assert sorted(t["iqn"] for t in targets(vm)) == [TARGET, neighbour.iqn]

    vm.call("delete", iqn=TARGET.replace("ggnet:pc01", "GGNET:PC01"))  # IQNs compare case-insensitively
    [left] = targets(vm)
    assert (left["iqn"], left["acls"], left["luns"]) == (
        neighbour.iqn, [neighbour.initiator_iqn], {"0": str(neighbour.luns[0].backing_file)}
    )  # fmt: skip
    assert TARGET not in vm.call("ls", path="target/iscsi")
    assert _fileio_backstores(vm) == [backstore_name(neighbour.iqn, 0)]
    vm.call("delete", iqn=TARGET)  # already gone: fine
    vm.call("delete", iqn=neighbour.iqn)
    assert targets(vm) == [] and _fileio_backstores(vm) == []
    assert spec.luns[0].backing_file.is_file()  # the writeback is the caller's to discard

    # a portal the kernel refuses (settings validation keeps such an address out; here it makes the
    # creation fail midway, after the backstore, target, LUN and ACL): nothing half-built stays behind
    unbindable = dataclasses.replace(spec, portal_host="256.0.0.1")
    with pytest.raises(LioVmError, match="BackendUnavailable: LIO could not apply target"):
        vm.call("apply", spec=as_json(unbindable))
    assert targets(vm) == []
    assert backstore_name(TARGET, 0) not in _fileio_backstores(vm)

    # a missing writeback is refused before anything changes: the existing target stays as it was
    vm.call("apply", spec=as_json(spec))
    with pytest.raises(LioVmError, match="NotFound: writeback .*missing.img does not exist"):
        vm.call("apply", spec=as_json(dataclasses.replace(spec, luns=(LunSpec(0, vm.workdir / "missing.img"),))))
    [kept] = targets(vm)
    assert (kept["luns"], kept["acls"]) == ({"0": str(spec.luns[0].backing_file)}, [INITIATOR])
    vm.call("delete", iqn=TARGET)
    assert targets(vm) == [] and _fileio_backstores(vm) == []


def targets(vm: LioVm) -> list[dict]:
    """The VM's targets as the backend observes them."""
    return list(vm.call("observe").values())


def _fileio_backstores(vm: LioVm) -> list[str]:
    names: list[str] = []
    for hba in vm.call("ls", path="target/core"):
        if hba.startswith("fileio_"):
            names += [n for n in vm.call("ls", path=f"target/core/{hba}") if n != "hba_info" and n != "hba_mode"]
    return names
