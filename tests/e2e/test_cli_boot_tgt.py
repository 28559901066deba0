"""The operator's path, end to end, on tgtd: only the `ggnet` command line and `ggnet serve`.

init → machine add (the clients' MACs) → image import (a boot-sector disk given as qcow2) →
machine set --image → session start (prepared by the command itself: no engine runs yet) →
ggnet serve → two diskless QEMU clients with the stock iPXE ROM boot their own writebacks at the
same time and prove a read and a write on COM1 → session stop takes pc01 offline → a disabled
machine is refused → tgtd restarts empty → `ggnet reconcile` (answered by serve) restores the
target of pc02's current boot.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from functools import partial
from pathlib import Path

import pytest

from tests.cli import ggnet_command
from tests.e2e import qemu_client
from tests.e2e.bootdisk import WRITE_OK, make_boot_disk, sector_marker, written_token
from tests.e2e.qemu_client import ClientSpec, boot_clients, run_client
from tests.e2e.serve import GgnetServe, logged_in
from tests.e2e.tgtd import TgtDaemon, free_tcp_port

pytestmark = pytest.mark.e2e

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
        "GGNET_HTTP_ADDRESS": f"127.0.0.1:{free_tcp_port()}",
        "GGNET_RESERVED_SPACE": "1M",
        "GGNET_USER": "admin",
        "GGNET_PASSWORD": PASSWORD,
        "GGNET_NEW_PASSWORD": PASSWORD,
    }


def ggnet(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(ggnet_command(list(args)), env=env, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"ggnet {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def client(tmp_path: Path, env: dict[str, str], name: str, run: str, **kw: object) -> ClientSpec:
    return ClientSpec(tmp_path / f"{name}-{run}", MACS[name], Path(env["GGNET_TFTP_ROOT"]), **kw)  # type: ignore[arg-type]


def writeback_of(env: dict[str, str], name: str) -> Path:
    """The writeback the machine's current target serves."""
    targets = json.loads(ggnet(env, "target", "list", "--json").stdout)
    [target] = [t for t in targets if t["machine"] == name]
    [path] = [p for p in target["luns"].values() if p]
    return Path(path)


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
    started = ggnet(env, "session", "start", *MACS)  # no engine runs: the command runs one pass itself
    assert "pc01: ready" in started.stdout and "pc02: ready" in started.stdout

    targets = json.loads(ggnet(env, "target", "list", "--json").stdout)
    assert {t["machine"] for t in targets} == {"pc01", "pc02"}
    for t in targets:  # each target admits exactly its own machine's initiator
        assert t["acls"] == [f"iqn.2024-01.lan.ggnet:client.{t['machine']}"]

    serve = GgnetServe(env, tmp_path / "serve.log").start()
    try:
        # both clients boot their own disks at the same time (and stay on until their login is recorded)
        results = asyncio.run(
            boot_clients([client(tmp_path, env, n, "first", while_booted=partial(logged_in, env, n)) for n in MACS])
        )
        for name, result in zip(MACS, results, strict=True):
            assert result.ok, f"{name}: {result.reason}\n{result.com2_text[-2000:]}"
            assert result.while_booted_result, f"{name}: no login recorded"
            assert sector_marker("e2e") in result.com1_text
            assert written_token(writeback_of(env, name)) == sector_marker("e2e")  # in its own writeback
        assert written_token(raw) is None  # ... and never in the image

        current = json.loads(ggnet(env, "session", "list", "--json").stdout)
        assert {(s["machine"], s["state"]) for s in current} == {("pc01", "ready"), ("pc02", "ready")}

        # the clients are off: the engine sees them log out within seconds
        for _ in range(150):
            current = json.loads(ggnet(env, "session", "list", "--json").stdout)
            if not any(s["logged_in"] for s in current):
                break
            time.sleep(0.2)
        assert not any(s["logged_in"] for s in current), current
        history = json.loads(ggnet(env, "boot", "history", "pc01", "--json").stdout)
        assert history[0]["login_at"] and history[0]["logout_at"] and history[0]["login_address"] == "127.0.0.1"

        # taken offline: its target and fresh writeback go
        stopped = ggnet(env, "session", "stop", "pc01")
        assert "pc01: taken offline" in stopped.stdout
        assert {t["machine"] for t in json.loads(ggnet(env, "target", "list", "--json").stdout)} == {"pc02"}

        # a disabled machine is refused on its screen
        ggnet(env, "machine", "set", "pc01", "--disable")
        refused = asyncio.run(
            run_client(client(tmp_path, env, "pc01", "disabled", timeout=60, fail=("GGNET-NOT-BOOTING",)))
        )
        assert refused.reason == "fail: GGNET-NOT-BOOTING" and WRITE_OK not in refused.com1_text

        # the target service restarts empty; reconcile (answered by serve's engine) restores pc02's target
        tgtd_daemon.restart_empty()
        assert json.loads(ggnet(env, "target", "list", "--json").stdout) == []
        dry = ggnet(env, "reconcile", "--dry-run")
        assert "target iqn.2024-01.lan.ggnet:pc02 (missing)" in dry.stdout
        ggnet(env, "reconcile")
        assert {t["machine"] for t in json.loads(ggnet(env, "target", "list", "--json").stdout)} == {"pc02"}
    finally:
        serve.stop()
