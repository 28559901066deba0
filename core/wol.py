"""Wake-on-LAN: the magic packet and sending it over UDP (no domain rules; see services.wol)."""

from __future__ import annotations

import asyncio
import socket

from .errors import BackendUnavailable, Invalid
from .validation import parse_host_port

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
    try:
        return parse_host_port(text, DEFAULT_PORT, "255.255.255.255:9")
    except ValueError as exc:
        raise Invalid("wol_address", str(exc)) from None


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
        except (TimeoutError, OSError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise BackendUnavailable(f"cannot send wake-on-LAN packets to {host}:{port}: {reason}") from None
