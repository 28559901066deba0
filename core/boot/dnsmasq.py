"""A dnsmasq configuration for the first step of the boot chain: PXE firmware → iPXE → boot.ipxe.

Two modes:

* ``proxy`` — another DHCP server on the LAN hands out addresses; dnsmasq only adds the boot
  information (proxy-DHCP, ``dhcp-range=<network>,proxy``), which PXE clients read from
  ``pxe-service`` lines.
* ``full`` — dnsmasq is the LAN's DHCP server: an address pool (``--range``, or reservations
  only), one ``dhcp-host`` reservation (MAC, IP, name) per machine that has an IP, and the boot
  file names in ``dhcp-boot`` lines.

Which file a client gets:

* a client that already runs iPXE (DHCP option 175, or user class "iPXE") gets ``boot.ipxe``;
* legacy BIOS firmware (client architecture 0) gets ``undionly.kpxe``;
* UEFI firmware (architecture 7 or 9) gets ``ipxe.efi`` (or ``snponly.efi``, which drives the
  NIC through the firmware's own network driver — try it when ipxe.efi has no driver for a NIC);
* a machine registered with boot mode ``uefi-secure`` gets ``ipxe-shim.efi`` (or
  ``snponly-shim.efi``): iPXE's shim, signed for Secure Boot, which then loads iPXE's signed
  ``ipxe.efi`` (``snponly.efi``) from the same directory.

Firmware does not say whether Secure Boot is on, so that one choice is made per machine, with
a dnsmasq tag set by the machine's ``dhcp-host`` line; bios/uefi need no per-machine setting
because the firmware announces its architecture.

Files the TFTP root must hold besides ggnet's scripts: ``undionly.kpxe``, ``ipxe.efi`` and
``snponly.efi`` come with Debian's ``ipxe`` package in ``/usr/lib/ipxe/`` (copy them). Debian's
builds are not signed for Secure Boot (and Debian's ``shim-signed`` only trusts loaders signed
by Debian), so for Secure Boot machines take ``ipxe-shim.efi`` and ``ipxe.efi`` (or
``snponly-shim.efi`` and ``snponly.efi``) from iPXE's signed release at
https://boot.ipxe.org/x86_64-sb/ instead — the signed ipxe.efi also boots machines without
Secure Boot.

Injection: every value is validated (MAC, IPv4, machine names, interface names, the TFTP root
path) against character sets that contain no comma, ``#``, quote, whitespace or newline, so no
value can end a line, start a comment or add a field. Refused values raise Invalid.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import Invalid
from ..files import write_output
from ..models import BootMode
from ..validation import normalize_mac, normalize_machine_name
from .ipxe import BOOT_SCRIPT

BIOS_BINARY = "undionly.kpxe"
UEFI_BINARIES = {"ipxe.efi": "ipxe-shim.efi", "snponly.efi": "snponly-shim.efi"}  # binary -> its signed shim
DEBIAN_IPXE_DIR = "/usr/lib/ipxe"
SIGNED_IPXE_URL = "https://boot.ipxe.org/x86_64-sb/"
CONFIG_MODE = 0o644
TEST_TIMEOUT = 15.0

# dnsmasq tags, prefixed so they cannot meet another file's tags in /etc/dnsmasq.d
TAG_IPXE = "ggnet-ipxe"
TAG_EFI = "ggnet-efi"
TAG_SECURE = "ggnet-secure"

_INTERFACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}\Z")
_PATH = re.compile(r"^/[A-Za-z0-9._/+-]*\Z")


@dataclass(frozen=True)
class Host:
    name: str
    mac: str
    ip: str | None
    boot_mode: str = BootMode.BIOS.value


@dataclass(frozen=True)
class Options:
    mode: Literal["proxy", "full"]
    tftp_root: Path
    subnet: ipaddress.IPv4Network
    interface: str | None = None
    pool: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None = None  # full mode dynamic range
    router: ipaddress.IPv4Address | None = None
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    uefi_binary: str = "ipxe.efi"
    lease_time: str = "12h"


def _ipv4(field_name: str, value: object) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(value).strip())
    except ValueError:
        raise Invalid(field_name, f"must be an IPv4 address such as 192.168.1.10, got {value!r}") from None


def parse_options(
    *,
    mode: str,
    tftp_root: Path,
    subnet: str | None = None,
    interface: str | None = None,
    range: str | None = None,
    router: str | None = None,
    dns: tuple[str, ...] | list[str] = (),
    uefi_binary: str = "ipxe.efi",
    **unknown: Any,
) -> Options:
    """Check the operator's choices; each refusal names the option and the rule."""
    if unknown:
        raise Invalid({k: "is not a known option" for k in unknown})
    errors: dict[str, str] = {}
    if mode not in ("proxy", "full"):
        raise Invalid("mode", "must be proxy or full")
    root = str(tftp_root)
    if not _PATH.match(root) or len(root) > 1024:
        errors["tftp_root"] = (
            f"must be an absolute path of letters, digits and '._/+-' (no spaces, commas or '#'), got {root!r}"
        )
    if interface is not None and not _INTERFACE.match(interface):
        errors["interface"] = "must be a network interface name such as eth0 (letters, digits, '_', '.', '-')"
    if uefi_binary not in UEFI_BINARIES:
        errors["uefi_binary"] = f"must be one of {', '.join(UEFI_BINARIES)}"
    if subnet is None:
        raise Invalid("subnet", "is required: the LAN the boot clients are on, such as 192.168.1.0/24")
    try:
        network = ipaddress.IPv4Network(str(subnet).strip(), strict=False)
    except ValueError:
        raise Invalid("subnet", f"must be an IPv4 network such as 192.168.1.0/24, got {subnet!r}") from None
    if network.prefixlen > 30:
        errors["subnet"] = "must have room for hosts (a prefix of /30 or shorter)"
    pool = None
    if range is not None:
        if mode != "full":
            errors["range"] = "is only used in full mode (in proxy mode another DHCP server hands out addresses)"
        else:
            start_text, sep, end_text = str(range).partition("-")
            if not sep:
                start_text, sep, end_text = str(range).partition(",")
            if not sep:
                raise Invalid("range", "must be START-END, such as 192.168.1.100-192.168.1.200")
            start, end = _ipv4("range", start_text), _ipv4("range", end_text)
            hosts = (network.network_address, network.broadcast_address)
            if start not in network or end not in network or start in hosts or end in hosts:
                errors["range"] = f"must lie inside {network} (host addresses only)"
            elif int(start) > int(end):
                errors["range"] = "must start at or below its end"
            pool = (start, end)
    gateway = None
    if router is not None:
        if mode != "full":
            errors["router"] = "is only used in full mode"
        else:
            gateway = _ipv4("router", router)
    servers = tuple(_ipv4("dns", d) for d in dns)
    if servers and mode != "full":
        errors["dns"] = "is only used in full mode"
    if errors:
        raise Invalid(errors)
    return Options(
        mode="full" if mode == "full" else "proxy",  # checked above; spelt out for the type
        tftp_root=Path(root),
        subnet=network,
        interface=interface,
        pool=pool,
        router=gateway,
        dns=servers,
        uefi_binary=uefi_binary,
    )


