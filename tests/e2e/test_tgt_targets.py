"""TgtBackend with real initiators logged in: a booted QEMU/iPXE client and libiscsi's iscsi-perf,
both as the same machine (one initiator IQN, two sessions) on one target.

- Both sessions keep working while the target is re-applied with a new CHAP secret (what the engine
  does at the machine's next boot request) and re-applied unchanged.
- ``delete`` removes the target while both are logged in and one is reading.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from core.iscsi.base import LunSpec, TargetSpec
from core.iscsi.diff import find_drift
from core.iscsi.tgt import TgtBackend, parse_show_target
from tests.e2e import libiscsi, qemu_client
from tests.e2e.bootdisk import BOOT_OK, WRITE_OK, make_boot_disk, sector_marker, written_token
from tests.e2e.qemu_client import ClientSpec, run_client
from tests.e2e.test_tgt_boot import BOOT_IPXE, write_client_script
from tests.e2e.tgtd import TgtDaemon

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(qemu_client.available() is not None, reason=str(qemu_client.available())),
    pytest.mark.skipif(libiscsi.unavailable() is not None, reason=str(libiscsi.unavailable())),
]

MAC = "52:54:00:6e:01:01"


def machine(daemon: TgtDaemon, tmp_path: Path) -> TargetSpec:
    return TargetSpec(
        iqn="iqn.2024-01.lan.ggnet:pc01",
        luns=(LunSpec(1, make_boot_disk(tmp_path / "pc01.raw", size_mib=64, token="pc01")),),
        initiator_iqn="iqn.2024-01.lan.ggnet.client:pc01",
        chap_username="ggnet-pc01",
        chap_secret="chap-pc01-s3cr3t",
        portal_host=daemon.portal_host,
        portal_port=daemon.portal_port,
    )


def nexuses(daemon: TgtDaemon) -> list[tuple[int, str | None]]:
    text = daemon.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "target").stdout
    return [(n.sid, n.initiator) for t in parse_show_target(text) for n in t.nexuses]


async def boot_and(daemon: TgtDaemon, tmp_path: Path, spec: TargetSpec, while_booted: Any) -> Any:
    tftp = tmp_path / "tftp"
    tftp.mkdir()
    (tftp / "boot.ipxe").write_text(BOOT_IPXE)
    write_client_script(tftp, MAC, daemon, 1, spec.iqn, spec.initiator_iqn, spec.chap_username, spec.chap_secret)
    result = await run_client(ClientSpec(tmp_path / "client", MAC, tftp, while_booted=while_booted))
    assert result.ok, f"{result.reason}\nCOM1:\n{result.com1_text}\nCOM2:\n{result.com2_text}"
    assert result.com1_text.split() == [BOOT_OK, sector_marker("pc01"), WRITE_OK]
    assert written_token(spec.luns[0].backing_file) == sector_marker("pc01")
    return result.while_booted_result


async def test_two_sessions_of_one_machine_keep_working_across_applies(tgtd_daemon: TgtDaemon, tmp_path: Path):
    backend = TgtBackend(tgtd_daemon.control_port)
    spec = machine(tgtd_daemon, tmp_path)
    assert await backend.apply(spec) == ["missing"]

    async def second_session_and_reapply() -> dict[str, Any]:
        seen: dict[str, Any] = {"booted": nexuses(tgtd_daemon)}
        reader = libiscsi.Reader(tmp_path / "perf.log", "127.0.0.1", spec.portal_port, spec.iqn, 1,
                                 spec.initiator_iqn, spec.chap_username, spec.chap_secret, in_flight=2)  # fmt: skip
        with reader:
            await asyncio.to_thread(reader.wait_reading)
            seen["both"] = nexuses(tgtd_daemon)
            before = (await backend.observe([spec.iqn]))[spec.iqn].io[1].read_bytes
            # the next boot's secret, then the same spec again: both sessions stay
            next_boot = dataclasses.replace(spec, chap_secret="next-boot-s3cr3t")
            seen["applied"] = [await backend.apply(next_boot), await backend.apply(spec)]
            seen["drift"] = await find_drift(backend, spec, (await backend.observe([spec.iqn]))[spec.iqn])
            await asyncio.sleep(1.5)  # iscsi-perf reports once a second
            seen["after"] = nexuses(tgtd_daemon)
            after = (await backend.observe([spec.iqn]))[spec.iqn]
            seen["read_more"] = after.io[1].read_bytes > before
            seen["sessions"] = after.sessions
            seen["reader_alive"] = reader.running()
            seen["reader_log"] = reader.output()
        return seen

    seen = await boot_and(tgtd_daemon, tmp_path, spec, second_session_and_reapply)
    [client] = seen["booted"]
    assert client[1] == spec.initiator_iqn and client in seen["both"]
    assert len(seen["both"]) == 2 and {i for _, i in seen["both"]} == {spec.initiator_iqn}
    assert seen["applied"] == [["chap_secret"], ["chap_secret"]] and seen["drift"] == []
    assert seen["after"] == seen["both"]  # the same two sessions: nothing logged out or in again
    assert seen["read_more"] and seen["reader_alive"], seen["reader_log"][-500:]
    assert "Read16 failed" not in seen["reader_log"]
    assert len(seen["sessions"]) == 2


async def test_delete_while_the_machine_is_booted_and_another_session_reads(tgtd_daemon: TgtDaemon, tmp_path: Path):
    backend = TgtBackend(tgtd_daemon.control_port)
    spec = machine(tgtd_daemon, tmp_path)
    await backend.apply(spec)

    async def delete_under_load() -> dict[str, Any]:
        reader = libiscsi.Reader(tmp_path / "perf.log", "127.0.0.1", spec.portal_port, spec.iqn, 1,
                                 spec.initiator_iqn, spec.chap_username, spec.chap_secret)  # fmt: skip
        with reader:
            await asyncio.to_thread(reader.wait_reading)
            logged_in = nexuses(tgtd_daemon)
            await backend.delete(spec.iqn)
            return {"logged_in": logged_in, "left": await backend.observe(), "after": nexuses(tgtd_daemon)}

    seen = await boot_and(tgtd_daemon, tmp_path, spec, delete_under_load)
    assert len(seen["logged_in"]) == 2  # the booted client and the reader, both as pc01
    assert seen["left"] == {} and seen["after"] == []
    accounts = tgtd_daemon.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "account").stdout
    assert spec.chap_username not in accounts
