"""tgtd's management protocol is tgt's internal, not an API: these tests fail loudly if it moves.

- Every request ggnet encodes is compared byte for byte with what the installed ``tgtadm`` sends for
  the same command line (captured by a fake daemon on ``$TGT_IPC_SOCKET``, which tgtadm honours).
- Every error code is compared with the sentence tgtadm prints for it.
- On a live private tgtd, what the socket answers is compared with what tgtadm prints.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import BackendUnavailable
from core.iscsi.tgtd_socket import (
    REQUEST,
    RESPONSE,
    Err,
    Mode,
    Op,
    Request,
    TgtdClient,
    TgtdRefused,
    params,
    sentence,
)
from tests.e2e.tgtd import TgtDaemon, tgtd_daemon

__all__ = ["tgtd_daemon"]

needs_tgtadm = pytest.mark.skipif(shutil.which("tgtadm") is None, reason="tgtadm is not installed (Debian: tgt)")


class FakeTgtd:
    """A unix socket that records one request and answers ``err`` (and ``text``), as tgtd would."""

    def __init__(self, directory: Path, port: int = 7) -> None:
        self.base = str(directory / "sock")
        self.port = port
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(f"{self.base}.{port}")
        self.server.listen(4)
        self.requests: list[bytes] = []

    def serve_one(self, err: int = 0, text: bytes = b"", answer: bool = True) -> threading.Thread:
        def run() -> None:
            conn, _ = self.server.accept()
            with conn:
                header = _recv(conn, REQUEST.size)
                length = struct.unpack_from("=I", header, 72)[0]  # tgtadm_req.len
                self.requests.append(header + _recv(conn, length - REQUEST.size))
                if answer:
                    payload = text + b"\0" if text else b""
                    conn.sendall(RESPONSE.pack(err, RESPONSE.size + len(payload)) + payload)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def tgtadm(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "TGT_IPC_SOCKET": self.base}
        return subprocess.run(["tgtadm", "-C", str(self.port), *args], env=env, capture_output=True, text=True,
                              timeout=10, check=False)  # fmt: skip


def _recv(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTgtd]:
    server = FakeTgtd(tmp_path)
    monkeypatch.setenv("TGT_IPC_SOCKET", server.base)  # for TgtdClient too
    yield server
    server.server.close()


# every request ggnet sends, as the tgtadm command line that sends the same bytes
CASES = [
    ("show targets", ["--op", "show", "--mode", "target"], Request(Mode.TARGET, Op.SHOW)),
    ("show portals", ["--op", "show", "--mode", "portal"], Request(Mode.PORTAL, Op.SHOW)),
    ("show system", ["--op", "show", "--mode", "system"], Request(Mode.SYSTEM, Op.SHOW)),
    ("stats of all", ["--op", "stat", "--mode", "system"], Request(Mode.SYSTEM, Op.STATS)),
    ("stats of one", ["--op", "stat", "--mode", "target", "--tid", "3"], Request(Mode.TARGET, Op.STATS, tid=3)),
    ("new target", ["--op", "new", "--mode", "target", "--tid", "3", "--targetname", "iqn.2024-01.lan.ggnet:pc01"],
     Request(Mode.TARGET, Op.NEW, tid=3, body=params(targetname="iqn.2024-01.lan.ggnet:pc01"))),
    ("delete target", ["--op", "delete", "--mode", "target", "--tid", "3", "--force"],
     Request(Mode.TARGET, Op.DELETE, tid=3, force=True)),
    ("offline", ["--op", "update", "--mode", "target", "--tid", "3", "--name", "state", "--value", "offline"],
     Request(Mode.TARGET, Op.UPDATE, tid=3, body=params(name="state", value="offline"))),
    ("bind initiator", ["--op", "bind", "--mode", "target", "--tid", "3", "--initiator-name", "iqn.2024-01.x:y"],
     Request(Mode.TARGET, Op.BIND, tid=3, body=params(initiator_name="iqn.2024-01.x:y"))),
    ("unbind address", ["--op", "unbind", "--mode", "target", "--tid", "3", "--initiator-address", "ALL"],
     Request(Mode.TARGET, Op.UNBIND, tid=3, body=params(initiator_address="ALL"))),
    ("new LUN", ["--op", "new", "--mode", "logicalunit", "--tid", "3", "--lun", "2", "--backing-store",
                 "/srv/a b.raw", "--bstype", "rdwr"],
     Request(Mode.DEVICE, Op.NEW, tid=3, lun=2, body=params(path="/srv/a b.raw", bstype="rdwr"))),
    ("delete LUN", ["--op", "delete", "--mode", "logicalunit", "--tid", "3", "--lun", "2"],
     Request(Mode.DEVICE, Op.DELETE, tid=3, lun=2)),
    ("new account", ["--op", "new", "--mode", "account", "--user", "pc01", "--password", "s3cr,et=x"],
     Request(Mode.ACCOUNT, Op.NEW, body=params(user="pc01", password="s3cr,et=x"))),
    ("delete account", ["--op", "delete", "--mode", "account", "--user", "pc01"],
     Request(Mode.ACCOUNT, Op.DELETE, body=params(user="pc01"))),
    ("bind account", ["--op", "bind", "--mode", "account", "--tid", "3", "--user", "pc01"],
     Request(Mode.ACCOUNT, Op.BIND, tid=3, body=params(user="pc01"))),
    ("unbind account", ["--op", "unbind", "--mode", "account", "--tid", "3", "--user", "pc01"],
     Request(Mode.ACCOUNT, Op.UNBIND, tid=3, body=params(user="pc01"))),
    ("new portal", ["--op", "new", "--mode", "portal", "--param", "portal=[::1]:3260"],
     Request(Mode.PORTAL, Op.NEW, body=params(portal="[::1]:3260"))),
    ("show connections", ["--op", "show", "--mode", "conn", "--tid", "3"], Request(Mode.CONNECTION, Op.SHOW, tid=3)),
    ("close connection", ["--op", "delete", "--mode", "conn", "--tid", "3", "--sid", "2", "--cid", "1"],
     Request(Mode.CONNECTION, Op.DELETE, tid=3, sid=2, cid=1)),
]  # fmt: skip


@needs_tgtadm
@pytest.mark.parametrize(("what", "argv", "request_"), CASES, ids=[c[0] for c in CASES])
def test_every_request_is_byte_for_byte_what_tgtadm_sends(fake: FakeTgtd, what: str, argv: list[str],
                                                          request_: Request) -> None:  # fmt: skip
    thread = fake.serve_one()
    done = fake.tgtadm("--lld", "iscsi", *argv)
    thread.join(5)
    assert done.returncode == 0, done.stderr
    [sent] = fake.requests
    mine = request_.encode()
    assert sent[: REQUEST.size] == mine[: REQUEST.size], f"header differs for {what}"
    assert sent[REQUEST.size :] == mine[REQUEST.size :], f"body differs for {what}"


@needs_tgtadm
@pytest.mark.parametrize("code", [*range(1, len(Err)), 99])
def test_every_error_reads_as_tgtadm_says_it(fake: FakeTgtd, code: int) -> None:
    thread = fake.serve_one(err=code)
    done = fake.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "target")
    thread.join(5)
    assert done.returncode != 0
    assert done.stderr.strip() == f"tgtadm: {sentence(code)}"

    thread = fake.serve_one(err=code)
    with pytest.raises(TgtdRefused) as refused:
        asyncio.run(TgtdClient(fake.port).request(Request(Mode.TARGET, Op.SHOW)))
    thread.join(5)
    assert refused.value.code == code and refused.value.reason == sentence(code)
    assert sentence(code) in refused.value.message


def test_an_answer_text_comes_back_without_its_nul(fake: FakeTgtd) -> None:
    thread = fake.serve_one(text=b"Portal: 127.0.0.1:3260,1\n")
    text = asyncio.run(TgtdClient(fake.port).request(Request(Mode.PORTAL, Op.SHOW)))
    thread.join(5)
    assert text == "Portal: 127.0.0.1:3260,1\n"


def test_unreachable_silent_and_slow_daemons_are_sentences(fake: FakeTgtd, tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="tgtd does not answer on control port 8"):
        asyncio.run(TgtdClient(8).request(Request(Mode.SYSTEM, Op.SHOW)))
    # tgtd closes the connection without a word for a peer of another user (ipc_perm)
    thread = fake.serve_one(answer=False)
    with pytest.raises(BackendUnavailable, match="closed the connection without answering .*run ggnet as root"):
        asyncio.run(TgtdClient(fake.port).request(Request(Mode.SYSTEM, Op.SHOW)))
    thread.join(5)
    # accepted but never answered
    with pytest.raises(BackendUnavailable, match=r"did not answer within 0\.2 s \(show system\)"):
        asyncio.run(TgtdClient(fake.port, timeout=0.2).request(Request(Mode.SYSTEM, Op.SHOW)))
    with pytest.raises(ValueError, match="limited to 8192 bytes"):
        Request(Mode.ACCOUNT, Op.NEW, body=params(user="u", password="x" * 9000)).encode()


def test_a_password_never_shows_in_a_description() -> None:
    request = Request(Mode.ACCOUNT, Op.NEW, body=params(user="pc01", password="s3cret-value-1"))
    assert "s3cret" not in request.describe() and "s3cret" not in repr(request)


# --------------------------------------------------------------------------- on a live daemon


def test_the_socket_answers_what_tgtadm_prints(tgtd_daemon: TgtDaemon, tmp_path: Path) -> None:
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"\0" * (1 << 20))
    for args in (
        ["--op", "new", "--mode", "target", "--tid", "1", "-T", "iqn.2024-01.lan.ggnet:pc01"],
        ["--op", "new", "--mode", "target", "--tid", "2", "-T", "iqn.2024-01.lan.ggnet:pc02"],
        ["--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", str(disk)],
        ["--op", "new", "--mode", "account", "--user", "pc01", "--password", "pc01-secret-123"],
        ["--op", "new", "--mode", "account", "--user", "out1", "--password", "out1-secret-123"],
        ["--op", "bind", "--mode", "account", "--tid", "1", "--user", "pc01"],
        ["--op", "bind", "--mode", "account", "--tid", "1", "--user", "out1", "--outgoing"],
        ["--op", "bind", "--mode", "target", "--tid", "1", "-Q", "iqn.2024-01.lan.ggnet.client:pc01"],
        ["--op", "bind", "--mode", "target", "--tid", "2", "-I", "ALL"],
        ["--op", "update", "--mode", "target", "--tid", "2", "-n", "state", "-v", "offline"],
    ):
        tgtd_daemon.tgtadm("--lld", "iscsi", *args)
    client = TgtdClient(tgtd_daemon.control_port)
    for argv, request_ in (
        (["--op", "show", "--mode", "target"], Request(Mode.TARGET, Op.SHOW)),
        (["--op", "show", "--mode", "portal"], Request(Mode.PORTAL, Op.SHOW)),
        (["--op", "show", "--mode", "account"], Request(Mode.ACCOUNT, Op.SHOW)),
        (["--op", "show", "--mode", "target", "--tid", "1"], Request(Mode.TARGET, Op.SHOW, tid=1)),
        (["--op", "stat", "--mode", "system"], Request(Mode.SYSTEM, Op.STATS)),
    ):
        printed = tgtd_daemon.tgtadm("--lld", "iscsi", *argv).stdout
        answered = asyncio.run(client.request(request_))
        assert answered == printed and answered, argv
    # a refusal is the same sentence both ways
    refused = tgtd_daemon.tgtadm("--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "9", check=False)
    with pytest.raises(TgtdRefused) as exc:
        asyncio.run(client.request(Request(Mode.TARGET, Op.DELETE, tid=9)))
    assert refused.stderr.strip() == f"tgtadm: {exc.value.reason}" == "tgtadm: can't find the target"
