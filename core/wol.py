"""Wake-on-LAN: the magic packet and sending it over UDP (no domain rules; see services.wol)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from .errors import BackendUnavailable, Invalid

DEFAULT_PORT = 9


def magic_packet(mac: str) -> bytes:
    """Six 0xFF bytes, then the 6-byte MAC sixteen times (102 bytes)."""
    digits = "".join(c for c in mac if c not in ":-.").lower()
    if len(digits) != 12:
        raise Invalid("mac", f"{mac!r} is not a MAC address")
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        raise Invalid("mac", f"{mac!r} is not a MAC address") from None
    return b"\xff" * 6 + raw * 16


def parse_address(text: str) -> tuple[str, int]:
    """GGNET_WOL_ADDRESS as (IPv4, port); the port defaults to 9."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        host, port_text = text.strip(), str(DEFAULT_PORT)
    try:
        ipaddress.IPv4Address(host)
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise Invalid("wol_address", f"must be IPv4-address:port such as 255.255.255.255:9, got {text!r}") from None
    return host, port


async def send_magic_packets(macs: list[str], address: str) -> None:
    """Send one magic packet per MAC to ``address`` (broadcast allowed). Fails as a whole with the OS's reason."""
    host, port = parse_address(address)
    packets = [magic_packet(mac) for mac in macs]
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setblocking(False)
        try:
            for packet in packets:
                await asyncio.wait_for(loop.sock_sendto(sock, packet, (host, port)), timeout=2)
        except (OSError, asyncio.TimeoutError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise BackendUnavailable(f"cannot send wake-on-LAN packets to {host}:{port}: {reason}") from None
