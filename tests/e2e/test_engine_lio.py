"""The boot server runs by itself on kernel LIO: `ggnet serve` inside the LIO VM (lio_vm/serve.py),
stock-iPXE QEMU clients on the host boot through it, and nobody types `session start`.

Their boot sector (bootdisk.make_prev_disk) says whether the disk was fresh (GGNET-PREV-EMPTY) or
still held what the previous boot wrote (GGNET-PREV:...), and which image version it is. The tests
share one VM and run in file order: the lifecycle first, then drift made behind ggnet's back.
"""

from __future__ import annotations

import asyncio
import json
from functools import partial
from pathlib import Path

import pytest

from tests.e2e.bootdisk import PREV_EMPTY, PREV_KEPT, WRITE_OK, make_prev_disk, sector_marker
from tests.e2e.lio_vm.serve import LioGgnet
from tests.e2e.qemu_client import ClientSpec, boot_clients

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MACS = {"pc01": "52:54:00:e9:00:01", "pc02": "52:54:00:e9:00:02"}
FAIL = ("GGNET-INT13-ERR", "GGNET-SANBOOT-FAILED", "GGNET-CHAIN-FAILED", "GGNET-NOT-BOOTING")
IQN = "iqn.2024-01.lan.ggnet:pc01"


def boot_all(site: LioGgnet, tmp_path: Path, run: str, names: list[str]) -> dict[str, str]:
    specs = [
        ClientSpec(tmp_path / f"{name}-{run}", MACS[name], site.tftp_root, fail=FAIL, timeout=240,
                   while_booted=partial(site.logged_in, name))
        for name in names
    ]  # fmt: skip
    results = asyncio.run(boot_clients(specs))
    com1 = {}
    for name, result in zip(names, results, strict=True):
        assert result.ok, f"{run} {name}: {result.reason}\n{result.com2_text[-2000:]}\n{site.log_tail()}"
        assert result.while_booted_result, f"{run} {name}: its login was not recorded"
        com1[name] = result.com1_text
    return com1


def test_pcs_boot_from_lio_fresh_keep_and_a_new_version(lio_ggnet: LioGgnet, tmp_path: Path) -> None:
    site = lio_ggnet
    site.ggnet("init", "--admin", "admin")
    for name, mac in MACS.items():
        site.ggnet("machine", "add", name, "--mac", mac)
    site.ggnet("image", "import", str(make_prev_disk(tmp_path / "v1.raw", token="v1")), "--name", "desk")
    site.ggnet("machine", "set", "pc01", "--image", "desk")
    site.ggnet("machine", "set", "pc02", "--image", "desk", "--keep-writeback")
    site.start()

    # power on: both boot from LIO, each from a disk made for this boot
    first = boot_all(site, tmp_path, "first", ["pc01", "pc02"])
    for name in MACS:
        assert PREV_EMPTY in first[name] and sector_marker("v1") in first[name] and WRITE_OK in first[name]

    # reboot: the fresh machine is clean again, the keep machine finds its write
    second = boot_all(site, tmp_path, "second", ["pc01", "pc02"])
    assert PREV_EMPTY in second["pc01"]
    assert f"{PREV_KEPT}{sector_marker('v1')}" in second["pc02"]

    # a new version reaches the fresh machine at its next boot; the keep machine keeps its disk
    site.ggnet("image", "import", str(make_prev_disk(tmp_path / "v2.raw", token="v2")), "--new-version-of", "desk")
    third = boot_all(site, tmp_path, "third", ["pc01", "pc02"])
    assert sector_marker("v2") in third["pc01"] and PREV_EMPTY in third["pc01"]
    assert sector_marker("v1") in third["pc02"] and PREV_KEPT in third["pc02"]

    # the targets LIO holds are the engine's (one per machine, its ACL only), served from the VM's tmpfs
    tpg = f"target/iscsi/{IQN}/tpgt_1"
    assert site.vm.call("ls", path=f"{tpg}/acls") == ["iqn.2024-01.lan.ggnet:client.pc01"]
    assert site.vm.call("read", path=f"{tpg}/attrib/generate_node_acls").strip() == "0"
    history = json.loads(site.ggnet("boot", "history", "pc01", "--json").stdout)
    assert [b["image_version"] for b in history] == [2, 1, 1]  # newest first
    # the client reaches the VM through QEMU's user network, from its gateway
    assert all(b["login_at"] and b["login_address"] == "10.0.2.2" for b in history)


# what a pass must undo, each written straight into configfs through the agent (no ggnet involved)
TAMPER = """
tpg = CONFIGFS / "target/iscsi" / iqn / "tpgt_1"
acl = tpg / "acls" / initiator
(acl / "auth/password").write_text("tampered-secret-1")
(acl / "auth/userid").write_text("intruder")
(tpg / "enable").write_text("0")
for portal in (tpg / "np").iterdir():
    portal.rmdir()
result = None
"""

READ = """
tpg = CONFIGFS / "target/iscsi" / iqn / "tpgt_1"
acl = tpg / "acls" / initiator
result = {
    "password": (acl / "auth/password").read_text().strip(),
    "userid": (acl / "auth/userid").read_text().strip(),
    "enable": (tpg / "enable").read_text().strip(),
    "portals": sorted(p.name for p in (tpg / "np").iterdir()),
}
"""


def test_drift_made_in_configfs_is_repaired_by_the_next_pass(lio_ggnet: LioGgnet, tmp_path: Path) -> None:
    site = lio_ggnet
    if not site.running():  # the lifecycle test set the site up; alone, this one does it
        site.ggnet("init", "--admin", "admin")
        site.ggnet("machine", "add", "pc01", "--mac", MACS["pc01"])
        site.ggnet("image", "import", str(make_prev_disk(tmp_path / "v1.raw", token="v1")), "--name", "desk")
        site.ggnet("machine", "set", "pc01", "--image", "desk")
        site.start()
        site.boot_script(MACS["pc01"])  # the PC asks: its target is made
    names = {"iqn": IQN, "initiator": "iqn.2024-01.lan.ggnet:client.pc01"}
    setup = "".join(f"{k} = {v!r}\n" for k, v in names.items())
    before = site.vm.call("exec", code=setup + READ)
    assert before["enable"] == "1" and before["portals"] == [f"0.0.0.0:{site.portal_port}"]

    site.vm.call("exec", code=setup + TAMPER)
    tampered = site.vm.call("exec", code=setup + READ)
    assert tampered == {"password": "tampered-secret-1", "userid": "intruder", "enable": "0", "portals": []}

    report = json.loads(site.ggnet("reconcile", "--json").stdout)
    [drift] = [d for d in report["drift"] if d["kind"] == "target"]
    assert drift["subject"] == IQN and drift["machine"] == "pc01"
    assert set(drift["fields"]) == {"portal", "chap_user", "chap_secret", "enabled"}
    assert report["errors"] == []
    assert site.vm.call("exec", code=setup + READ) == before  # the boot's own secret again, open, on its portal

    # and the next pass finds nothing left to do
    again = json.loads(site.ggnet("reconcile", "--json").stdout)
    assert [d for d in again["drift"] if d["kind"] == "target"] == []
