"""A client of tgtd's management socket: what ``tgtadm`` does, without a process and without an argv.

tgtd (tgt 1.0.x; the layout is the same from Debian 12's 1.0.85 to 1.0.97) listens on the unix stream
socket ``/var/run/tgtd/socket.<control port>`` (``$TGT_IPC_SOCKET.<port>`` when that is set, as for
tgtadm) and answers only processes of its own user and group. One request per connection:

- request: ``struct tgtadm_req`` (usr/tgtadm.h) in host byte order — ``mode, op, lld[64], len, tid,
  sid, lun, cid, host_no, device_type, ac_dir, pack, force`` (120 bytes), where ``len`` counts the
  header plus the body — then the body: tgtadm's ``"key=value,..."`` parameters and a NUL;
- response: ``struct tgtadm_rsp`` ``err, len`` (8 bytes) and, when ``err`` is 0, ``len - 8`` bytes of
  NUL-terminated text (what tgtadm prints).

This is tgt's internal protocol, not a public API: ``tests/test_tgtd_socket.py`` compares every request
this module encodes with the bytes the installed ``tgtadm`` sends, every error sentence with what it
prints, and a socket ``show`` with tgtadm's on a live daemon, so a change in tgt fails loudly.
A request takes about 0.1 ms; tgtadm takes a fork and exec (~2 ms) and put CHAP secrets in its argv,
readable by every local user in /proc.
"""

from __future__ import annotations

import asyncio
import os
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from ..errors import BackendUnavailable

SOCKET_DIR = Path("/var/run/tgtd")
LLD_NAME_LEN = 64
NO_LUN = 0xFFFFFFFFFFFFFFFF  # tgtadm's "no --lun given" (UINT64_MAX)
MAX_BODY = 8 * 1024  # tgtd drops requests with a larger body (MAX_MGT_BUFSIZE)
# tgtd answers one request at a time and its listen backlog is 32: more connections at once only
# get dropped ("Connection lost"), so a client keeps a few in flight and queues the rest
IN_FLIGHT = 4

# struct tgtadm_req / tgtadm_rsp; every field is at its natural alignment, so "=" matches the C layout
REQUEST = struct.Struct("=ii64sIiQQIIIIII")
RESPONSE = struct.Struct("=II")
assert REQUEST.size == 120 and RESPONSE.size == 8


class Mode(IntEnum):  # enum tgtadm_mode
    SYSTEM = 0
    TARGET = 1
    DEVICE = 2  # tgtadm's "logicalunit"
    PORTAL = 3
    LLD = 4
    SESSION = 5
    CONNECTION = 6
    ACCOUNT = 7


class Op(IntEnum):  # enum tgtadm_op
    NEW = 0
    DELETE = 1
    SHOW = 2
    BIND = 3
    UNBIND = 4
    UPDATE = 5
    STATS = 6
    START = 7
    STOP = 8


class Err(IntEnum):  # enum tgtadm_errno (usr/tgtadm_error.h)
    SUCCESS = 0
    UNKNOWN_ERR = 1
    NOMEM = 2
    NO_DRIVER = 3
    NO_TARGET = 4
    NO_LUN = 5
    NO_SESSION = 6
    NO_CONNECTION = 7
    NO_BINDING = 8
    TARGET_EXIST = 9
    LUN_EXIST = 10
    BINDING_EXIST = 11
    ACL_EXIST = 12
    ACL_NOEXIST = 13
    USER_EXIST = 14
    NO_USER = 15
    TOO_MANY_USER = 16
    INVALID_REQUEST = 17
    OUTACCOUNT_EXIST = 18
    TARGET_ACTIVE = 19
    LUN_ACTIVE = 20
    DRIVER_ACTIVE = 21
    UNSUPPORTED_OPERATION = 22
    UNKNOWN_PARAM = 23
    PREVENT_REMOVAL = 24


# the sentences tgtadm prints for each error (tgtadm_strerror in usr/tgtadm.c)
SENTENCES = {
    Err.SUCCESS: "success",
    Err.UNKNOWN_ERR: "unknown error",
    Err.NOMEM: "out of memory",
    Err.NO_DRIVER: "can't find the driver",
    Err.NO_TARGET: "can't find the target",
    Err.NO_LUN: "can't find the logical unit",
    Err.NO_SESSION: "can't find the session",
    Err.NO_CONNECTION: "can't find the connection",
    Err.NO_BINDING: "can't find the binding",
    Err.TARGET_EXIST: "this target already exists",
    Err.BINDING_EXIST: "this binding already exists",
    Err.LUN_EXIST: "this logical unit number already exists",
    Err.ACL_EXIST: "this access control rule already exists",
    Err.ACL_NOEXIST: "this access control rule does not exist",
    Err.USER_EXIST: "this account already exists",
    Err.NO_USER: "can't find the account",
    Err.TOO_MANY_USER: "too many accounts",
    Err.INVALID_REQUEST: "invalid request",
    Err.OUTACCOUNT_EXIST: "this target already has an outgoing account",
    Err.TARGET_ACTIVE: "this target is still active",
    Err.LUN_ACTIVE: "this logical unit is still active",
    Err.DRIVER_ACTIVE: "this driver is busy",
    Err.UNSUPPORTED_OPERATION: "this operation isn't supported",
    Err.UNKNOWN_PARAM: "unknown parameter",
    Err.PREVENT_REMOVAL: "this device has Prevent Removal set",
}


