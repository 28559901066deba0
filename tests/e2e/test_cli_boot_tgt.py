"""The operator's path, end to end, on tgtd: only the `ggnet` command line provisions.

init → machine add (the clients' MACs) → image import (a boot-sector disk given as qcow2) →
machine set --image → session start → two diskless QEMU clients with the stock iPXE ROM boot
their own writebacks at the same time and prove a read and a write on COM1 → session stop →
the client no longer boots the disk → tgtd restarts empty → `ggnet reconcile` restores the
target → the client boots again.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e import qemu_client
from tests.e2e.bootdisk import WRITE_OK, make_boot_disk, sector_marker, written_token
from tests.e2e.qemu_client import ClientSpec, boot_clients, run_client
from tests.e2e.tgtd import TgtDaemon

pytestmark = pytest.mark.e2e

GGNET = str(Path(sys.executable).parent / "ggnet")
PASSWORD = "e2e-admin-pass"
MACS = {"pc01": "52:54:00:e2:00:01", "pc02": "52:54:00:e2:00:02"}


@pytest.fixture
def env(tmp_path: Path, tgtd_daemon: TgtDaemon) -> dict[str, str]:
    why = qemu_client.available()
    if why:
        pytest.skip(why)
    return {
        **os.environ,
        "GGNET_DATA_DIR": str(tmp_path / "data"),
        "GGNET_TFTP_ROOT": str(tmp_path / "tftp"),
        "GGNET_TARGET_BACKEND": "tgt",
        "GGNET_TGT_CONTROL_PORT": str(tgtd_daemon.control_port),
        "GGNET_PORTAL": f"127.0.0.1:{tgtd_daemon.portal_port}",
        "GGNET_BOOT_ADDRESS": "10.0.2.2",  # the host as QEMU's user network shows it to the client
        "GGNET_USER": "admin",
        "GGNET_PASSWORD": PASSWORD,
        "GGNET_NEW_PASSWORD": PASSWORD,
    }


def ggnet(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([GGNET, *args], env=env, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"ggnet {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def client(tmp_path: Path, env: dict[str, str], name: str, run: str, **kw: object) -> ClientSpec:
    return ClientSpec(tmp_path / f"{name}-{run}", MACS[name], Path(env["GGNET_TFTP_ROOT"]), **kw)  # type: ignore[arg-type]


def writeback_of(env: dict[str, str], name: str) -> Path:
    shown = json.loads(ggnet(env, "machine", "show", name, "--json").stdout)
    return Path(env["GGNET_DATA_DIR"]) / "writebacks" / f"machine-{shown['id']}.raw"


def test_cli_provisions_and_real_clients_boot(tmp_path: Path, env: dict[str, str], tgtd_daemon: TgtDaemon) -> None:
    raw = make_boot_disk(tmp_path / "master.raw", size_mib=8, token="e2e")
    qcow2 = tmp_path / "master.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)

    ggnet(env, "init", "--admin", "admin")
    for name, mac in MACS.items():
        ggnet(env, "machine", "add", name, "--mac", mac)
    ggnet(env, "image", "import", str(qcow2), "--name", "bootsector")
    for name in MACS:
        ggnet(env, "machine", "set", name, "--image", "bootsector")
    started = ggnet(env, "session", "start", *MACS)
    assert "pc01" in started.stdout and "pc02" in started.stdout

    targets = json.loads(ggnet(env, "target", "list", "--json").stdout)
    assert {t["machine"] for t in targets} == {"pc01", "pc02"}
    for t in targets:  # each target admits exactly its own machine's initiator
        assert t["acls"] == [f"iqn.2024-01.lan.ggnet:client.{t['machine']}"]

    # both clients boot their own disks at the same time
    results = asyncio.run(boot_clients([client(tmp_path, env, n, "first") for n in MACS]))
    for name, result in zip(MACS, results, strict=False):
        assert result.ok, f"{name}: {result.reason}\n{result.com2_text[-2000:]}"
        assert sector_marker("e2e") in result.com1_text
        assert written_token(writeback_of(env, name)) == sector_marker("e2e")  # the write landed in its own writeback
    assert written_token(raw) is None  # ... and never in the image

    sessions = json.loads(ggnet(env, "session", "list", "--json").stdout)
    assert {(s["machine"], s["state"]) for s in sessions} == {("pc01", "active"), ("pc02", "active")}

    # after stop, pc01's script no longer boots a disk
    ggnet(env, "session", "stop", "pc01")
    assert not writeback_of(env, "pc01").exists()  # a normal session's writeback is discarded
    after_stop = asyncio.run(
        run_client(
            client(tmp_path, env, "pc01", "stopped", timeout=60, fail=("GGNET-SANBOOT-FAILED", "GGNET-NO-SESSION"))
        )
    )
    assert not after_stop.ok
    assert WRITE_OK not in after_stop.com1_text

    # the target service restarts empty; reconcile restores pc02's target from the database
    tgtd_daemon.restart_empty()
    assert json.loads(ggnet(env, "target", "list", "--json").stdout) == []
    dry = ggnet(env, "reconcile", "--dry-run")
    assert "missing-target" in dry.stdout and "pc02" in dry.stdout
    ggnet(env, "reconcile")
    assert {t["machine"] for t in json.loads(ggnet(env, "target", "list", "--json").stdout)} == {"pc02"}
    again = asyncio.run(run_client(client(tmp_path, env, "pc02", "reconciled")))
    assert again.ok, again.reason

    # the audit trail names every step
    actions = {e["action"] for e in json.loads(ggnet(env, "audit", "list", "--limit", "100", "--json").stdout)}
    assert {"machine.create", "session.start", "session.stop", "target.reconcile"} <= actions
