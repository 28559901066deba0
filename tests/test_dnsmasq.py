"""dnsmasq configuration: golden files, checked by the real ``dnsmasq --test``, injection refused,
and the `ggnet boot dnsmasq` command."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from core.auth import Actor
from core.boot import dnsmasq
from core.boot.dnsmasq import Host
from core.context import Core
from core.errors import Invalid, PermissionDenied
from core.models import AuditEvent
from core.services import boot, machines
from tests.e2e.tgtd import TgtDaemon, tgtd_daemon

from .test_boot_files import assert_golden

__all__ = ["tgtd_daemon"]  # the fixture, imported for the end-to-end test

TFTP = Path("/srv/ggnet/tftp")
HOSTS = [
    Host("pc01", "52:54:00:aa:00:01", "192.168.1.21", "bios"),
    Host("pc02", "52:54:00:aa:00:02", None, "uefi"),
    Host("pc03", "52:54:00:aa:00:03", "192.168.1.23", "uefi-secure"),
    Host("pc04", "52:54:00:aa:00:04", None, "uefi-secure"),
]

needs_dnsmasq = pytest.mark.skipif(
    shutil.which("dnsmasq") is None and not Path("/usr/sbin/dnsmasq").exists(),
    reason="dnsmasq is not installed (Debian package dnsmasq-base; scripts/test.sh installs it)",
)


def options(mode: str, **extra: object) -> dnsmasq.Options:
    return dnsmasq.parse_options(mode=mode, tftp_root=TFTP, subnet="192.168.1.0/24", interface="eth1", **extra)


def full_options() -> dnsmasq.Options:
    return options("full", range="192.168.1.100-192.168.1.200", router="192.168.1.1", dns=["192.168.1.1", "9.9.9.9"])


@needs_dnsmasq
async def test_proxy_mode_golden_and_accepted_by_dnsmasq() -> None:
    text = dnsmasq.render(options("proxy"), HOSTS)
    assert_golden("dnsmasq-proxy.conf", text)
    assert "dhcp-range=192.168.1.0,proxy,255.255.255.0" in text
    assert 'pxe-service=tag:!ggnet-ipxe,x86PC,"ggnet: load iPXE",undionly.kpxe' in text
    assert "dhcp-host=52:54:00:aa:00:03,set:ggnet-secure" in text.splitlines()
    assert "192.168.1.21" not in text  # no reservations in proxy mode
    assert await dnsmasq.test_config(text) is True


@needs_dnsmasq
async def test_full_mode_golden_and_accepted_by_dnsmasq() -> None:
    text = dnsmasq.render(full_options(), HOSTS)
    assert_golden("dnsmasq-full.conf", text)
    lines = text.splitlines()
    assert "dhcp-host=52:54:00:aa:00:01,192.168.1.21,pc01" in lines
    assert "dhcp-host=52:54:00:aa:00:03,set:ggnet-secure,192.168.1.23,pc03" in lines
    assert "dhcp-boot=tag:!ggnet-ipxe,tag:!ggnet-efi,undionly.kpxe" in lines
    assert "dhcp-boot=tag:ggnet-ipxe,boot.ipxe" in lines
    assert "tftp-root=/srv/ggnet/tftp" in lines and "enable-tftp" in lines
    assert await dnsmasq.test_config(text) is True


@needs_dnsmasq
async def test_reservations_only_and_snponly_accepted_by_dnsmasq() -> None:
    text = dnsmasq.render(options("full", uefi_binary="snponly.efi"), HOSTS)
    assert "dhcp-range=192.168.1.0,static,255.255.255.0,12h" in text
    assert "tag:ggnet-secure,snponly-shim.efi" in text
    assert await dnsmasq.test_config(text) is True


@needs_dnsmasq
async def test_dnsmasq_test_really_refuses_a_broken_file() -> None:
    """The check is only worth something if dnsmasq --test says no to a bad file."""
    text = dnsmasq.render(options("proxy"), HOSTS) + "dhcp-range=not-an-address,proxy\n"
    with pytest.raises(Invalid, match="dnsmasq refused the configuration"):
        await dnsmasq.test_config(text)


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(interface="eth0\ndhcp-script=/bin/sh"), "interface"),
        (dict(interface="eth0,lo"), "interface"),
        (dict(interface="eth0 #"), "interface"),
        (dict(tftp_root=Path("/srv/tftp\nenable-ra")), "tftp_root"),
        (dict(tftp_root=Path("/srv/tftp,eth0")), "tftp_root"),
        (dict(tftp_root=Path("/srv/my tftp")), "tftp_root"),
        (dict(tftp_root=Path("relative/tftp")), "tftp_root"),
        (dict(subnet="192.168.1.0/24\nport=53"), "subnet"),
        (dict(subnet="192.168.1.0/31"), "subnet"),
        (dict(mode="full", range="192.168.2.1-192.168.2.9"), "range"),
        (dict(mode="full", range="192.168.1.50-192.168.1.10"), "range"),
        (dict(mode="full", router="192.168.1.1\ndhcp-script=/bin/sh"), "router"),
        (dict(mode="full", dns=["1.1.1.1,8.8.8.8"]), "dns"),
        (dict(range="192.168.1.100-192.168.1.200"), "range"),  # proxy mode has no pool
        (dict(uefi_binary="../../etc/shadow"), "uefi_binary"),
        (dict(mode="both"), "mode"),
    ],
)
def test_unsafe_options_are_refused(change: dict[str, object], field: str) -> None:
    values: dict[str, object] = dict(mode="proxy", tftp_root=TFTP, subnet="192.168.1.0/24")
    values.update(change)
    with pytest.raises(Invalid) as refused:
        dnsmasq.parse_options(**values)  # type: ignore[arg-type]
    assert field in refused.value.errors, refused.value.errors


@pytest.mark.parametrize(
    "host",
    [
        Host("pc01,x", "52:54:00:aa:00:01", None),
        Host("pc01\ndhcp-script=/bin/sh", "52:54:00:aa:00:01", None),
        Host("pc01#", "52:54:00:aa:00:01", None),
        Host("pc01", "52:54:00:aa:00:01,192.168.1.9", None),
        Host("pc01", "52:54:00:aa:00:01", "192.168.1.21\nport=53"),
        Host("pc01", "52:54:00:aa:00:01", None, "uefi,set:x"),
    ],
)
def test_unsafe_hosts_are_refused(host: Host) -> None:
    with pytest.raises(Invalid):
        dnsmasq.render(full_options(), [host])


def test_full_mode_leaves_out_a_machine_outside_the_subnet_and_names_it() -> None:
    """Its reservation could never apply; the other machines must still get theirs."""
    outside = Host("pc09", "52:54:00:aa:00:09", "10.0.0.5")
    rendered = dnsmasq.render_config(full_options(), [*HOSTS, outside])
    assert rendered.machines == len(HOSTS)
    assert rendered.skipped == [
        "machine pc09 left out: its IP 10.0.0.5 is outside the subnet 192.168.1.0/24; "
        "change the machine's IP or the --subnet"
    ]
    assert "dhcp-host=52:54:00:aa:00:01,192.168.1.21,pc01" in rendered.text.splitlines()
    assert not [line for line in rendered.text.splitlines() if "52:54:00:aa:00:09" in line]
    assert f"# {rendered.skipped[0]}" in rendered.text.splitlines()
    assert dnsmasq.render_config(options("proxy"), [outside]).skipped == []  # proxy mode gives no addresses


# --- the service and the command ----------------------------------------------------------


async def _machines(core: Core, admin: Actor) -> None:
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:aa:00:01", ip="192.168.1.21")
    await machines.add_machine(core, admin, name="pc02", mac="52:54:00:aa:00:02", boot_mode="uefi-secure")


@needs_dnsmasq
async def test_write_dnsmasq_config_from_the_database(
    core: Core, admin: Actor, operator: Actor, tmp_path: Path
) -> None:
    await _machines(core, admin)
    (tmp_path / "etc").mkdir()
    out = tmp_path / "etc" / "ggnet-dnsmasq.conf"
    written = await boot.write_dnsmasq_config(core, operator, out, mode="full", subnet="192.168.1.0/24")
    assert written.tested and written.machines == 2
    text = out.read_text()
    assert "dhcp-host=52:54:00:aa:00:01,192.168.1.21,pc01" in text
    assert "dhcp-host=52:54:00:aa:00:02,set:ggnet-secure,pc02" in text
    assert f"tftp-root={core.settings.tftp_root}" in text
    assert out.stat().st_mode & 0o777 == 0o644 and sorted(p.name for p in out.parent.iterdir()) == [out.name]
    async with core.db.session() as session:
        events = (await session.execute(select(AuditEvent).where(AuditEvent.action == "boot.dnsmasq"))).scalars().all()
    assert [e.object_name for e in events] == [str(out)]


async def test_viewer_may_print_but_not_write(core: Core, admin: Actor, viewer: Actor, tmp_path: Path) -> None:
    await _machines(core, admin)
    text = (await boot.dnsmasq_config(core, viewer, mode="proxy", subnet="192.168.1.0/24")).text
    assert "dhcp-host=52:54:00:aa:00:02,set:ggnet-secure" in text
    with pytest.raises(PermissionDenied):
        await boot.write_dnsmasq_config(core, viewer, tmp_path / "x.conf", mode="proxy", subnet="192.168.1.0/24")
    assert not (tmp_path / "x.conf").exists()
    async with core.db.session() as session:
        denied = (await session.execute(select(AuditEvent).where(AuditEvent.outcome == "denied"))).scalars().all()
    assert [(e.action, e.actor) for e in denied] == [("boot.dnsmasq", "vera")]


@needs_dnsmasq
def test_cli_boot_commands(tmp_path: Path) -> None:
    from .cli import ADMIN_PW, as_admin, ggnet_env, ok, one_error, run_ggnet

    env = ggnet_env(tmp_path, GGNET_BOOT_ADDRESS="192.168.1.2")
    ok(run_ggnet(["init", "--admin", "admin"], env, GGNET_NEW_PASSWORD=ADMIN_PW))
    ok(as_admin(["machine", "add", "pc01", "--mac", "52:54:00:aa:00:01", "--ip", "192.168.1.21"], env))

    rendered = ok(as_admin(["boot", "render"], env)).stdout
    tftp = tmp_path / "data" / "tftp"
    assert f"{tftp}/boot.ipxe chains http://192.168.1.2:8067/boot/${{mac:hexhyp}}" in rendered
    assert "http://192.168.1.2:8067/boot/${mac:hexhyp}" in (tftp / "boot.ipxe").read_text()

    conf = tmp_path / "dnsmasq.conf"
    wrote = ok(
        as_admin(
            [
                "boot",
                "dnsmasq",
                "--mode",
                "proxy",
                "--subnet",
                "192.168.1.0/24",
                "--interface",
                "eth1",
                "--output",
                str(conf),
            ],
            env,
        )
    ).stdout
    assert "checked with dnsmasq --test" in wrote and "interface=eth1" in conf.read_text()

    one_error(
        as_admin(
            [
                "boot",
                "dnsmasq",
                "--mode",
                "proxy",
                "--subnet",
                "192.168.1.0/24",
                "--interface",
                "eth1\ndhcp-script=/bin/sh",
            ],
            env,
        ),
        "interface",
    )


# --- for real: dnsmasq serving ggnet's configuration to diskless iPXE clients -----------------
# Everything with an address other than loopback lives in a network namespace this test creates
# (ip netns add): the bridge, the clients' tap devices, dnsmasq, `ggnet serve` and the QEMU clients.
# The host's own network never sees 192.168.77.x. The namespace is deleted whatever happens.


def _network_unavailable() -> str | None:
    import os

    from tests.e2e import qemu_client

    if os.geteuid() != 0:
        return "creating a network namespace, a bridge and tap devices needs root"
    if not Path("/dev/net/tun").exists() or shutil.which("ip") is None:
        return "no /dev/net/tun or no ip command"
    if shutil.which("dnsmasq") is None and not Path("/usr/sbin/dnsmasq").exists():
        return "dnsmasq is not installed"
    return qemu_client.available()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _start_dnsmasq(inside: list[str], conf: Path, work: Path, name: str, *extra: str) -> subprocess.Popen[bytes]:
    import time

    log = work / f"{name}.log"
    proc = subprocess.Popen(
        [
            *inside,
            "dnsmasq",
            "--keep-in-foreground",
            f"--conf-file={conf}",
            "--user=root",
            "--pid-file=",
            *extra,
            f"--dhcp-leasefile={work / (name + '.leases')}",
            f"--log-facility={log}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        if (log.exists() and "started" in log.read_text()) or proc.poll() is not None:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail(f"dnsmasq ({name}) exited with {proc.returncode}: {log.read_text() if log.exists() else ''}")
    return proc


def _get_inside(inside: list[str], url: str) -> tuple[int, str]:
    """An HTTP GET from inside the namespace (this process stays in the host's)."""
    import sys

    probe = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=5); print(r.status); print(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n    print(e.code)\n"
    )
    result = subprocess.run([*inside, sys.executable, "-c", probe, url], capture_output=True, text=True, timeout=30)
    status, _, body = result.stdout.partition("\n")
    return (int(status) if status.strip().isdigit() else 0), body


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["full", "proxy"])
def test_real_dnsmasq_serves_real_ipxe_clients(
    mode: str, tmp_path: Path, tgtd_daemon: TgtDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ggnet's file run by a real dnsmasq, `ggnet serve` and two diskless QEMU clients with stock
    iPXE ROMs, all in a network namespace of this test's own.

    full: dnsmasq gives pc01 its reservation and an unknown MAC an address from the pool.
    proxy: a second, plain dnsmasq (no boot options) gives the addresses, as the LAN's router
    would; ggnet's proxy-DHCP adds the boot file. Either way each client loads boot.ipxe over
    ggnet's TFTP, which chains `ggnet serve`'s /boot/<mac>: pc01 (registered, no image) is told so
    on its screen, the unknown MAC is told it is not registered, and the engine records both.
    """
    import json
    import secrets
    import time

    from tests.e2e import qemu_client
    from tests.e2e.engine_site import engine_env, ggnet, settings_of
    from tests.e2e.qemu_client import ClientSpec
    from tests.e2e.serve import GgnetServe

    why = _network_unavailable()
    if why:
        pytest.skip(why)
    namespace = f"ggnet-dnsmasq-{secrets.token_hex(3)}"
    inside = ["ip", "netns", "exec", namespace]
    bridge, taps = "ggbr0", {"52:54:00:77:00:01": "ggtap1", "52:54:00:77:00:99": "ggtap2"}
    env = engine_env(tmp_path, tgtd_daemon, GGNET_HTTP_ADDRESS="192.168.77.1:8067", GGNET_BOOT_ADDRESS="192.168.77.1")

    async def setup() -> None:
        from core.services import users
        from tests.e2e.engine_site import PASSWORD

        core = Core.open(settings_of(env))
        try:
            await core.db.upgrade()
            await users.create_first_admin(core, "admin", PASSWORD)  # the user env's commands log in as
            admin = await users.login(core, "admin", PASSWORD)
            await machines.add_machine(core, admin, name="pc01", mac="52:54:00:77:00:01", ip="192.168.77.21")
            pool = {"range": "192.168.77.100-192.168.77.150"} if mode == "full" else {}
            written = await boot.write_dnsmasq_config(
                core, admin, tmp_path / "ggnet.conf", mode=mode, subnet="192.168.77.0/24", interface=bridge, **pool
            )
            assert written.tested
        finally:
            await core.close()

    asyncio.run(setup())
    lan_conf = tmp_path / "lan.conf"  # proxy mode: the LAN's own DHCP server, knowing nothing of booting
    lan_conf.write_text(
        f"port=0\ninterface={bridge}\nbind-interfaces\nlog-dhcp\n"
        "dhcp-range=192.168.77.100,192.168.77.150,12h\n"
        "dhcp-host=52:54:00:77:00:01,192.168.77.21\n"
    )

    original = qemu_client.qemu_command

    def in_namespace_on_tap(spec: ClientSpec, *rest: Path) -> list[str]:
        command = original(spec, *rest)
        at = command.index("-nic")
        command[at + 1] = f"tap,ifname={taps[spec.mac]},script=no,downscript=no,model=e1000,mac={spec.mac}"
        return [*inside, *command]

    monkeypatch.setattr(qemu_client, "qemu_command", in_namespace_on_tap)
    servers: list[subprocess.Popen[bytes]] = []
    serve = GgnetServe(env, tmp_path / "serve.log", prefix=inside)
    _ip("netns", "add", namespace)
    try:
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", namespace, "link", "add", bridge, "type", "bridge")
        _ip("-n", namespace, "addr", "add", "192.168.77.1/24", "dev", bridge)
        _ip("-n", namespace, "-6", "addr", "add", "fd77::1/64", "dev", bridge, "nodad")
        _ip("-n", namespace, "link", "set", bridge, "up")
        for tap in taps.values():
            _ip("-n", namespace, "tuntap", "add", "dev", tap, "mode", "tap")
            _ip("-n", namespace, "link", "set", tap, "master", bridge)
            _ip("-n", namespace, "link", "set", tap, "up")
        host_addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, timeout=30).stdout
        assert "192.168.77." not in host_addresses and bridge not in host_addresses  # all in the namespace
        serve.start(wait=False)
        deadline = time.monotonic() + 60
        while _get_inside(inside, "http://192.168.77.1:8067/healthz")[0] != 200:
            assert time.monotonic() < deadline, f"ggnet serve not healthy: {serve.log_path.read_text()[-2000:]}"
            time.sleep(0.3)
        # the engine wrote boot.ipxe; router advertisements on the side (what the generated file's
        # comment suggests): without one iPXE waits about 13 s for IPv6 before it fetches boot.ipxe
        assert "http://192.168.77.1:8067/boot/${mac:hexhyp}" in (tmp_path / "tftp" / "boot.ipxe").read_text()
        servers.append(
            _start_dnsmasq(
                inside, tmp_path / "ggnet.conf", tmp_path, "ggnet", "--enable-ra", "--dhcp-range=fd77::,ra-only"
            )
        )
        if mode == "proxy":
            servers.append(_start_dnsmasq(inside, lan_conf, tmp_path, "lan"))
        # the screen copy wraps at 80 columns: each phrase waited for fits on its first line
        no_image = "GGNET-NOT-BOOTING: no image is assigned to pc01"
        unknown = "GGNET-NOT-BOOTING: the PC with MAC 52:54:00:77:00:99 is not registered"
        failures = ("GGNET-CHAIN-FAILED", "GGNET-SANBOOT-FAILED")
        registered, stranger = asyncio.run(
            qemu_client.boot_clients(
                [
                    ClientSpec(
                        tmp_path / "pc01",
                        "52:54:00:77:00:01",
                        tmp_path / "tftp",
                        fail=(no_image, *failures),
                        timeout=120,
                    ),
                    ClientSpec(
                        tmp_path / "stranger",
                        "52:54:00:77:00:99",
                        tmp_path / "tftp",
                        fail=(unknown, *failures),
                        timeout=120,
                    ),
                ]
            )
        )
    finally:
        serve.stop()
        for proc in servers:
            if proc.poll() is None:
                proc.terminate()  # by its own handle: only the dnsmasq this test started
                proc.wait(10)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30, check=False)
    assert namespace not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    served = (tmp_path / "ggnet.log").read_text()
    context = (served[-3000:], serve.log_path.read_text()[-2000:])
    assert registered.reason == f"fail: {no_image}", (registered.reason, registered.com2_text[-2000:], context)
    assert stranger.reason == f"fail: {unknown}", (stranger.reason, stranger.com2_text[-2000:], context)
    assert "sent " in served and "boot.ipxe to 192.168.77.21" in served  # over ggnet's TFTP
    if mode == "full":
        assert "DHCPACK(" in served and "192.168.77.21 52:54:00:77:00:01 pc01" in served
    else:
        assert "DHCPACK(" not in served  # addresses came from the LAN's server
        assert "192.168.77.21 52:54:00:77:00:01" in (tmp_path / "lan.log").read_text()
    # the engine recorded both requests, with where they came from
    history = json.loads(ggnet(env, "boot", "history", "pc01", "--json").stdout)
    assert [(b["state"], b["client_address"]) for b in history][:1] == [("refused", "192.168.77.21")]
    discovered = json.loads(ggnet(env, "machine", "discovered", "--json").stdout)
    assert [d["mac"] for d in discovered] == ["52:54:00:77:00:99"]
    assert discovered[0]["last_address"].startswith("192.168.77.1")