def _check_host(host: Host, options: Options) -> tuple[str, str, str | None, str] | str:
    """The host's checked fields, or (full mode) a sentence saying why it is left out."""
    try:
        name = normalize_machine_name(host.name)
        mac = normalize_mac(host.mac)
    except ValueError as exc:
        raise Invalid(f"machine {host.name!r}", str(exc)) from None
    if name != host.name:
        raise Invalid(f"machine {host.name!r}", "name must be stored in normal form")
    if host.boot_mode not in {m.value for m in BootMode}:
        raise Invalid(f"machine {name}", f"boot mode {host.boot_mode!r} is not bios, uefi or uefi-secure")
    ip = None
    if host.ip is not None:
        address = _ipv4(f"machine {name}", host.ip)
        if options.mode == "full" and (
            address not in options.subnet
            or address in (options.subnet.network_address, options.subnet.broadcast_address)
        ):
            # its reservation could never apply; the other machines must still boot
            return (
                f"machine {name} left out: its IP {address} is outside the subnet {options.subnet}; "
                "change the machine's IP or the --subnet"
            )
        ip = str(address)
    return name, mac, ip, host.boot_mode


@dataclass(frozen=True)
class Rendered:
    text: str
    machines: int  # machines in the file
    skipped: list[str]  # one sentence per machine left out, naming it


