"""Does a target accept a CHAP secret? Asked the only way tgtd allows: by trying to log in.

tgtd never shows an account's password, so the tgt backend cannot compare it with the machine's. This
module runs the security stage of an iSCSI login (RFC 7143, CHAP with MD5) in-process over TCP —
no subprocess, so the secret is in no argv — and stops there:

    -> InitiatorName, TargetName, SessionType=Normal, AuthMethod=CHAP     <- AuthMethod=CHAP
    -> CHAP_A=5                                                           <- CHAP_A, CHAP_I, CHAP_C
    -> CHAP_N, CHAP_R = MD5(CHAP_I || secret || CHAP_C)                   <- status 0 or 0x0201

Every request keeps the transit bit off, so the login never reaches operational negotiation: the
target creates no session and reinstates none (the random ISID could not match a client's anyway).
Cost: one TCP connection and three round trips on the loopback, about 1 ms, and tgtd generates a
1024-byte challenge; it logs nothing for a successful probe and one line for a refused one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct

from ..errors import BackendUnavailable

LOGIN_REQUEST = 0x03
LOGIN_RESPONSE = 0x23
REJECT = 0x3F
IMMEDIATE = 0x40
BHS = 48
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def _pdu(isid: bytes, itt: int, exp_stat_sn: int, text: dict[str, str]) -> bytes:
    """A Login Request in the security stage (CSG 0), transit off."""
    data = b"".join(f"{k}={v}".encode() + b"\0" for k, v in text.items())
    header = bytearray(BHS)
    header[0] = IMMEDIATE | LOGIN_REQUEST
    header[1] = 0  # T=0 C=0 CSG=0 (security negotiation) NSG=0
    header[5:8] = len(data).to_bytes(3, "big")
    header[8:14] = isid
    struct.pack_into(">IHxxII", header, 16, itt, 0, 0, exp_stat_sn)  # ITT, CID 0, CmdSN 0, ExpStatSN
    return bytes(header) + data + b"\0" * (-len(data) % 4)


async def _response(reader: asyncio.StreamReader) -> tuple[int, int, int, dict[str, str]]:
    """(status class, status detail, StatSN, keys) of the next Login Response."""
    header = await reader.readexactly(BHS)
    opcode = header[0] & 0x3F
    ahs, length = header[4] * 4, int.from_bytes(header[5:8], "big")
    payload = await reader.readexactly(ahs + length + (-length % 4))
    if opcode == REJECT:
        raise BackendUnavailable("the target rejected the login probe's request as malformed")
    if opcode != LOGIN_RESPONSE:
        raise BackendUnavailable(f"the target answered the login probe with opcode {opcode:#x}")
    keys: dict[str, str] = {}
    for item in payload[ahs : ahs + length].split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            keys[key] = value
    stat_sn = int.from_bytes(header[24:28], "big")
    return header[36], header[37], stat_sn, keys


def chap_response(identifier: int, secret: str, challenge: str) -> str:
    """CHAP_R for CHAP_I ``identifier`` and CHAP_C ``challenge`` ("0x..." hex or "0b..." base64)."""
    import base64

    if challenge[:2].lower() == "0x":
        raw = bytes.fromhex(challenge[2:])
    elif challenge[:2].lower() == "0b":
        raw = base64.b64decode(challenge[2:])
    else:
        raise BackendUnavailable("the target sent a CHAP challenge in an unknown encoding")
    return "0x" + hashlib.md5(bytes([identifier]) + secret.encode() + raw).hexdigest()


async def chap_accepted(
    host: str, port: int, target_iqn: str, initiator_iqn: str, username: str, secret: str, timeout: float = 5.0
) -> bool:
    """True when the target accepts ``username``/``secret`` from ``initiator_iqn``; False when it refuses
    the login (wrong secret or user, initiator not in the ACL, target offline or unknown, or no CHAP
    required). ``BackendUnavailable`` when the portal cannot be reached or answers nonsense."""
    address = _WILDCARDS.get(host.strip("[]"), host.strip("[]"))
    try:
        return await asyncio.wait_for(_probe(address, port, target_iqn, initiator_iqn, username, secret), timeout)
    except TimeoutError:
        raise BackendUnavailable(f"the portal {host}:{port} did not finish a login within {timeout:g} s") from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise BackendUnavailable(f"cannot log in to the portal {host}:{port} to check CHAP: {exc}") from None


async def _probe(host: str, port: int, target: str, initiator: str, username: str, secret: str) -> bool:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        isid = bytes([0x80]) + os.urandom(5)  # type "random" (RFC 7143 10.12.5): never a client's
        itt = int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF
        writer.write(_pdu(isid, itt, 0, {"InitiatorName": initiator, "TargetName": target,
                                          "SessionType": "Normal", "AuthMethod": "CHAP"}))  # fmt: skip
        status, _, stat_sn, keys = await _response(reader)
        if status != 0 or keys.get("AuthMethod") != "CHAP":
            return False  # refused (ACL, unknown or offline target) or it does not ask for CHAP
        writer.write(_pdu(isid, itt, stat_sn + 1, {"CHAP_A": "5"}))
        status, _, stat_sn, keys = await _response(reader)
        if status != 0 or keys.get("CHAP_A") != "5" or "CHAP_I" not in keys or "CHAP_C" not in keys:
            return False
        answer = chap_response(int(keys["CHAP_I"]), secret, keys["CHAP_C"])
        writer.write(_pdu(isid, itt, stat_sn + 1, {"CHAP_N": username, "CHAP_R": answer}))
        status, _, _, _ = await _response(reader)
        return status == 0
    finally:
        writer.close()
