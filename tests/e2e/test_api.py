"""The HTTP API through a real `ggnet serve` process and httpx: logins and tokens, the permission
matrix of every endpoint for every role, audit events, uploads, live events and metrics; and no
password or token in the server's log."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core import auth
from core.auth import PERMISSIONS, Permission
from core.models import Role
from core.storage.digest import disk_digest
from tests.e2e.api_server import PASSWORDS, ROLES, ApiServer, start_api
from tests.e2e.tgtd import TgtDaemon

pytestmark = pytest.mark.e2e


@pytest.fixture
def api(tmp_path: Path, tgtd_daemon: TgtDaemon) -> Iterator[ApiServer]:
    server = start_api(tmp_path, tgtd_daemon)
    yield server
    server.close()


def error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body = answer.json()["error"]
    assert body["code"] == code and body["message"], body
    return body  # type: ignore[no-any-return]


def test_login_refresh_rotation_reuse_logout_and_ended_accounts(api: ApiServer) -> None:
    first = api.login_pair("admin")
    assert api.get("/auth/me", first["access_token"]).json()["role"] == "admin"

    # each refresh hands out a new pair and uses the old refresh token up
    second = api.post("/auth/refresh", json={"refresh_token": first["refresh_token"]}).json()
    api.secrets.update((second["access_token"], second["refresh_token"]))
    assert second["refresh_token"] != first["refresh_token"]
    assert api.get("/machines", second["access_token"]).status_code == 200
    # the used one presented again: refused, and the whole login (its family) ends
    error(api.post("/auth/refresh", json={"refresh_token": first["refresh_token"]}), 401, "unauthenticated")
    error(api.post("/auth/refresh", json={"refresh_token": second["refresh_token"]}), 401, "unauthenticated")
    error(api.get("/machines", second["access_token"]), 401, "unauthenticated")
    error(api.get("/machines", first["access_token"]), 401, "unauthenticated")

    # logout ends this login at once, and only this one
    third, other = api.login_pair("admin"), api.login_pair("admin")
    assert api.post("/auth/logout", third["access_token"]).status_code == 204
    error(api.get("/machines", third["access_token"]), 401, "unauthenticated")
    error(api.post("/auth/refresh", json={"refresh_token": third["refresh_token"]}), 401, "unauthenticated")
    admin = other["access_token"]
    assert api.get("/machines", admin).status_code == 200

    # a disabled account's tokens are refused on the next request, and stay dead when it is enabled again
    operator = api.login_pair("operator")
    assert api.get("/machines", operator["access_token"]).status_code == 200
    assert api.post("/users/operator/disable", admin).status_code == 200
    error(api.get("/machines", operator["access_token"]), 401, "unauthenticated")
    assert api.post("/users/operator/enable", admin).status_code == 200
    error(api.get("/machines", operator["access_token"]), 401, "unauthenticated")
    error(api.post("/auth/refresh", json={"refresh_token": operator["refresh_token"]}), 401, "unauthenticated")
    assert api.get("/machines", api.login("operator")).status_code == 200

    # a changed password ends every login of the account
    viewer = api.login("viewer")
    new_password = "viewer-pass-2"
    api.secrets.add(new_password)
    answer = api.request("PUT", "/users/viewer/password", admin, json={"password": new_password})
    assert answer.status_code == 200, answer.text
    error(api.get("/machines", viewer), 401, "unauthenticated")
    api.login_pair("viewer", new_password)

    # a deleted account's token is refused too
    assert (
        api.post("/users", admin, json={"username": "temp", "role": "viewer", "password": "temp-pass-1"}).status_code
        == 201
    )
    api.secrets.add("temp-pass-1")
    temp = api.login_pair("temp", "temp-pass-1")["access_token"]
    assert api.request("DELETE", "/users/temp", admin).status_code == 204
    error(api.get("/machines", temp), 401, "unauthenticated")

    # wrong passwords: core's sentence, then core's throttling (shared with the console) with Retry-After
    for _ in range(auth.FREE_FAILURES):
        body = error(
            api.post("/auth/login", json={"username": "viewer", "password": "nope-nope-1"}), 401, "unauthenticated"
        )
        assert body["message"] == "wrong user name or password"
    throttled = api.post("/auth/login", json={"username": "viewer", "password": new_password})
    error(throttled, 423, "locked")
    assert int(throttled.headers["Retry-After"]) >= 1
    error(api.get("/machines", "not-a-token"), 401, "unauthenticated")
    error(api.get("/machines"), 401, "unauthenticated")

    # every login through the API is audited with the client's address
    events = api.get("/audit", admin, params={"action": "auth", "limit": 100}).json()["items"]
    logins = [e for e in events if e["action"] == "auth.login"]
    assert logins and all("api 127.0.0.1" in (e["detail"] or "") for e in logins)
    assert any(e["action"] == "auth.logout" for e in events)
    assert any(e["action"] == "auth.refresh" and e["outcome"] == "denied" for e in events)
    api.assert_no_secrets_logged()


def test_login_rate_limit_per_address(tmp_path: Path) -> None:
    server = start_api(tmp_path, None, GGNET_API_LOGIN_RATE_PER_MINUTE="3")
    try:
        for _ in range(3):
            server.login("viewer")
        limited = server.post("/auth/login", json={"username": "admin", "password": PASSWORDS["admin"]})
        error(limited, 429, "rate_limited")
        assert int(limited.headers["Retry-After"]) >= 1
        server.assert_no_secrets_logged()
    finally:
        server.close()


# --- the permission matrix -----------------------------------------------------------------------------


# A valid request for every operation of the API (the test fails when one is missing), so that the
# permission is what decides: core validates input before it checks the permission.
def _requests(role: str, files: dict[str, Path]) -> dict[str, dict[str, Any]]:
    mac = {"viewer": "52:54:00:aa:00:01", "operator": "52:54:00:aa:00:02", "admin": "52:54:00:aa:00:03"}[role]
    other = "operator" if role != "operator" else "viewer"
    return {
        "POST /auth/login": {"json": {"username": role, "password": PASSWORDS[role]}, "token": None},
        "POST /auth/refresh": {"json": {"refresh_token": "<refresh>"}, "token": None},
        "POST /auth/logout": {"token": "<fresh>"},
        "GET /auth/me": {},
        "GET /users": {},
        "GET /users/{username}": {"path": {"username": "admin"}},
        "POST /users": {"json": {"username": f"new-{role}", "role": "viewer", "password": "new-pass-12"}},
        "PUT /users/{username}/role": {"path": {"username": "victim"}, "json": {"role": "viewer"}},
        "PUT /users/{username}/password": {"path": {"username": other}, "json": {"password": PASSWORDS[other]}},
        "POST /users/{username}/disable": {"path": {"username": "victim"}},
        "POST /users/{username}/enable": {"path": {"username": "victim"}},
        "DELETE /users/{username}": {"path": {"username": "victim"}},
        "GET /machines": {},
        "GET /machines/{name}": {"path": {"name": "pc01"}},
        "POST /machines": {"json": {"name": f"m-{role}", "mac": mac}},
        "PATCH /machines/{name}": {"path": {"name": "pc01"}, "json": {"notes": f"by {role}"}},
        "DELETE /machines/{name}": {"path": {"name": f"m-{role}"}},
        "POST /machines/import": {
            "content": f"name,mac\ncsv-{role},{mac[:-2]}ff\n",
            "headers": {"Content-Type": "text/csv"},
        },
        "POST /machines/wake": {"json": {"machines": ["pc01"]}},
        "POST /machines/{name}/wake": {"path": {"name": "pc01"}},
        "POST /machines/{name}/maintenance/start": {"path": {"name": "pc02"}},
        "POST /machines/{name}/maintenance/apply": {"path": {"name": "pc02"}, "json": {"notes": "n"}},
        "POST /machines/{name}/maintenance/discard": {"path": {"name": "pc02"}, "json": {}},
        "GET /images": {},
        "POST /images/import": {"json": {"path": str(files["import"]), "name": f"imp-{role}"}},
        "POST /images/upload": {
            "params": {"name": f"up-{role}"},
            "content": files["upload"].read_bytes(),
            "headers": {"Content-Type": "application/octet-stream"},
        },
        "GET /images/{name}": {"path": {"name": "desk"}},
        "GET /images/{name}/versions": {"path": {"name": "desk"}},
        "POST /images/{name}/versions/{number}/activate": {"path": {"name": "desk", "number": 1}},
        "DELETE /images/{name}": {"path": {"name": f"imp-{role}"}},
        "DELETE /images/{name}/versions/{number}": {"path": {"name": "desk", "number": 9}},
        "GET /boots": {},
        "GET /boots/current": {},
        "POST /boots/prepare": {"json": {"machines": ["pc01"]}},
        "POST /boots/offline": {"json": {"machines": ["pc01"]}},
        "POST /writebacks/reset": {"json": {"machines": ["pc01"]}},
        "GET /targets": {},
        "GET /engine": {},
        "GET /engine/drift": {},
        "POST /engine/pass": {"json": {"dry_run": False}},
        "GET /engine/requests/{request_id}": {"path": {"request_id": 1}},
        "GET /discovered": {},
        "POST /discovered/adopt": {"json": {"machines": [{"mac": mac[:-2] + "ee", "name": f"adopt-{role}"}]}},
        "DELETE /discovered/{mac}": {"path": {"mac": "52:54:00:bb:00:01"}},
        "GET /audit": {},
    }


def _fixtures(api: ApiServer, tmp_path: Path) -> dict[str, Path]:
    """An image 'desk' (version 1), machines pc01 (with it) and pc02, a user 'victim', and disk files."""
    from tests.e2e.bootdisk import make_prev_disk

    incoming = Path(api.env["GGNET_DATA_DIR"]) / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    files = {
        "import": make_prev_disk(incoming / "import.raw", size_mib=1),
        "upload": make_prev_disk(tmp_path / "up.raw", size_mib=1),
    }
    admin = api.login("admin")
    assert api.post("/images/import", admin, json={"path": str(files["import"]), "name": "desk"}).status_code == 201
    for name, mac in (("pc01", "52:54:00:cc:00:01"), ("pc02", "52:54:00:cc:00:02")):
        assert api.post("/machines", admin, json={"name": name, "mac": mac}).status_code == 201
        assert api.request("PATCH", f"/machines/{name}", admin, json={"image": "desk"}).status_code == 200
    assert (
        api.post(
            "/users", admin, json={"username": "victim", "role": "viewer", "password": "victim-pass-1"}
        ).status_code
        == 201
    )
    assert api.post("/engine/pass", admin, json={"dry_run": True}).status_code == 202  # request 1 exists
    return files


def test_permission_matrix_every_endpoint_and_role(api: ApiServer, tmp_path: Path) -> None:
    """Each operation's x-permission (from the OpenAPI document) against core.auth.PERMISSIONS:
    403 exactly when the role lacks it; never 401 or 5xx for a logged-in user."""
    schema = httpx.get(f"{api.url}/api/v1/openapi.json").json()
    operations = {
        f"{method.upper()} {path}": spec for path, item in schema["paths"].items() for method, spec in item.items()
    }
    files = _fixtures(api, tmp_path)
    assert set(_requests("admin", files)) == set(operations), "every endpoint needs a row in the matrix"
    seen: dict[tuple[str, str], int] = {}
    for role in ROLES:
        token = api.login(role)
        for key, spec in _requests(role, files).items():
            method, path = key.split(" ", 1)
            fresh = api.login_pair(role)
            request = dict(spec)
            use = request.pop("token", "<own>")
            bearer = {"<own>": token, "<fresh>": fresh["access_token"], None: None}[use]
            if request.get("json") == {"refresh_token": "<refresh>"}:
                request["json"] = {"refresh_token": fresh["refresh_token"]}
            url = path.format(**request.pop("path", {}))
            answer = api.request(method, url, bearer, **request)
            seen[(role, key)] = answer.status_code
            needed = operations[key]["x-permission"]
            assert answer.status_code < 500 and answer.status_code != 401, (role, key, answer.text)
            allowed = True if needed in ("none", "login") else Permission(needed) in PERMISSIONS[Role(role)]
            assert (answer.status_code == 403) == (not allowed), (role, key, answer.status_code, answer.text)
    # the matrix is not vacuous: each role was refused something or allowed everything it holds
    assert any(code == 403 for (role, _), code in seen.items() if role == "viewer")
    assert not any(code == 403 for (role, _), code in seen.items() if role == "admin")
    # refusals are audited like the console's, with the client's address
    events = api.get("/audit", api.login("admin"), params={"outcome": "denied", "limit": 500}).json()["items"]
    assert any(e["actor"] == "viewer" and "api 127.0.0.1" in (e["detail"] or "") for e in events)
    api.assert_no_secrets_logged()


def test_changes_through_the_api_are_audited_with_the_client_address(api: ApiServer) -> None:
    admin = api.login("admin")
    created = api.post("/machines", admin, json={"name": "pc07", "mac": "52:54:00:dd:00:07"})
    assert created.status_code == 201
    version = created.json()["row_version"]
    # optimistic locking: an edit made on an old copy is refused with core's sentence
    assert api.request("PATCH", "/machines/pc07", admin, json={"row_version": version, "notes": "a"}).status_code == 200
    stale = api.request("PATCH", "/machines/pc07", admin, json={"row_version": version, "notes": "b"})
    assert "was changed by admin" in error(stale, 409, "stale_edit")["message"]
    bad = error(api.post("/machines", admin, json={"name": "x y", "mac": "52:54:00:dd:00:08"}), 400, "invalid")
    assert set(bad["fields"]) == {"name"}
    csv = "name,mac\npc08,52:54:00:dd:00:08\npc09,not-a-mac\npc10,52:54:00:dd:00:08\n"
    refused = api.post("/machines/import", admin, content=csv, headers={"Content-Type": "text/csv"})
    lines = error(refused, 400, "invalid")["fields"]
    assert set(lines) == {"CSV line 3", "CSV line 4"}  # every bad line, and nothing imported
    assert api.get("/machines/pc08", admin).status_code == 404
    assert api.request("DELETE", "/machines/pc07", admin).status_code == 204
    events = api.get("/audit", admin, params={"action": "machine", "limit": 10}).json()["items"]
    actions = [(e["action"], e["outcome"]) for e in events]
    assert ("machine.create", "ok") in actions and ("machine.update", "ok") in actions
    assert ("machine.delete", "ok") in actions
    assert all("api 127.0.0.1" in (e["detail"] or "") for e in events if e["actor"] == "admin")
    page = api.get("/machines", admin, params={"limit": 1, "search": "pc"}).json()
    assert page["limit"] == 1 and len(page["items"]) <= 1


def _qcow2(tmp_path: Path, raw: Path) -> Path:
    out = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)], check=True, timeout=60)
    return out


def test_upload_of_a_qcow2_streams_into_a_new_version(api: ApiServer, tmp_path: Path) -> None:
    """Bigger than the request size limit: the upload path streams (chunked) to disk and imports it."""
    raw = tmp_path / "source.raw"
    with raw.open("wb") as handle:  # 6 MiB with data in it, more than GGNET_API_MAX_BODY (2 MiB)
        for i in range(6):
            handle.write(hashlib.sha256(str(i).encode()).digest() * (1 << 15))
    qcow2 = _qcow2(tmp_path, raw)
    admin = api.login("admin")

    def chunks() -> Iterator[bytes]:
        with qcow2.open("rb") as handle:
            while block := handle.read(256 << 10):
                yield block

    answer = api.post("/images/upload", admin, params={"name": "up", "notes": "from the API"}, content=chunks())
    assert answer.status_code == 201, answer.text
    version = answer.json()
    assert version["source_format"] == "qcow2" and version["virtual_size"] == raw.stat().st_size
    assert version["sha256"] == disk_digest(raw)  # the served raw is the disk (ggnet-disk-v1 digest)
    more = api.post("/images/upload", admin, params={"new_version_of": "up"}, content=qcow2.read_bytes())
    assert more.status_code == 201 and more.json()["number"] == 2
    # refused before a byte is stored: a name that is taken
    taken = api.post("/images/upload", admin, params={"name": "up"}, content=b"x" * 1024)
    error(taken, 409, "conflict")
    # a file that is not a disk image
    junk = api.post("/images/upload", admin, params={"name": "junk"}, content=b"\x00" * 100)
    assert junk.status_code == 400, junk.text
    assert not list((Path(api.env["GGNET_DATA_DIR"]) / "uploads").iterdir())  # nothing left behind
    # a body larger than the limit elsewhere is refused
    too_big = api.post("/machines/import", admin, content=b"a" * (3 << 20), headers={"Content-Type": "text/csv"})
    error(too_big, 413, "too_large")
    event = api.get("/audit", admin, params={"action": "image", "limit": 5}).json()["items"]
    assert any(e["action"] == "image.import" and "api 127.0.0.1" in (e["detail"] or "") for e in event)


def test_metrics_and_readiness(api: ApiServer) -> None:
    admin = api.login("admin")
    for i in range(3):
        assert api.post("/machines", admin, json={"name": f"pc{i}", "mac": f"52:54:00:ee:00:0{i}"}).status_code == 201
    api.post("/auth/login", json={"username": "viewer", "password": "wrong-pass-1"})
    assert httpx.get(f"{api.url}/boot/52-54-00-ee-00-09").status_code == 200  # unregistered: answered, counted
    assert httpx.get(f"{api.url}/readyz").json()["ready"] is True
    text = httpx.get(f"{api.url}/metrics").text
    assert 'ggnet_machines{status="off"} 3.0' in text
    assert 'ggnet_boots_total{outcome="unregistered"} 1.0' in text
    assert "ggnet_boot_request_seconds_count 1.0" in text
    assert "ggnet_login_failures_total 1.0" in text
    assert "ggnet_engine_pass_seconds_count" in text and "ggnet_free_bytes" in text


def test_metrics_limited_to_listed_networks(tmp_path: Path) -> None:
    server = start_api(tmp_path, None, GGNET_METRICS_NETWORKS="10.0.0.0/8")
    try:
        error(httpx.get(f"{server.url}/metrics"), 403, "permission_denied")
    finally:
        server.close()


def test_events_websocket_sees_a_real_clients_boot(api: ApiServer, tmp_path: Path) -> None:
    """A café system's view: log in, register a PC, watch it boot over the WebSocket."""
    from websockets.sync.client import connect

    from tests.e2e import qemu_client
    from tests.e2e.bootdisk import make_prev_disk
    from tests.e2e.qemu_client import ClientSpec, run_client

    why = qemu_client.available()
    if why:
        pytest.skip(why)
    admin = api.login("admin")
    incoming = Path(api.env["GGNET_DATA_DIR"]) / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    disk = make_prev_disk(incoming / "v1.raw", token="v1")
    assert api.post("/images/import", admin, json={"path": str(disk), "name": "desk"}).status_code == 201
    ws_url = api.url.replace("http://", "ws://") + "/api/v1/events"

    # without a token: told why and closed
    with connect(ws_url) as anonymous:
        anonymous.send(json.dumps({"access_token": "nope"}))
        assert json.loads(anonymous.recv(timeout=10))["code"] == "unauthenticated"

    with connect(ws_url, additional_headers={"Authorization": f"Bearer {admin}"}) as socket:
        assert json.loads(socket.recv(timeout=10))["type"] == "hello"
        seen: list[dict[str, Any]] = []

        def until(kinds: set[str]) -> None:
            while not kinds <= {e["type"] for e in seen}:
                assert len(seen) < 200, [e["type"] for e in seen]
                seen.append(json.loads(socket.recv(timeout=60)))

        async def logged_in() -> None:  # while the client is still up, its iSCSI login shows
            await asyncio.to_thread(until, {"machine.login"})

        mac = "52:54:00:e7:00:11"
        assert api.post("/machines", admin, json={"name": "pc11", "mac": mac}).status_code == 201
        assert api.request("PATCH", "/machines/pc11", admin, json={"image": "desk"}).status_code == 200
        spec = ClientSpec(tmp_path / "client", mac, Path(api.env["GGNET_TFTP_ROOT"]), while_booted=logged_in)
        result = asyncio.run(run_client(spec))
        assert result.ok, result.reason
        until({"boot.requested", "boot.ready", "machine.login", "audit"})
    boots = [e for e in seen if e["type"].startswith("boot.")]
    assert all(e["machine"] == "pc11" and e["mac"] == mac for e in boots)
    audits = [e["event"] for e in seen if e["type"] == "audit"]
    assert any(a["action"] == "machine.create" and a["object_name"] == "pc11" for a in audits)
    api.assert_no_secrets_logged()


