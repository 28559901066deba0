"""The core pieces the console relies on: Wake-on-LAN and the liveness monitor."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from core.errors import Invalid, NotFound, PermissionDenied
from core.models import Role
from core.monitor import BOOTED, BOOTING, OFFLINE, ONLINE, Monitor, arp_macs, decide
from core.services import audit, machines, wol
from core.wol import magic_packet, parse_address
from tests.conftest import make_user
from tests.tui.helpers import FakeProbe


def test_magic_packet_bytes():
    packet = magic_packet("52-54-00-AA-00-01")
    assert len(packet) == 102
    assert packet[:6] == b"\xff" * 6
    assert packet[6:] == bytes.fromhex("525400aa0001") * 16
    with pytest.raises(Invalid):
        magic_packet("52:54:00")


def test_wol_address_parsing():
    assert parse_address("255.255.255.255:9") == ("255.255.255.255", 9)
    assert parse_address("10.0.0.255") == ("10.0.0.255", 9)
    with pytest.raises(Invalid) as err:
        parse_address("lan:9")
    assert "wol_address" in err.value.errors


async def test_wake_sends_packets_and_audits_once(sqlite_core):
    core = sqlite_core
    admin = await make_user(core, "root-admin", Role.ADMIN)
    viewer = await make_user(core, "vera", Role.VIEWER)
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:aa:00:01")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        core.settings.wol_address = f"127.0.0.1:{receiver.getsockname()[1]}"
        assert await wol.wake(core, admin, ["PC01"]) == ["pc01"]
        assert receiver.recv(200) == magic_packet("52:54:00:aa:00:01")
    with pytest.raises(NotFound):
        await wol.wake(core, admin, ["pc01", "ghost"])
    with pytest.raises(PermissionDenied):
        await wol.wake(core, viewer, ["pc01"])
    events, total = await audit.list_events(core, admin, action="machine.wake", outcome="ok")
    assert total == 1 and events[0].after["woken"] == ["pc01"]
    _, denied = await audit.list_events(core, admin, action="machine.wake", outcome="denied")
    assert denied == 1


def test_decide_states():
    assert decide(False, False, None) == OFFLINE
    assert decide(True, False, None) == ONLINE
    assert decide(True, False, "ready") == BOOTING
    assert decide(False, False, "preparing") == BOOTING
    assert decide(False, False, "requested") == BOOTING
    assert decide(False, False, "ready") == OFFLINE  # prepared, waiting for the PC to be switched on
    assert decide(True, True, "ready") == BOOTED


def test_arp_table_parsing(tmp_path: Path):
    table = tmp_path / "arp"
    table.write_text(
        "IP address       HW type     Flags       HW address            Mask     Device\n"
        "10.0.0.21        0x1         0x2         52:54:00:aa:00:01     *        eth0\n"
        "10.0.0.22        0x1         0x0         00:00:00:00:00:00     *        eth0\n"
    )
    assert arp_macs(table) == {"52:54:00:aa:00:01"}


PROBE_IN_A_NAMESPACE = """
import asyncio, json, subprocess, sys
from pathlib import Path
from core.monitor import Host, SystemProbe
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
probe = SystemProbe(arp_table=Path(sys.argv[1]))
hosts = [
    Host("up", "127.0.0.1", "52:54:00:aa:00:01"),
    Host("down", "10.9.9.8", "52:54:00:aa:00:02"),
    Host("arp", None, "52:54:00:AA:00:09"),
    Host("noip", None, "52:54:00:aa:00:03"),
]
print(json.dumps(sorted(asyncio.run(probe(hosts)))))
"""


def test_system_probe_pings_for_real(tmp_path: Path):
    """The real ping, in a network namespace of the test's own (only loopback, nothing routed): loopback
    answers, an address with no route does not, an ARP entry counts without a ping."""
    import json
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to ping inside a private network namespace")
    table = tmp_path / "arp"
    table.write_text("IP address HW type Flags HW address Mask Device\n10.9.9.9 0x1 0x2 52:54:00:aa:00:09 * eth0\n")
    result = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", PROBE_IN_A_NAMESPACE, str(table)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["arp", "up"]


async def test_monitor_combines_probe_and_sessions(sqlite_core):
    core = sqlite_core
    admin = await make_user(core, "root-admin", Role.ADMIN)
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:aa:00:01", ip="10.0.0.21")
    await machines.add_machine(core, admin, name="pc02", mac="52:54:00:aa:00:02")
    from core.iscsi.base import BackendHealth

    core.use_backend(None, BackendHealth(False, "no target stack in this test"))
    probe = FakeProbe({"pc01"})
    monitor = Monitor(core, probe)
    statuses = await monitor.poll(admin)
    assert statuses["pc01"].state == ONLINE and statuses["pc01"].seen_at is not None
    assert statuses["pc02"].state == OFFLINE and statuses["pc02"].seen_at is None
    assert statuses["pc01"].logged_in is None  # the target stack could not be asked
    probe.online = set()
    again = await monitor.poll(admin)
    assert again["pc01"].state == OFFLINE and again["pc01"].seen_at == statuses["pc01"].seen_at
