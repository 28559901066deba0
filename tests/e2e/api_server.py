"""A real `ggnet serve` for HTTP API tests: a seeded SQLite database (an admin, an operator and a
viewer, made in this process with cheap bcrypt hashes), a private tgtd, and an httpx client.

Usage (pytest fixture ``api``)::

    token = api.login("operator")             # an access token
    api.get("/machines", token)               # an httpx.Response from /api/v1/machines
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from core.auth import SYSTEM
from core.config import Settings
from core.context import Core
from core.services import users
from tests.e2e.serve import GgnetServe
from tests.e2e.tgtd import TgtDaemon, free_tcp_port

PASSWORDS = {"admin": "admin-pass-1", "operator": "operator-pass-1", "viewer": "viewer-pass-1"}
ROLES = ("viewer", "operator", "admin")  # each account is named after its role


def serve_env(tmp_path: Path, tgtd: TgtDaemon | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GGNET_")}
    env.update(
        GGNET_DATA_DIR=str(tmp_path / "data"),
        GGNET_TFTP_ROOT=str(tmp_path / "tftp"),
        GGNET_HTTP_ADDRESS=f"127.0.0.1:{free_tcp_port()}",
        GGNET_BOOT_ADDRESS="10.0.2.2",  # the host as QEMU's user network shows it to a client
        GGNET_RESERVED_SPACE="1M",
        GGNET_WOL_ADDRESS="127.0.0.1:9",
        GGNET_API_RATE_PER_MINUTE="100000",
        GGNET_API_LOGIN_RATE_PER_MINUTE="1000",
        HOME=str(tmp_path / "home"),
    )
    if tgtd is not None:
        env.update(
            GGNET_TARGET_BACKEND="tgt",
            GGNET_TGT_CONTROL_PORT=str(tgtd.control_port),
            GGNET_PORTAL=f"127.0.0.1:{tgtd.portal_port}",
        )
    else:
        env.update(GGNET_TARGET_BACKEND="tgt", GGNET_TGT_CONTROL_PORT="1", GGNET_PORTAL="127.0.0.1:3260")
    env.update(extra)
    return env


def settings_for(env: dict[str, str]) -> Settings:
    """The Settings the server reads from ``env``, for seeding its database from this process."""
    values = {k[len("GGNET_") :].lower(): v for k, v in env.items() if k.startswith("GGNET_")}
    return Settings(**values)


async def seed_users(env: dict[str, str]) -> None:
    core = Core.open(settings_for(env))
    try:
        await core.db.upgrade()
        await users.create_first_admin(core, "admin", PASSWORDS["admin"])
        for role in ("operator", "viewer"):
            await users.add_user(core, SYSTEM, role, role, PASSWORDS[role])
    finally:
        await core.close()


async def with_core(env: dict[str, str], work: Any) -> Any:
    """Run ``await work(core)`` against the server's database from this process."""
    core = Core.open(settings_for(env))
    try:
        return await work(core)
    finally:
        await core.close()


@dataclass
class ApiServer:
    serve: GgnetServe
    env: dict[str, str]
    client: httpx.Client = field(init=False)
    secrets: set[str] = field(default_factory=set)  # every password and token the test used

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=f"{self.serve.url}/api/v1", timeout=120)
        self.secrets.update(PASSWORDS.values())

    @property
    def url(self) -> str:
        return self.serve.url

    def login_pair(self, username: str, password: str | None = None) -> dict[str, Any]:
        answer = self.client.post(
            "/auth/login", json={"username": username, "password": password or PASSWORDS[username]}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        self.secrets.update((body["access_token"], body["refresh_token"]))
        return body  # type: ignore[no-any-return]

    def login(self, username: str) -> str:
        return str(self.login_pair(username)["access_token"])

    def request(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.request(method, path, headers=headers, **kw)

    def get(self, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        return self.request("GET", path, token, **kw)

    def post(self, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        return self.request("POST", path, token, **kw)

    def logs(self) -> str:
        """Everything the server wrote: its log file and its stdout/stderr."""
        text = self.serve.log_path.read_text(errors="replace") if self.serve.log_path.exists() else ""
        log_file = Path(self.env["GGNET_DATA_DIR"]) / "ggnet.log"
        return text + (log_file.read_text(errors="replace") if log_file.exists() else "")

    def assert_no_secrets_logged(self) -> None:
        text = self.logs()
        assert text, "the server wrote no log at all: nothing was checked"
        key = (Path(self.env["GGNET_DATA_DIR"]) / "api-signing.key").read_text().strip()
        leaked = [s[:12] + "..." for s in {*self.secrets, key} if s and s in text]
        assert not leaked, f"secrets in the server's log: {leaked}"

    def close(self) -> None:
        self.client.close()
        self.serve.stop()


def start_api(tmp_path: Path, tgtd: TgtDaemon | None, **extra: str) -> ApiServer:
    env = serve_env(tmp_path, tgtd, **extra)
    asyncio.run(seed_users(env))
    serve = GgnetServe(env, tmp_path / "serve.log")
    serve.start(wait=tgtd is not None)
    if tgtd is None:
        _wait_ready(serve)
    return ApiServer(serve, env)


def _wait_ready(serve: GgnetServe, timeout: float = 30.0) -> None:
    """Without a target stack /healthz stays 503; /readyz says when requests can be served."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert serve.process is not None
        if serve.process.poll() is not None:
            raise RuntimeError(f"ggnet serve exited: {serve.log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{serve.url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("ggnet serve not ready in time")
