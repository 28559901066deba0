"""Cancellation at every await point: operators' actions and the engine's own steps.

How the cancel is placed (the hook, ``CancelAt``): the calls through which ggnet waits on the outside
world are wrapped — ``AsyncSession.execute/get/scalar/scalars/flush/merge/delete/connection``, the
commit of ``session.begin()`` (before it is sent, and again right after it returned), each
request of the tgt backend to tgtd's control socket (before and after) and each writeback clone (before and after).
Every wrapped call is one await point. For N = 1, 2, ... the step runs as a task and, at its Nth
point, the hook cancels that task (``task.cancel()``, then a yield: a real cancellation, as a
shutdown or Ctrl-C delivers it — a point inside a child task of ``gather`` cancels the parent, which
cancels the children). The loop ends at the first N the step completes without reaching.

Operators' actions: after each cancel the database is either exactly as before or exactly as after
an uncancelled run (compared on every column that means something; ids and times left out), and one
engine pass then converges. The engine's steps: after each cancel one pass (by the same engine: its
in-memory state survived the cancel) leaves everything converged — checked with tgtadm, plain SQL
and the data directory (tests/e2e/engine_site.py), not with the engine's own view.

Real parts: SQLite and PostgreSQL, a private tgtd, qemu-img and real writeback files (copies: the
tmp directory is ext4).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction

from core.auth import Actor
from core.context import Core
from core.engine.prepare import Claimed
from core.iscsi.tgtd_socket import TgtdClient
from core.storage import writeback as writeback_mod
from tests.e2e.engine_site import STRANGER, Site, Snapshot, mac_of, shared_tgtd, site

__all__ = ["shared_tgtd", "site"]  # the fixtures, imported for the tests below
MAX_POINTS = 400  # no step here has this many await points; reaching it means the loop never ended


# --- the hook -----------------------------------------------------------------------------------


class CancelAt:
    """Cancel the armed task at its Nth await point (see the module docstring)."""

    def __init__(self) -> None:
        self.target: int | None = None
        self.count = 0
        self.root: asyncio.Task[Any] | None = None
        self.fired_at: str | None = None

    def arm(self, n: int, root: asyncio.Task[Any]) -> None:
        self.target, self.count, self.root, self.fired_at = n, 0, root, None

    def disarm(self) -> None:
        self.target, self.root = None, None

    async def point(self, where: str) -> None:
        if self.target is None or self.root is None or self.root.done():
            return
        task = asyncio.current_task()
        coro = task.get_coro() if task is not None else None
        if getattr(coro, "__qualname__", "") == "Engine._watch_logins":
            return  # the login watcher runs beside the step, not in it
        self.count += 1
        if self.count == self.target:
            self.fired_at = where
            self.root.cancel()
            await asyncio.sleep(0)  # the cancellation lands here (in the root, or via gather in a child)


def install(monkeypatch: pytest.MonkeyPatch, hook: CancelAt) -> None:
    def around(cls: Any, name: str, after: bool = False) -> None:
        original = getattr(cls, name)

        async def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            await hook.point(f"{cls.__name__}.{name}")
            result = await original(self, *args, **kwargs)
            if after:
                await hook.point(f"{cls.__name__}.{name} (returned)")
            return result

        monkeypatch.setattr(cls, name, wrapped)

    for name in ("execute", "get", "scalar", "scalars", "flush", "merge", "delete", "connection"):
        around(AsyncSession, name)
    around(TgtdClient, "request", after=True)
    around(writeback_mod._FileDriver, "create", after=True)

    original_exit = AsyncSessionTransaction.__aexit__

    async def exit_(self: Any, kind: Any, value: Any, tb: Any) -> Any:
        if kind is not None:
            return await original_exit(self, kind, value, tb)
        try:
            await hook.point("commit")
        except BaseException as exc:  # cancelled as the commit was due: the transaction rolls back
            await original_exit(self, type(exc), exc, exc.__traceback__)
            raise
        result = await original_exit(self, None, None, None)
        await hook.point("commit (returned)")
        return result

    monkeypatch.setattr(AsyncSessionTransaction, "__aexit__", exit_)


async def run_cancelled(hook: CancelAt, n: int, step: Callable[[], Awaitable[Any]]) -> tuple[bool, Any]:
    """Run ``step`` cancelled at its Nth point; (completed, result). A step that swallows the
    cancellation fails the test: a shutdown would wait for it, or it would carry on half cancelled."""
    task = asyncio.ensure_future(step())
    hook.arm(n, task)
    try:
        result = await task
    except asyncio.CancelledError:
        assert task.cancelled() or hook.fired_at is not None
        return False, None
    finally:
        fired = hook.fired_at
        hook.disarm()
    assert fired is None, f"the step swallowed a cancellation at point {n} ({fired})"
    return True, result


# --- a site -------------------------------------------------------------------------------------


# what "the same database" means: every column with a meaning; ids, times and secrets left out
PROJECTION = {
    "boots": "SELECT machine_name, origin, state, end_reason, policy, image_version_id, "
    "system_writeback_id IS NULL AS no_wb FROM boots",
    "writebacks": "SELECT machine_id, disk, state, retained, image_version_id FROM writebacks",
    "machines": "SELECT name, mac, writeback_policy, boot_enabled, image_id, pinned_version_id FROM machines",
    "requests": "SELECT kind, state, machine_id, requested_by FROM engine_requests",
    "versions": "SELECT image_id, number, is_active FROM image_versions",
    "discovered": "SELECT mac FROM discovered_macs",
    "intent": "SELECT seq FROM intent_signal",
    "audit": "SELECT action, outcome, actor, object_name FROM audit_events WHERE action != 'auth.login'",
}


async def projection(core: Core) -> dict[str, list[tuple[Any, ...]]]:
    async with core.db.engine.connect() as conn:
        return {
            key: sorted((tuple(r) for r in await conn.execute(text(sql))), key=repr) for key, sql in PROJECTION.items()
        }


def differences(a: dict[str, list[tuple[Any, ...]]], b: dict[str, list[tuple[Any, ...]]]) -> list[str]:
    return [f"{k}: {sorted(set(a[k]) ^ set(b[k]), key=repr)[:6]}" for k in a if a[k] != b[k]]


# --- operators' actions -------------------------------------------------------------------------


def operator_actions() -> dict[str, Callable[[Core, Actor], Awaitable[Any]]]:
    from core.services import boots

    return {
        "prepare": lambda c, a: boots.prepare(c, a, ["pc03", "pc01"]),
        "prepare --all keep": lambda c, a: boots.prepare(c, a, [], all_machines=True, policy="keep"),
        "take_offline": lambda c, a: boots.take_offline(c, a, ["pc01", "pc02"], force=True),
        "take_offline --all": lambda c, a: boots.take_offline(c, a, [], all_machines=True, force=True),
        "reset_writeback": lambda c, a: boots.reset_writeback(c, a, ["pc02"], force=True),
        "maintenance_start": lambda c, a: boots.maintenance_start(c, a, "pc03"),
        "maintenance_apply": lambda c, a: boots.maintenance_apply(c, a, "pc05", notes="cancel test"),
        "maintenance_discard": lambda c, a: boots.maintenance_discard(c, a, "pc05", force=True),
        "adopt": lambda c, a: boots.adopt(c, a, [{"mac": STRANGER, "name": "pc09", "image": "desk"}]),
        "request_pass": lambda c, a: boots.request_pass(c, a),
    }


@pytest.mark.slow
@pytest.mark.timeout(900)  # PostgreSQL: a database copied from a template for each point (about 3 min here)
async def test_operator_actions_cancelled_at_every_await_leave_before_or_after(
    site: tuple[Site, Snapshot], monkeypatch: pytest.MonkeyPatch
) -> None:
    built, snapshot = site
    assert built.admin is not None
    hook = CancelAt()
    install(monkeypatch, hook)
    summary = {}
    for name, action in operator_actions().items():
        # the state after an uncancelled run
        await snapshot.restore()
        await built.open()
        assert built.core is not None
        before = await projection(built.core)
        await action(built.core, built.admin)
        after = await projection(built.core)
        assert before != after, f"{name}: changed nothing, so this test could not tell half from whole"
        await built.close()
        n = 1
        while True:
            assert n < MAX_POINTS, f"{name}: still cancelled at point {n}"
            await snapshot.restore()
            await built.open()
            core = built.core
            assert core is not None
            completed, _ = await run_cancelled(hook, n, lambda: action(core, built.admin))  # noqa: B023
            now = await projection(core)
            assert now in (before, after), f"{name} cancelled at point {n} ({hook.fired_at}): half done:\n" + "\n".join(
                differences(now, before)
            )
            await built.converge_and_check(f"{name} cancelled at point {n}")
            await built.close()
            if completed:
                assert now == after
                break
            n += 1
        summary[name] = n - 1
    print(f"\nawait points per operator action: {summary}")
    assert all(points >= 3 for points in summary.values()), summary


# --- the engine's steps ---------------------------------------------------------------------------


async def _toggle(built: Site, names: list[str]) -> None:
    """Give the next pass work: booted machines are taken offline, the others prepared."""
    from core.services import boots

    assert built.core is not None and built.admin is not None
    current = {b.machine for b in await boots.current_boots(built.core, built.admin) if b.state != "ending"}
    stop = [n for n in names if n in current]
    start = [n for n in names if n not in current]
    if stop:
        await boots.take_offline(built.core, built.admin, stop, force=True)
    if start:
        await boots.prepare(built.core, built.admin, start)


async def _drift(built: Site) -> None:
    """Behind ggnet's back: a target deleted, a stray writeback file and a clone's temporary left over."""
    from tests.e2e.engine_site import tgt_targets

    targets = tgt_targets(built.tgtd)
    victim = next((t for iqn, t in sorted(targets.items()) if iqn.endswith(":pc01")), None)
    if victim is not None:
        built.tgtd.tgtadm("--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", str(victim.tid), "--force")
    directory = Path(built.env["GGNET_DATA_DIR"]) / "writebacks"
    (directory / "wb-77-system-0badcafe.raw").write_bytes(b"stray")
    (directory / ".wb-78-system-0badcafe.raw.0123456789ab.part").write_bytes(b"partial")


async def _each_point(
    built: Site,
    hook: CancelAt,
    name: str,
    setup: Callable[[], Awaitable[Any]],
    step: Callable[[Any], Awaitable[Any]],
    check: Callable[[Any], Awaitable[None]] | None = None,
) -> int:
    n = 1
    while True:
        assert n < MAX_POINTS, f"{name}: still cancelled at point {n}"
        context = await setup()
        completed, _ = await run_cancelled(hook, n, lambda: step(context))  # noqa: B023
        await built.converge_and_check(f"{name} cancelled at point {n} ({hook.fired_at})")
        if check is not None:
            await check(context)
        if completed:
            return n - 1
        n += 1


ENGINE_STEPS = ["record", "prepare", "boot request", "pass", "maintenance apply"]


@pytest.mark.e2e
@pytest.mark.timeout(900)
@pytest.mark.parametrize("step", ENGINE_STEPS)
async def test_engine_steps_cancelled_at_every_await_are_completed_or_undone_by_the_next_pass(
    site: tuple[Site, Snapshot], monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    from core.engine.requests import carry_out
    from core.models import EngineRequest
    from core.services import boots

    built, snapshot = site
    await snapshot.restore()
    await built.open()
    engine, core, admin = built.engine, built.core, built.admin
    assert engine is not None and core is not None and admin is not None
    hook = CancelAt()
    install(monkeypatch, hook)

    async def current_boot(machine: str) -> tuple[int, str] | None:
        async with core.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT id, state FROM boots WHERE machine_name = :m AND state IN ('requested', 'preparing', 'ready')"
                    ),
                    {"m": machine},
                )
            ).first()
        return (row[0], row[1]) if row else None

    async def ready_now(_context: Any) -> None:
        boot = await current_boot("pc03")
        assert boot is not None and boot[1] == "ready", f"pc03's boot was not completed: {boot}"

    async def nothing() -> None:
        return None

    scenarios: dict[str, tuple[Any, Any, Any]] = {}
    # record: one transaction (the boot before and the new one change together)
    scenarios["record"] = (nothing, lambda _: engine.preparer.record(mac_of(3), "pc", "pc", "127.0.0.1"), None)

    # prepare (clone, target, mark ready) of a recorded and claimed boot: the next pass completes it
    async def recorded() -> Claimed:
        claimed = await engine.preparer.record(mac_of(3), "pc", "pc", "127.0.0.1")
        assert isinstance(claimed, Claimed), claimed
        return claimed

    scenarios["prepare"] = (recorded, lambda claimed: engine.preparer.prepare(claimed.boot.id, claimed), ready_now)

    # a PC's boot request, from the top
    async def ready_if_recorded(_context: Any) -> None:  # cancelled before its record: no boot, as before
        boot = await current_boot("pc03")
        assert boot is None or boot[1] == "ready", f"pc03's boot was not completed: {boot}"

    scenarios["boot request"] = (nothing, lambda _: engine.boot_request(mac_of(3), "127.0.0.1"), ready_if_recorded)

    # a pass with work of every kind: boots to prepare and to end, a target gone, stray files
    async def work() -> None:
        await _toggle(built, ["pc03", "pc04"])
        await _drift(built)

    scenarios["pass"] = (work, lambda _: engine.run_pass(), None)

    # the engine's half of a maintenance apply: a clone into the images directory and a version
    async def apply_requested() -> EngineRequest:
        from core.services import images as image_service

        async with core.db.engine.connect() as conn:
            policy = (
                await conn.execute(text("SELECT writeback_policy FROM machines WHERE name = 'pc05'"))
            ).scalar_one()
        if policy != "maintenance":
            await boots.take_offline(core, admin, ["pc05"], force=True)
            await engine.run_pass()
            await boots.maintenance_start(core, admin, "pc05")
            assert (await engine.boot_request(mac_of(5), "127.0.0.1")).state == "ready"
        request_id = await boots.maintenance_apply(core, admin, "pc05")
        async with core.db.session() as session:
            request = await session.get(EngineRequest, request_id)
            assert request is not None
            session.expunge(request)
        versions = await image_service.list_versions(core, admin, "lab")
        return request, len(versions)

    async def one_version_each(context: Any) -> None:
        from core.services import images as image_service

        request, versions_before = context
        async with core.db.session() as session:
            row = await session.get(EngineRequest, request.id)
            assert row is not None and row.state == "done", (row and row.state, row and row.error)
        versions = await image_service.list_versions(core, admin, "lab")
        assert len(versions) == versions_before + 1, [v.number for v in versions]
        files = {p.name for p in (Path(built.env["GGNET_DATA_DIR"]) / "images").iterdir()}
        async with core.db.engine.connect() as conn:
            named = set((await conn.execute(text("SELECT file_name FROM image_versions"))).scalars())
        assert files == named, f"images/ holds {sorted(files - named)} that no version names"

    scenarios["maintenance apply"] = (apply_requested, lambda c: carry_out(engine, c[0]), one_version_each)
    setup, run, check = scenarios[step]
    points = await _each_point(built, hook, step, setup, run, check)
    print(f"\n{step}: {points} await points")
    assert points >= 5


@pytest.mark.parametrize("db_kind", ["sqlite"])
async def test_interrupted_target_delete_leaves_no_chap_account(
    site: tuple[Site, Snapshot], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target delete cancelled at any point, then retried (what the next pass or a retried request
    does): neither the target nor its CHAP account is left on tgtd. (The tgt backend of the first
    engine deleted the account after the target, and a retry, finding no target, left the account.)"""
    from tests.e2e.engine_site import IQN_BASE, tgt_accounts, tgt_targets

    built, snapshot = site
    await snapshot.restore()
    await built.open()
    engine = built.engine
    assert engine is not None and engine.backend is not None
    backend = engine.backend
    iqn = f"{IQN_BASE}:pc01"
    hook = CancelAt()
    install(monkeypatch, hook)
    for n in range(1, MAX_POINTS):
        completed, _ = await run_cancelled(hook, n, lambda: backend.delete(iqn))
        await backend.delete(iqn)  # the retry
        assert iqn not in tgt_targets(built.tgtd) and "pc01" not in tgt_accounts(built.tgtd), f"cancelled at {n}"
        await engine.run_pass()  # pc01's boot is ready: its target comes back
        assert iqn in tgt_targets(built.tgtd)
        if completed:
            break
    assert n > 3, "the delete had hardly any await points: the test would show nothing"