def sentence(code: int) -> str:
    try:
        return SENTENCES[Err(code)]
    except ValueError:
        return "(unknown tgtadm_errno)"


class TgtdRefused(BackendUnavailable):
    """tgtd answered with an error; ``code`` is its tgtadm_errno, ``reason`` tgtadm's sentence for it."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
        self.reason = sentence(code)


def params(
    *,
    name: str | None = None,
    value: str | None = None,
    path: str | None = None,
    bstype: str | None = None,
    targetname: str | None = None,
    initiator_address: str | None = None,
    initiator_name: str | None = None,
    user: str | None = None,
    password: str | None = None,
    portal: str | None = None,
) -> str:
    """The request body's text, built in the order and form tgtadm builds it (``--param portal=X`` is
    ``portalOps portal=X,``)."""
    parts: list[str] = []
    if name is not None:
        parts.append(f"{name}={value}")
    for key, val in (("path", path), ("bstype", bstype), ("targetname", targetname),
                     ("initiator-address", initiator_address), ("initiator-name", initiator_name),
                     ("user", user), ("password", password)):  # fmt: skip
        if val is not None:
            parts.append(f"{key}={val}")
    if portal is not None:
        parts.append(f"portalOps portal={portal},")
    return ",".join(parts)


@dataclass(frozen=True)
class Request:
    mode: Mode
    op: Op
    tid: int = -1  # tgtadm's default when --tid is not given (also GLOBAL_TID, ~0U, on the wire)
    sid: int = 0
    lun: int = NO_LUN
    cid: int = 0
    force: bool = False
    outgoing: bool = False  # ac_dir: an outgoing (mutual CHAP) account
    lld: str = "iscsi"
    body: str = field(default="", repr=False)  # may hold a password

    def encode(self) -> bytes:
        """The bytes tgtadm would send for the same request (header, then body and its NUL)."""
        body = self.body.encode() + b"\0" if self.body else b""
        if len(body) > MAX_BODY:
            raise ValueError(f"a tgtd request body is limited to {MAX_BODY} bytes")
        header = REQUEST.pack(
            int(self.mode),
            int(self.op),
            self.lld.encode(),
            REQUEST.size + len(body),
            self.tid,
            self.sid,
            self.lun,
            self.cid,
            0,
            0,
            int(self.outgoing),
            0,
            int(self.force),
        )  # fmt: skip  (host_no 0, device_type 0 = disk, pack 0: as tgtadm sends them)
        return header + body

    def describe(self) -> str:
        """For messages and logs: the operation, never the body (it may hold a password)."""
        what = f"{self.op.name.lower()} {self.mode.name.lower()}"
        return what + (f" (tid {self.tid})" if self.tid >= 0 else "")


def socket_path(control_port: int) -> Path:
    base = os.environ.get("TGT_IPC_SOCKET") or str(SOCKET_DIR / "socket")
    return Path(f"{base}.{control_port}")


class TgtdClient:
    """Sends requests to the tgtd listening on ``control_port``."""

    def __init__(self, control_port: int, timeout: float = 10.0) -> None:
        self.control_port = control_port
        self.timeout = timeout
        self._in_flight = asyncio.Semaphore(IN_FLIGHT)

    @property
    def path(self) -> Path:
        return socket_path(self.control_port)

    async def request(self, request: Request) -> str:
        """tgtd's answer text ("" for most changes); ``TgtdRefused`` for an error it answered with,
        ``BackendUnavailable`` when it cannot be reached."""
        try:
            async with self._in_flight:
                return await asyncio.wait_for(self._exchange(request), self.timeout)
        except TimeoutError:
            raise BackendUnavailable(
                f"tgtd on control port {self.control_port} did not answer within {self.timeout:g} s "
                f"({request.describe()})"
            ) from None

    async def _exchange(self, request: Request) -> str:
        data = request.encode()
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise BackendUnavailable(
                f"tgtd does not answer on control port {self.control_port} (no daemon listens on {self.path})"
            ) from None
        except PermissionError:
            raise BackendUnavailable(
                f"tgtd's control socket {self.path} refuses this user: run ggnet as root"
            ) from None
        except OSError as exc:
            raise BackendUnavailable(f"cannot reach tgtd on control port {self.control_port}: {exc}") from None
        try:
            writer.write(data)
            await writer.drain()
            header = await reader.readexactly(RESPONSE.size)
            code, length = RESPONSE.unpack(header)
            if code != Err.SUCCESS:
                raise TgtdRefused(f"tgtd refused to {request.describe()}: {sentence(code)}", code)
            body = await reader.readexactly(length - RESPONSE.size) if length > RESPONSE.size else b""
        except asyncio.IncompleteReadError:
            # tgtd closes without a word on a peer of another user or group (ipc_perm in usr/mgmt.c)
            raise BackendUnavailable(
                f"tgtd on control port {self.control_port} closed the connection without answering "
                f"({request.describe()}); it answers only processes of its own user: run ggnet as root"
            ) from None
        except (ConnectionError, BrokenPipeError) as exc:
            raise BackendUnavailable(
                f"tgtd on control port {self.control_port} dropped the connection ({request.describe()}): {exc}"
            ) from None
        finally:
            writer.close()
        return body.rstrip(b"\0").decode(errors="replace")
