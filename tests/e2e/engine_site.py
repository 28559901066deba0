"""A boot server site for the engine's resilience tests, and an independent check of its state.

``engine_env`` is the environment of a `ggnet serve` on a private tgtd; ``setup_site`` registers
machines and images through the services (in this process: quicker than one `ggnet` per machine
on a busy two-core host). ``convergence_problems`` says what is not converged, reading tgtd with
``tgtadm`` (its own small parser, not ggnet's), the database with plain SQL and the data directory
with ``os.listdir`` — so a bug in ggnet's own view of things cannot hide itself.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from core.auth import Actor
from core.config import Settings
from core.context import Core
from core.engine.engine import Engine
from tests.cli import ggnet_executable
from tests.conftest import drop_pg_database, make_database_url
from tests.e2e.bootdisk import make_prev_disk
from tests.e2e.tgtd import TgtDaemon, free_tcp_port, start_private_tgtd, unavailable

PASSWORD = "e2e-admin-pass"
IQN_BASE = "iqn.2024-01.lan.ggnet"
WRITEBACKS = "writebacks"


def engine_env(tmp_path: Path, tgtd: TgtDaemon, database_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GGNET_")},
        "GGNET_DATA_DIR": str(tmp_path / "data"),
        "GGNET_TFTP_ROOT": str(tmp_path / "tftp"),
        "GGNET_TARGET_BACKEND": "tgt",
        "GGNET_TGT_CONTROL_PORT": str(tgtd.control_port),
        "GGNET_PORTAL": f"127.0.0.1:{tgtd.portal_port}",
        "GGNET_HTTP_ADDRESS": f"127.0.0.1:{free_tcp_port()}",
        "GGNET_BOOT_ADDRESS": "10.0.2.2",  # the host as QEMU's user network shows it to a client
        "GGNET_RESERVED_SPACE": "1M",
        "GGNET_WOL_ADDRESS": "127.0.0.1:9",
        "GGNET_SERVER_NAME": "bootsrv",
        "GGNET_USER": "admin",
        "GGNET_PASSWORD": PASSWORD,
        "GGNET_NEW_PASSWORD": PASSWORD,
        **extra,
    }
    if database_url:
        env["GGNET_DATABASE_URL"] = database_url
    return env


def settings_of(env: dict[str, str]) -> Settings:
    """The Settings a `ggnet` run with ``env`` reads (without touching this process's environment)."""
    given = {k[6:].lower(): v for k, v in env.items() if k.startswith("GGNET_")}
    return Settings(**{k: v for k, v in given.items() if k in Settings.model_fields})


def ggnet(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [ggnet_executable(), *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and result.returncode != 0:
        raise AssertionError(f"ggnet {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def mac_of(index: int) -> str:
    return f"52:54:00:c4:00:{index:02x}"


def machine_names(count: int) -> list[str]:
    return [f"pc{i:02d}" for i in range(1, count + 1)]


async def _setup(env: dict[str, str], count: int, images: dict[str, list[Path]], keep: set[str]) -> None:
    from core import auth
    from core.context import Core
    from core.services import images as image_service
    from core.services import machines, users

    core = Core.open(settings_of(env))
    try:
        await core.db.upgrade()
        if await users.count_users(core) == 0:
            # the production cost (tests elsewhere hash at cost 4): each command's login costs what it will
            auth.set_bcrypt_rounds(auth.BCRYPT_ROUNDS)
            try:
                await users.create_first_admin(core, "admin", PASSWORD)
            finally:
                auth.set_bcrypt_rounds(4)
        admin = await users.login(core, "admin", PASSWORD)
        for name, files in images.items():
            await image_service.import_image(core, admin, files[0], name=name)
            for extra in files[1:]:
                await image_service.import_image(core, admin, extra, new_version_of=name)
        first = next(iter(images))
        csv = "name,mac\n" + "".join(f"{n},{mac_of(i)}\n" for i, n in enumerate(machine_names(count), start=1))
        await machines.import_csv(core, admin, csv)
        for name in machine_names(count):
            await machines.update_machine(core, admin, name, image=first, keep_writeback=name in keep)
    finally:
        await core.close()


def setup_site(env: dict[str, str], count: int, images: dict[str, list[Path]], keep: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """An initialised site: admin/PASSWORD, machines pc01..pcNN (MACs ``mac_of``) booting the first image."""
    asyncio.run(_setup(env, count, images, set(keep)))


# --- tgtd as tgtadm shows it ----------------------------------------------------------------------


@dataclass
class ShownTarget:
    tid: int
    iqn: str
    luns: dict[int, str | None] = field(default_factory=dict)
    accounts: list[str] = field(default_factory=list)
    acls: list[str] = field(default_factory=list)
    sessions: int = 0
    state: str | None = None  # ready, offline


def tgt_targets(tgtd: TgtDaemon) -> dict[str, ShownTarget]:
    """``tgtadm --op show --mode target``, read line by line (keyed by lower-case IQN)."""
    shown = tgtd.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "target").stdout
    targets: dict[str, ShownTarget] = {}
    current: ShownTarget | None = None
    section = ""
    lun: int | None = None
    for raw in shown.splitlines():
        line = raw.strip()
        if raw.startswith("Target "):
            head, _, iqn = raw.partition(": ")
            current = ShownTarget(int(head.split()[1]), iqn.strip())
            targets[current.iqn.lower()] = current
            section, lun = "", None
        elif current is None or not line:
            continue
        elif line.endswith("information:"):
            section = line
        elif section == "System information:" and line.startswith("State:"):
            current.state = line.split(":", 1)[1].strip()
        elif section == "I_T nexus information:" and line.startswith("I_T nexus:"):
            current.sessions += 1
        elif section == "LUN information:" and line.startswith("LUN:"):
            lun = int(line.split(":", 1)[1])
            current.luns[lun] = None
        elif section == "LUN information:" and line.startswith("Backing store path:") and lun is not None:
            path = line.split(":", 1)[1].strip()
            current.luns[lun] = None if path in ("", "None") else path
        elif section == "Account information:":
            current.accounts.append(line.split()[0])
        elif section == "ACL information:":
            current.acls.append(line)
    return targets


def tgt_accounts(tgtd: TgtDaemon) -> list[str]:
    shown = tgtd.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "account").stdout
    return [line.strip() for line in shown.splitlines()[1:] if line.strip()]


def tgt_portals(tgtd: TgtDaemon) -> list[str]:
    shown = tgtd.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "portal").stdout
    return [line.split(":", 1)[1].strip().rsplit(",", 1)[0] for line in shown.splitlines() if line.startswith("Portal")]


# --- the database, in plain SQL -------------------------------------------------------------------


async def _rows(env: dict[str, str], queries: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    from core.db import Database

    db = Database(settings_of(env).database_url)
    try:
        async with db.engine.connect() as conn:
            return {key: [dict(r._mapping) for r in await conn.execute(text(sql))] for key, sql in queries.items()}
    finally:
        await db.dispose()


def db_rows(env: dict[str, str], **queries: str) -> dict[str, list[dict[str, Any]]]:
    return asyncio.run(_rows(env, queries))


async def site_rows(env: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return await _rows(
        env,
        dict(
            boots="SELECT id, machine_id, machine_name, state, target_iqn, system_writeback_id, game_writeback_id, "
            "chap_secret, policy, error FROM boots",
            writebacks="SELECT id, machine_id, disk, file_name, state, retained FROM writebacks",
            machines="SELECT id, name, initiator_iqn, chap_username, writeback_policy FROM machines",
            requests="SELECT id, kind, state FROM engine_requests",
        ),
    )


# --- is it converged? -----------------------------------------------------------------------------


def unsettled(env: dict[str, str]) -> list[str]:
    """Work a process left in the middle (what the next pass must complete or undo)."""
    rows = asyncio.run(site_rows(env))
    found = [
        f"boot {b['id']} {b['state']}" for b in rows["boots"] if b["state"] in ("requested", "preparing", "ending")
    ]
    found += [f"writeback {w['file_name']} {w['state']}" for w in rows["writebacks"] if w["state"] != "ready"]
    directory = Path(env["GGNET_DATA_DIR"]) / WRITEBACKS
    if directory.is_dir():
        found += [f"file {n}" for n in os.listdir(directory) if n.startswith(".")]
    return found


def convergence_problems(env: dict[str, str], tgtd: TgtDaemon) -> list[str]:
    """Everything that says the engine has not converged (an empty list: converged)."""
    return asyncio.run(convergence_problems_async(env, tgtd))


async def convergence_problems_async(env: dict[str, str], tgtd: TgtDaemon) -> list[str]:
    problems: list[str] = []
    rows = await site_rows(env)
    data = Path(env["GGNET_DATA_DIR"])
    directory = data / WRITEBACKS
    machines = {m["id"]: m for m in rows["machines"]}
    writebacks = {w["id"]: w for w in rows["writebacks"]}
    ready = [b for b in rows["boots"] if b["state"] == "ready"]
    for boot in rows["boots"]:
        if boot["state"] in ("requested", "preparing", "ending"):
            problems.append(f"boot {boot['id']} of {boot['machine_name']} is still {boot['state']}")
        elif boot["state"] == "failed":  # nothing on these sites may fail: an interruption is no reason
            problems.append(f"boot {boot['id']} of {boot['machine_name']} failed: {boot['error']}")
    problems += [
        f"engine request {r['id']} ({r['kind']}) still pending" for r in rows["requests"] if r["state"] == "pending"
    ]
    for row in rows["writebacks"]:
        if row["state"] != "ready":
            problems.append(f"writeback row {row['file_name']} is {row['state']}")
    # the writeback files are exactly the rows' files
    files = set(os.listdir(directory)) if directory.is_dir() else set()
    named = {w["file_name"] for w in rows["writebacks"]}
    problems += [f"file {n} in {WRITEBACKS}/ has no row (stray or partial)" for n in sorted(files - named)]
    problems += [f"writeback row {n} has no file" for n in sorted(named - files)]
    images = data / "images"
    if images.is_dir():
        problems += [f"partial file images/{n}" for n in os.listdir(images) if n.startswith(".")]
    # every writeback is used by a ready boot, or kept for a machine that keeps its disk
    used = {b["system_writeback_id"] for b in ready} | {b["game_writeback_id"] for b in ready}
    kept: dict[tuple[Any, str], int] = {}
    for row in rows["writebacks"]:
        if row["id"] in used:
            continue
        policy = machines.get(row["machine_id"], {}).get("writeback_policy")
        if not row["retained"] or policy not in ("keep", "maintenance"):
            problems.append(f"writeback {row['file_name']} is used by no boot and kept for no machine")
    for row in rows["writebacks"]:
        if row["retained"]:
            key = (row["machine_id"], row["disk"])
            kept[key] = kept.get(key, 0) + 1
    problems += [f"machine {k[0]} keeps {n} {k[1]} writebacks" for k, n in kept.items() if n > 1]
    # tgtd holds exactly the ready boots' targets, each as the boot says
    targets = tgt_targets(tgtd)
    ours = {iqn: t for iqn, t in targets.items() if iqn.startswith(IQN_BASE + ":")}
    wanted = {(b["target_iqn"] or "").lower(): b for b in ready}
    problems += [f"stray target {t.iqn} on tgtd" for iqn, t in sorted(ours.items()) if iqn not in wanted]
    accounts_wanted: set[str] = set()
    for iqn, boot in sorted(wanted.items()):
        machine = machines.get(boot["machine_id"])
        row = writebacks.get(boot["system_writeback_id"])
        if machine is None or row is None:
            problems.append(f"ready boot {boot['id']} of {boot['machine_name']} lacks its machine or writeback")
            continue
        accounts_wanted.add(machine["chap_username"])
        target = ours.get(iqn)
        if target is None:
            problems.append(f"ready boot {boot['id']} of {boot['machine_name']}: no target {iqn} on tgtd")
            continue
        path = str((directory / row["file_name"]).resolve())
        if {k: v for k, v in target.luns.items() if k != 0} != {1: path}:
            problems.append(f"target {iqn}: LUNs {target.luns}, wanted LUN 1 = {path}")
        if [a.lower() for a in target.acls] != [machine["initiator_iqn"].lower()]:
            problems.append(f"target {iqn}: ACL {target.acls}, wanted {machine['initiator_iqn']}")
        if target.state != "ready":
            problems.append(f"target {iqn} is {target.state}")
        if target.accounts != [machine["chap_username"]]:
            problems.append(f"target {iqn}: accounts {target.accounts}, wanted {machine['chap_username']}")
    # ggnet's accounts: its machines' CHAP users, and any account bound to one of its targets
    # (an account someone else made and bound to nothing of ggnet's is not ggnet's to remove)
    ours_accounts = {m["chap_username"] for m in rows["machines"]} | {a for t in ours.values() for a in t.accounts}
    leftover = (set(tgt_accounts(tgtd)) - accounts_wanted) & ours_accounts
    problems += [f"CHAP account {a} on tgtd belongs to no ready boot" for a in sorted(leftover)]
    if wanted and f"127.0.0.1:{env['GGNET_PORTAL'].rsplit(':', 1)[1]}" not in tgt_portals(tgtd):
        problems.append(f"tgtd does not listen on the portal {env['GGNET_PORTAL']}")
    return problems


async def _engine_pass(env: dict[str, str], timeout: float, dry_run: bool) -> Any:
    """Ask the running engine for a pass (as `ggnet reconcile [--dry-run]` does) and wait for its report."""
    from core.auth import Actor
    from core.context import Core
    from core.engine.report import PassReport
    from core.models import Role
    from core.services import boots

    core = Core.open(settings_of(env))
    try:
        actor = Actor(user_id=None, username="root (local)", role=Role.ADMIN)
        request_id = await boots.request_pass(core, actor, dry_run=dry_run)
        row = await boots.wait_request(core, request_id, timeout=timeout)
        assert row is not None and row.state == "done", f"the engine did not carry out the pass: {row and row.state}"
        return PassReport.from_json(row.result or {})
    finally:
        await core.close()


def engine_dry_run(env: dict[str, str], timeout: float = 60) -> Any:
    return asyncio.run(_engine_pass(env, timeout, True))


def engine_pass(env: dict[str, str], timeout: float = 60) -> Any:
    return asyncio.run(_engine_pass(env, timeout, False))


# --- an in-process site for unit-level engine tests (real database, real tgtd) -----------------------

STRANGER = "52:54:00:c4:01:01"


class Site:
    """pc01 (fresh) and pc02 (keep) booted, pc03 and pc04 off, pc05 in maintenance of image lab and
    booted; one unregistered PC has asked to boot."""

    def __init__(self, env: dict[str, str], tgtd: TgtDaemon) -> None:
        self.env = env
        self.tgtd = tgtd
        self.core: Core | None = None
        self.admin: Actor | None = None
        self.engine: Engine | None = None

    async def open(self) -> None:
        self.core = Core.open(settings_of(self.env))
        self.engine = Engine(self.core, mode="once")
        assert await self.engine.lock.acquire(wait=False)
        await self.engine.refresh_backend()

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.close()
        if self.core is not None:
            await self.core.close()
        self.engine = self.core = None

    async def build(self, tmp_path: Path) -> None:
        from core.services import boots, machines, users
        from core.services import images as image_service

        self.core = Core.open(settings_of(self.env))
        await self.core.db.upgrade()
        await users.create_first_admin(self.core, "admin", PASSWORD)
        self.admin = await users.login(self.core, "admin", PASSWORD)
        await self.core.close()
        await self.open()
        core, admin = self.core, self.admin
        assert core is not None and self.engine is not None
        await image_service.import_image(core, admin, make_prev_disk(tmp_path / "desk.raw", token="desk"), name="desk")
        await image_service.import_image(core, admin, make_prev_disk(tmp_path / "lab.raw", token="lab"), name="lab")
        csv = "name,mac\n" + "".join(f"pc{i:02d},{mac_of(i)}\n" for i in range(1, 6))
        await machines.import_csv(core, admin, csv)
        for i in range(1, 5):
            await machines.update_machine(core, admin, f"pc{i:02d}", image="desk", keep_writeback=i == 2)
        await machines.update_machine(core, admin, "pc05", image="lab")
        await boots.maintenance_start(core, admin, "pc05")
        for i in (1, 2, 5):
            assert (await self.engine.boot_request(mac_of(i), "127.0.0.1")).state == "ready"
        await self.engine.boot_request(STRANGER, "127.0.0.1")
        await self.engine.run_pass()
        assert await convergence_problems_async(self.env, self.tgtd) == []

    async def machine_id(self, name: str) -> int:
        assert self.core is not None
        async with self.core.db.session() as session:
            return int(
                (await session.execute(text("SELECT id FROM machines WHERE name = :n"), {"n": name})).scalar_one()
            )

    async def converge_and_check(self, what: str) -> None:
        """One pass by the same engine (requests first, as ggnet serve does), then nothing left over."""
        assert self.engine is not None
        await self.engine.handle_requests()
        report = await self.engine.run_pass()
        problems = await convergence_problems_async(self.env, self.tgtd) + report.errors
        assert not problems, f"{what}: after the next pass:\n" + "\n".join(problems)


# --- the database and the data directory, put back for each N ---------------------------------


class Snapshot:
    """The site as built, restored before each run of an operator's action. PostgreSQL: the rows are
    copied into a schema of their own and put back (one transaction, ~20 ms); a database copied from a
    template for each point cost ~190 ms."""

    def __init__(self, env: dict[str, str], db_kind: str, tmp_path: Path) -> None:
        self.env = env
        self.kind = db_kind
        self.saved = tmp_path / "saved"
        self.sequences: list[tuple[str, int | None]] = []

    @property
    def data(self) -> Path:
        return Path(self.env["GGNET_DATA_DIR"])

    @property
    def sqlite_file(self) -> Path:
        return Path(self.env["GGNET_DATABASE_URL"].removeprefix("sqlite+aiosqlite:///"))

    async def _pg(self) -> Any:
        import asyncpg

        return await asyncpg.connect(self.env["GGNET_DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://"))

    @staticmethod
    def _tables() -> list[str]:
        from core.models import Base

        return [t.name for t in Base.metadata.sorted_tables] + ["alembic_version"]  # parents first

    async def save(self) -> None:
        shutil.copytree(self.data / "writebacks", self.saved / "writebacks")
        if self.kind == "sqlite":
            shutil.copy(self.sqlite_file, self.saved / "ggnet.db")
            return
        conn = await self._pg()
        try:
            async with conn.transaction():
                await conn.execute("CREATE SCHEMA saved")
                for table in self._tables():
                    await conn.execute(f'CREATE TABLE saved."{table}" AS TABLE public."{table}"')
            rows = await conn.fetch("SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public'")
            self.sequences = [(r["sequencename"], r["last_value"]) for r in rows]
        finally:
            await conn.close()

    async def restore(self) -> None:
        shutil.rmtree(self.data / "writebacks")
        shutil.copytree(self.saved / "writebacks", self.data / "writebacks")
        if self.kind == "sqlite":
            for suffix in ("-wal", "-shm"):
                Path(f"{self.sqlite_file}{suffix}").unlink(missing_ok=True)
            shutil.copy(self.saved / "ggnet.db", self.sqlite_file)
            return
        tables = self._tables()
        conn = await self._pg()
        try:
            async with conn.transaction():
                await conn.execute("TRUNCATE " + ", ".join(f'public."{t}"' for t in tables) + " CASCADE")
                for table in tables:
                    await conn.execute(f'INSERT INTO public."{table}" SELECT * FROM saved."{table}"')
                for name, last in self.sequences:
                    await conn.execute("SELECT setval($1, $2, $3)", f'public."{name}"', last or 1, last is not None)
        finally:
            await conn.close()


@pytest.fixture(scope="module")
def shared_tgtd(tmp_path_factory: pytest.TempPathFactory) -> Any:
    why = unavailable()
    if why:
        pytest.skip(why)
    daemon = start_private_tgtd(tmp_path_factory.mktemp("tgtd"))
    yield daemon
    daemon.stop()


@pytest.fixture
async def site(db_kind: str, tmp_path: Path, template_root: Path, shared_tgtd: TgtDaemon) -> Any:
    """The Site, built afresh (one private tgtd per test module, emptied), and its Snapshot."""
    tgtd = shared_tgtd
    tgtd.delete_all_targets()
    for account in tgtd.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "account").stdout.split()[2:]:
        tgtd.tgtadm("--lld", "iscsi", "--op", "delete", "--mode", "account", "--user", account, check=False)
    url, pg_name = await make_database_url(db_kind, tmp_path, template_root)
    env = engine_env(tmp_path, tgtd, database_url=url, GGNET_WRITEBACK_IDLE_HOURS="0")
    built = Site(env, tgtd)
    snapshot = Snapshot(env, db_kind, tmp_path)
    try:
        await built.build(tmp_path)
        await built.close()
        await snapshot.save()
        yield built, snapshot
    finally:
        await built.close()
        if pg_name is not None:
            await drop_pg_database(pg_name)