def test_a_slow_events_client_is_dropped_not_waited_for() -> None:
    """Unit level (the bus is in-process): a subscriber that does not read is told and dropped;
    publishing never blocks."""
    from core.events import EventBus

    bus = EventBus(queue_size=5)
    slow, fast = bus.subscribe(), bus.subscribe(queue_size=100)
    for i in range(20):
        bus.publish("boot.ready", n=i)
    assert slow.dropped and bus.subscribers == 1

    async def drain(sub: Any, count: int) -> list[dict[str, Any]]:
        return [await sub.get() for _ in range(count)]

    events = asyncio.run(drain(slow, 6))
    assert [e["type"] for e in events] == ["boot.ready"] * 5 + ["overflow"]
    assert [e["n"] for e in asyncio.run(drain(fast, 20))] == list(range(20))


def test_tls_proxies_trusted_hosts_and_cors(tmp_path: Path) -> None:
    """TLS on its own listener; behind a listed proxy the forwarded address counts, so plain HTTP
    from a remote client is refused; unknown Host headers are refused; CORS only for listed origins."""
    from tests.e2e.tgtd import free_tcp_port

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    https_port = free_tcp_port()
    server = start_api(
        tmp_path,
        None,
        GGNET_TLS_CERT=str(cert),
        GGNET_TLS_KEY=str(key),
        GGNET_HTTPS_ADDRESS=f"127.0.0.1:{https_port}",
        GGNET_API_TRUSTED_PROXIES="127.0.0.1",
        GGNET_API_TRUSTED_HOSTS="ggnet.example",
        GGNET_API_CORS_ORIGINS="https://billing.example",
    )
    try:
        login = {"username": "viewer", "password": PASSWORDS["viewer"]}
        secure = httpx.post(f"https://127.0.0.1:{https_port}/api/v1/auth/login", json=login, verify=False)
        assert secure.status_code == 200, secure.text
        server.secrets.update((secure.json()["access_token"], secure.json()["refresh_token"]))
        assert server.post("/auth/login", json=login).status_code == 200  # plain HTTP from this host itself
        remote = server.post("/auth/login", json=login, headers={"X-Forwarded-For": "192.0.2.7"})
        error(remote, 403, "tls_required")
        error(server.get("/auth/me", headers={"Host": "elsewhere.example"}), 400, "invalid")
        assert server.get("/engine", headers={"Host": "ggnet.example"}).status_code == 401
        allowed = server.get("/engine", headers={"Origin": "https://billing.example"})
        assert allowed.headers.get("access-control-allow-origin") == "https://billing.example"
        other = server.get("/engine", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        server.assert_no_secrets_logged()
    finally:
        server.close()
