"""The boot server runs by itself, on tgtd: nobody types `session start`.

Stock-iPXE QEMU clients chain boot.ipxe → `ggnet serve`'s /boot/<mac> → sanboot. Their boot
sector (bootdisk.make_prev_disk) says whether the disk was fresh (GGNET-PREV-EMPTY) or still held
what the previous boot wrote (GGNET-PREV:...), and which image version it is (its LBA 1 token).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from functools import partial
from pathlib import Path

import pytest

from tests.cli import ggnet_command
from tests.e2e import qemu_client
from tests.e2e.bootdisk import PREV_EMPTY, PREV_KEPT, WRITE_OK, make_prev_disk, sector_marker
from tests.e2e.qemu_client import ClientSpec, boot_clients, run_client
from tests.e2e.serve import GgnetServe, logged_in
from tests.e2e.tgtd import TgtDaemon, free_tcp_port

pytestmark = pytest.mark.e2e

PASSWORD = "e2e-admin-pass"
MACS = {"pc01": "52:54:00:e7:00:01", "pc02": "52:54:00:e7:00:02"}
STRANGER = "52:54:00:e7:00:99"
NOT_BOOTING = "GGNET-NOT-BOOTING"
FAIL = ("GGNET-INT13-ERR", "GGNET-SANBOOT-FAILED", "GGNET-CHAIN-FAILED", NOT_BOOTING)


@pytest.fixture
def env(tmp_path: Path, tgtd_daemon: TgtDaemon) -> dict[str, str]:
    why = qemu_client.available()
    if why:
        pytest.skip(why)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("GGNET_")},
        "GGNET_DATA_DIR": str(tmp_path / "data"),
        "GGNET_TFTP_ROOT": str(tmp_path / "tftp"),
        "GGNET_TARGET_BACKEND": "tgt",
        "GGNET_TGT_CONTROL_PORT": str(tgtd_daemon.control_port),
        "GGNET_PORTAL": f"127.0.0.1:{tgtd_daemon.portal_port}",
        "GGNET_HTTP_ADDRESS": f"127.0.0.1:{free_tcp_port()}",
        "GGNET_BOOT_ADDRESS": "10.0.2.2",  # the host as QEMU's user network shows it to the client
        "GGNET_RESERVED_SPACE": "1M",
        "GGNET_WOL_ADDRESS": "127.0.0.1:9",
        "GGNET_USER": "admin",
        "GGNET_PASSWORD": PASSWORD,
        "GGNET_NEW_PASSWORD": PASSWORD,
    }


@pytest.fixture
def serve(tmp_path: Path, env: dict[str, str]):  # type: ignore[no-untyped-def]
    server = GgnetServe(env, tmp_path / "serve.log")
    yield server
    server.stop()


def ggnet(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(ggnet_command(list(args)), env=env, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"ggnet {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def spec(tmp_path: Path, env: dict[str, str], mac: str, run: str, **kw: object) -> ClientSpec:
    return ClientSpec(tmp_path / f"{mac[-2:]}-{run}", mac, Path(env["GGNET_TFTP_ROOT"]), fail=FAIL, **kw)  # type: ignore[arg-type]


def boot_all(tmp_path: Path, env: dict[str, str], run: str, names: list[str]) -> dict[str, str]:
    specs = [spec(tmp_path, env, MACS[n], run, while_booted=partial(logged_in, env, n)) for n in names]
    results = asyncio.run(boot_clients(specs))
    com1 = {}
    for name, result in zip(names, results, strict=True):
        assert result.ok, f"{run} {name}: {result.reason}\n{result.com2_text[-2000:]}"
        assert result.while_booted_result, f"{run} {name}: its login was not recorded"
        com1[name] = result.com1_text
    return com1


def test_pcs_boot_by_themselves_fresh_keep_new_version_and_target_restart(
    tmp_path: Path, env: dict[str, str], serve: GgnetServe, tgtd_daemon: TgtDaemon
) -> None:
    ggnet(env, "init", "--admin", "admin")
    for name, mac in MACS.items():
        ggnet(env, "machine", "add", name, "--mac", mac)
    ggnet(env, "image", "import", str(make_prev_disk(tmp_path / "v1.raw", token="v1")), "--name", "desk")
    ggnet(env, "machine", "set", "pc01", "--image", "desk")
    ggnet(env, "machine", "set", "pc02", "--image", "desk", "--keep-writeback")
    serve.start()

    # power on: both boot, each from a disk made for this boot
    first = boot_all(tmp_path, env, "first", ["pc01", "pc02"])
    for name in MACS:
        assert PREV_EMPTY in first[name] and sector_marker("v1") in first[name] and WRITE_OK in first[name]

    # reboot: the fresh machine is clean again, the keep machine finds its write
    second = boot_all(tmp_path, env, "second", ["pc01", "pc02"])
    assert PREV_EMPTY in second["pc01"]
    assert f"{PREV_KEPT}{sector_marker('v1')}" in second["pc02"]

    # a new version reaches the fresh machine at its next boot; the keep machine keeps its disk
    ggnet(env, "image", "import", str(make_prev_disk(tmp_path / "v2.raw", token="v2")), "--new-version-of", "desk")
    third = boot_all(tmp_path, env, "third", ["pc01", "pc02"])
    assert sector_marker("v2") in third["pc01"] and PREV_EMPTY in third["pc01"]
    assert sector_marker("v1") in third["pc02"] and PREV_KEPT in third["pc02"]

    # the target service restarts empty: the next boot works without any command
    tgtd_daemon.restart_empty()
    fourth = boot_all(tmp_path, env, "fourth", ["pc01", "pc02"])
    assert PREV_EMPTY in fourth["pc01"] and sector_marker("v2") in fourth["pc01"]
    assert f"{PREV_KEPT}{sector_marker('v1')}" in fourth["pc02"]

    # the history says what each boot served
    history = json.loads(ggnet(env, "boot", "history", "pc01", "--json").stdout)
    assert len(history) == 4
    assert [b["image_version"] for b in history] == [2, 2, 1, 1]  # newest first
    assert all(b["state"] in ("ready", "ended") for b in history)
    assert all(b["login_at"] and b["login_address"] == "127.0.0.1" for b in history)


def test_refusals_are_said_on_the_clients_screen_and_create_nothing(
    tmp_path: Path, env: dict[str, str], serve: GgnetServe
) -> None:
    ggnet(env, "init", "--admin", "admin")
    ggnet(env, "machine", "add", "pc01", "--mac", MACS["pc01"])  # no image yet
    ggnet(env, "machine", "add", "pc02", "--mac", MACS["pc02"])
    ggnet(env, "image", "import", str(make_prev_disk(tmp_path / "v1.raw", token="v1")), "--name", "desk")
    ggnet(env, "machine", "set", "pc02", "--image", "desk", "--disable")
    serve.start()
    results = asyncio.run(
        boot_clients(
            [
                spec(tmp_path, env, STRANGER, "stranger", timeout=60),
                spec(tmp_path, env, MACS["pc01"], "noimage", timeout=60),
                spec(tmp_path, env, MACS["pc02"], "disabled", timeout=60),
            ]
        )
    )
    stranger, no_image, disabled = results
    assert stranger.reason == f"fail: {NOT_BOOTING}" and "is not registered" in stranger.com2_text
    assert no_image.reason == f"fail: {NOT_BOOTING}" and "no image is assigned to pc01" in no_image.com2_text
    assert disabled.reason == f"fail: {NOT_BOOTING}" and "pc02 may not boot" in disabled.com2_text
    discovered = json.loads(ggnet(env, "machine", "discovered", "--json").stdout)
    assert [d["mac"] for d in discovered] == [STRANGER]
    assert json.loads(ggnet(env, "target", "list", "--json").stdout) == []
    assert not list((Path(env["GGNET_DATA_DIR"]) / "writebacks").glob("*.raw"))

    # the disk space guard: below the reserve, boots are refused with a sentence
    serve.stop()
    serve.env = {**env, "GGNET_RESERVED_SPACE": "1000000T"}
    serve.start()
    ggnet(env, "machine", "set", "pc02", "--enable")
    low = asyncio.run(run_client(spec(tmp_path, env, MACS["pc02"], "lowspace", timeout=60)))
    assert low.reason == f"fail: {NOT_BOOTING}" and "low on disk space" in low.com2_text
    assert json.loads(ggnet(env, "target", "list", "--json").stdout) == []