def render(options: Options, hosts: list[Host]) -> str:
    """The whole configuration file; deterministic for the same inputs."""
    return render_config(options, hosts).text


def render_config(options: Options, hosts: list[Host]) -> Rendered:
    """The configuration and the machines left out of it (full mode: IP outside the subnet)."""
    results = [_check_host(h, options) for h in hosts]
    checked = [r for r in results if not isinstance(r, str)]
    skipped = [r for r in results if isinstance(r, str)]
    uefi = options.uefi_binary
    shim = UEFI_BINARIES[uefi]
    net = options.subnet
    out: list[str] = [
        f"# ggnet dnsmasq configuration ({options.mode} mode), written by `ggnet boot dnsmasq`.",
        "# Regenerate it after adding machines rather than editing it by hand.",
        "#",
        f"# The TFTP root {options.tftp_root} must hold, besides the scripts ggnet writes there",
        f"# ({BOOT_SCRIPT} and one <mac>.ipxe per machine):",
        f"#   {BIOS_BINARY}  legacy BIOS clients      Debian: apt-get install ipxe; copy from {DEBIAN_IPXE_DIR}/",
        f"#   {uefi:<13}  UEFI clients             the same package and directory",
        f"#   {shim:<13}  UEFI Secure Boot clients (iPXE's signed shim; it loads {uefi})",
        f"# For Secure Boot use {shim} and {uefi} from iPXE's signed release {SIGNED_IPXE_URL}:",
        "# Debian's iPXE is not signed. The signed iPXE also boots machines without Secure Boot.",
        "#",
        "# On a LAN without IPv6 router advertisements iPXE waits about 13 s for one before it loads",
        "# boot.ipxe. If this server has an IPv6 address on the boot LAN, adding enable-ra and",
        "# dhcp-range=<its prefix>::,ra-only (e.g. fd00:1::,ra-only) removes the wait.",
        "",
        "# DHCP and TFTP only: no DNS server",
        "port=0",
    ]
    if options.interface:
        out += [f"interface={options.interface}", "bind-interfaces"]
    out += [
        "log-dhcp",
        "dhcp-no-override",
        "enable-tftp",
        f"tftp-root={options.tftp_root}",
        "",
        "# what the client runs: iPXE already (option 175 or user class iPXE), else firmware by architecture",
        f"dhcp-match=set:{TAG_IPXE},175",
        f"dhcp-userclass=set:{TAG_IPXE},iPXE",
        f"dhcp-match=set:{TAG_EFI},option:client-arch,7",
        f"dhcp-match=set:{TAG_EFI},option:client-arch,9",
        "",
    ]
    if options.mode == "proxy":
        out += [
            "# proxy-DHCP: addresses come from the LAN's own DHCP server; dnsmasq adds the boot files",
            f"dhcp-range={net.network_address},proxy,{net.netmask}",
            "",
            "# firmware PXE loads iPXE; iPXE loads the boot script",
            f'pxe-service=tag:!{TAG_IPXE},x86PC,"ggnet: load iPXE",{BIOS_BINARY}',
        ]
        for csa in ("BC_EFI", "x86-64_EFI"):
            out += [
                f'pxe-service=tag:!{TAG_IPXE},tag:!{TAG_SECURE},{csa},"ggnet: load iPXE",{uefi}',
                f'pxe-service=tag:!{TAG_IPXE},tag:{TAG_SECURE},{csa},"ggnet: load iPXE (Secure Boot)",{shim}',
            ]
        for csa in ("x86PC", "BC_EFI", "x86-64_EFI"):
            out.append(f'pxe-service=tag:{TAG_IPXE},{csa},"ggnet: boot script",{BOOT_SCRIPT}')
    else:
        out += [
            "# the only DHCP server on this LAN: answer clients whose lease it does not know (after a restart)",
            "dhcp-authoritative",
        ]
        if options.pool is not None:
            start, end = options.pool
            out += [
                "# addresses for clients without a reservation",
                f"dhcp-range={start},{end},{net.netmask},{options.lease_time}",
            ]
        else:
            out += [
                "# reservations only: machines without an IP in ggnet get no address",
                f"dhcp-range={net.network_address},static,{net.netmask},{options.lease_time}",
            ]
        if options.router is not None:
            out.append(f"dhcp-option=option:router,{options.router}")
        if options.dns:
            out.append("dhcp-option=option:dns-server," + ",".join(str(d) for d in options.dns))
        out += [
            "",
            "# firmware PXE loads iPXE; iPXE loads the boot script",
            f"dhcp-boot=tag:!{TAG_IPXE},tag:!{TAG_EFI},{BIOS_BINARY}",
            f"dhcp-boot=tag:!{TAG_IPXE},tag:{TAG_EFI},tag:!{TAG_SECURE},{uefi}",
            f"dhcp-boot=tag:!{TAG_IPXE},tag:{TAG_EFI},tag:{TAG_SECURE},{shim}",
            f"dhcp-boot=tag:{TAG_IPXE},{BOOT_SCRIPT}",
        ]
    out += ["", "# machines registered in ggnet"]
    lines = []
    for name, mac, ip, boot_mode in checked:
        fields = [mac]
        if boot_mode == BootMode.UEFI_SECURE.value:
            fields.append(f"set:{TAG_SECURE}")
        if options.mode == "full":
            fields += [ip, name] if ip else [name]
        elif len(fields) == 1:
            continue  # proxy mode: only Secure Boot machines need a line (for their tag)
        lines.append(f"dhcp-host={','.join(fields)}")
    out += lines or ["# (none)"]
    out += [f"# {reason}" for reason in skipped]  # names are checked: safe in a comment
    out.append("")
    return Rendered("\n".join(out), len(checked), skipped)


def write_config(path: Path, text: str) -> None:
    """Atomically; ``path`` must be a regular file or a new name in an existing directory."""
    write_output(path, text, mode=CONFIG_MODE)


async def test_config(text: str) -> bool:
    """Run ``dnsmasq --test`` on ``text``; Invalid with dnsmasq's message if refused.

    Returns False (nothing checked) when dnsmasq is not installed on this machine.
    """
    program = shutil.which("dnsmasq") or next(
        (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.access(p, os.X_OK)), None
    )
    if program is None:
        return False
    with tempfile.TemporaryDirectory(prefix="ggnet-dnsmasq-") as tmp:
        conf = Path(tmp) / "ggnet.conf"
        conf.write_text(text, encoding="utf-8")
        proc = await asyncio.create_subprocess_exec(
            program,
            "--test",
            f"--conf-file={conf}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), TEST_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise Invalid("dnsmasq", f"dnsmasq --test did not answer within {TEST_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        message = (err or out).decode(errors="replace").strip().replace(str(conf), "the configuration")
        raise Invalid("dnsmasq", f"dnsmasq refused the configuration: {message or f'exit status {proc.returncode}'}")
    return True
