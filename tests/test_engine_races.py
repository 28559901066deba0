"""A pass and a PC's boot request meet, each interleaving made to happen on purpose.

A pass reads the database and the target stack once, then acts; a boot request can record and
prepare a newer boot in between. Each test holds one side at the exact await where the other must
slip in (an asyncio.Event in a wrapped call), lets the other finish, then releases: the newer boot
must keep its target and its writeback. Real SQLite and PostgreSQL, a private tgtd, real files.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from core.engine.prepare import Claimed
from core.storage import writeback as writeback_mod
from tests.e2e.engine_site import (
    IQN_BASE,
    Site,
    Snapshot,
    convergence_problems_async,
    mac_of,
    shared_tgtd,
    site,
    tgt_targets,
)

__all__ = ["shared_tgtd", "site"]  # the fixtures, imported for the tests below
pytestmark = pytest.mark.slow  # a private tgtd and a site built for each test


class Gate:
    """Holds the first caller of a wrapped call until released (the others pass)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.used = False

    async def hold(self) -> None:
        if self.used:
            return
        self.used = True
        self.entered.set()
        await self.release.wait()


def hold_pass_after_observing(monkeypatch: pytest.MonkeyPatch, built: Site) -> Gate:
    """The pass's look at the whole target stack returns, then waits: its picture is now old."""
    gate = Gate()
    backend = built.engine.backend  # type: ignore[union-attr]
    original = backend.observe

    async def observe(iqns: Any = None) -> Any:
        seen = await original(iqns)
        if iqns is None:
            await gate.hold()
        return seen

    monkeypatch.setattr(backend, "observe", observe)
    return gate


def hold_first_clone(monkeypatch: pytest.MonkeyPatch) -> Gate:
    gate = Gate()
    original = writeback_mod._FileDriver.create

    async def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        await gate.hold()
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(writeback_mod._FileDriver, "create", create)
    return gate


async def current(built: Site, machine: str) -> dict[str, Any]:
    """The machine's current boot and the path of its system writeback."""
    assert built.core is not None
    async with built.core.db.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT b.id, b.state, w.file_name FROM boots b LEFT JOIN writebacks w "
                    "ON w.id = b.system_writeback_id WHERE b.machine_name = :m "
                    "AND b.state IN ('requested', 'preparing', 'ready')"
                ),
                {"m": machine},
            )
        ).one()
    path = Path(built.env["GGNET_DATA_DIR"]) / "writebacks" / row.file_name if row.file_name else None
    return {"id": row.id, "state": row.state, "path": path}


def served(built: Site, machine: str) -> str | None:
    target = tgt_targets(built.tgtd).get(f"{IQN_BASE}:{machine}")
    return None if target is None else target.luns.get(1)


async def opened(site: tuple[Site, Snapshot]) -> Site:
    built, snapshot = site
    await snapshot.restore()
    await built.open()
    return built


async def converged(built: Site) -> None:
    assert built.engine is not None
    report = await built.engine.run_pass()
    assert report.errors == []
    assert await convergence_problems_async(built.env, built.tgtd) == []


async def test_a_superseded_preparation_does_not_overwrite_the_newer_boots_target(
    site: tuple[Site, Snapshot], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Boot A of pc03 is being prepared (its clone is slow) when the PC asks again: boot B is
    recorded and prepared at once. A then finishes its clone: it must not set the target to its
    own writeback and secret (B's client would be refused, or get A's disk)."""
    built = await opened(site)
    engine = built.engine
    assert engine is not None
    gate = hold_first_clone(monkeypatch)
    claimed_a = await engine.preparer.record(mac_of(3), "pc", "pc", None)
    assert isinstance(claimed_a, Claimed), claimed_a
    preparing_a = asyncio.ensure_future(engine.preparer.prepare(claimed_a.boot.id, claimed_a))
    await gate.entered.wait()
    answer = await engine.boot_request(mac_of(3), "127.0.0.1")
    assert answer.state == "ready"
    b = await current(built, "pc03")
    gate.release.set()
    a_row, _, _ = await preparing_a
    assert a_row.state == "ending"
    assert served(built, "pc03") == str(b["path"]), "the target serves the superseded boot's writeback"
    await converged(built)


async def test_a_pass_does_not_recreate_the_target_of_a_boot_superseded_meanwhile(
    site: tuple[Site, Snapshot], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pc01's target vanished (tgtd restarted); a pass sees it missing for boot A. Before it acts,
    pc01 boots again (boot B, its own target). The pass must not build A's target over B's."""
    built = await opened(site)
    engine = built.engine
    assert engine is not None
    victim = tgt_targets(built.tgtd)[f"{IQN_BASE}:pc01"]
    built.tgtd.tgtadm("--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", str(victim.tid), "--force")
    gate = hold_pass_after_observing(monkeypatch, built)
    passing = asyncio.ensure_future(engine.run_pass())
    await gate.entered.wait()
    assert (await engine.boot_request(mac_of(1), "127.0.0.1")).state == "ready"
    b = await current(built, "pc01")
    gate.release.set()
    await passing
    assert served(built, "pc01") == str(b["path"]), "the pass rebuilt the superseded boot's target"
    await converged(built)


async def test_a_pass_does_not_delete_a_target_a_boot_made_meanwhile(
    site: tuple[Site, Snapshot], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pc01 was taken offline: for the pass its target is a stray. Before the pass deletes it, pc01
    boots (boot B gets that target). The pass must leave B's target alone."""
    from core.services import boots

    built = await opened(site)
    engine, core, admin = built.engine, built.core, built.admin
    assert engine is not None and core is not None and admin is not None
    await boots.take_offline(core, admin, ["pc01"], force=True)
    gate = hold_pass_after_observing(monkeypatch, built)
    passing = asyncio.ensure_future(engine.run_pass())
    await gate.entered.wait()
    assert (await engine.boot_request(mac_of(1), "127.0.0.1")).state == "ready"
    b = await current(built, "pc01")
    gate.release.set()
    await passing
    assert served(built, "pc01") == str(b["path"]), "the pass deleted the new boot's target"
    await converged(built)


async def test_a_pass_does_not_take_a_new_boots_writeback_for_a_stray_file(
    site: tuple[Site, Snapshot], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pc03 boots while a pass is under way: its new writeback file is not in the pass's picture
    of the database. The pass must not delete it as a file nobody owns."""
    built = await opened(site)
    engine = built.engine
    assert engine is not None
    gate = hold_pass_after_observing(monkeypatch, built)
    passing = asyncio.ensure_future(engine.run_pass())
    await gate.entered.wait()
    assert (await engine.boot_request(mac_of(3), "127.0.0.1")).state == "ready"
    b = await current(built, "pc03")
    gate.release.set()
    await passing
    assert b["path"] is not None and b["path"].is_file(), "the pass deleted the new boot's writeback"
    await converged(built)


async def test_a_pass_does_not_remove_a_kept_writeback_a_boot_took_up_meanwhile(
    site: tuple[Site, Snapshot], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pc04 keeps its disk. Its boot A died while cloning (its writeback is left ``creating``) and
    was taken offline: for a pass, an orphan. Before the pass removes it, pc04 boots and boot B
    takes that kept writeback up (and finishes its clone). The pass must leave it to B."""
    from core.services import boots, machines

    built = await opened(site)
    engine, core, admin = built.engine, built.core, built.admin
    assert engine is not None and core is not None and admin is not None
    await machines.update_machine(core, admin, "pc04", keep_writeback=True)
    # recorded and claimed, then the process died before cloning
    claimed_a = await engine.preparer.record(mac_of(4), "pc", "pc", None)
    assert isinstance(claimed_a, Claimed), claimed_a
    (kept,) = claimed_a.writebacks
    await boots.take_offline(core, admin, ["pc04"], force=True)
    gate = hold_pass_after_observing(monkeypatch, built)
    passing = asyncio.ensure_future(engine.run_pass())
    await gate.entered.wait()
    assert (await engine.boot_request(mac_of(4), "127.0.0.1")).state == "ready"
    b = await current(built, "pc04")
    assert b["path"] is not None and b["path"].name == kept.file_name  # B took the kept writeback up
    gate.release.set()
    await passing
    assert b["path"].is_file(), "the pass removed the writeback the new boot serves"
    await converged(built)


async def test_a_cancelled_pass_returns_only_once_its_preparations_stopped(
    site: tuple[Site, Snapshot], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass prepares two boots at once and is cancelled (a shutdown). One preparation stops at
    once, the other takes a moment (a clone's thread finishing its chunk). The pass must not return
    before both stopped: a pass started right after would find the second boot still "in flight",
    skip it, and leave it requested."""
    from core.services import boots

    built = await opened(site)
    engine, core, admin = built.engine, built.core, built.admin
    assert engine is not None and core is not None and admin is not None
    started = asyncio.Event()
    calls = 0
    original = writeback_mod._FileDriver.create

    async def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        slow = calls == 2
        if calls == 2:
            started.set()
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            if slow:
                await asyncio.shield(asyncio.sleep(0.3))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(writeback_mod._FileDriver, "create", create)
    await boots.prepare(core, admin, ["pc03", "pc04"])
    passing = asyncio.ensure_future(engine.run_pass())
    await started.wait()
    passing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await passing
    assert engine.in_flight_boots == set(), "the cancelled pass returned while a preparation was still running"
    monkeypatch.setattr(writeback_mod._FileDriver, "create", original)
    await converged(built)
    assert (await current(built, "pc03"))["state"] == (await current(built, "pc04"))["state"] == "ready"


async def test_session_start_prepares_the_version_the_machine_boots(site: tuple[Site, Snapshot]) -> None:
    """`ggnet session start` (boots.prepare) then one pass: the machine's boot is ready, serving a
    clone of its image's active version."""
    from core.services import boots

    built = await opened(site)
    engine, core, admin = built.engine, built.core, built.admin
    assert engine is not None and core is not None and admin is not None
    results, boot_ids = await boots.prepare(core, admin, ["pc03"])
    assert [r.ok for r in results] == [True] and len(boot_ids) == 1
    await converged(built)
    b = await current(built, "pc03")
    assert b["state"] == "ready" and served(built, "pc03") == str(b["path"])
    image = Path(built.env["GGNET_DATA_DIR"]).parent / "desk.raw"  # what Site.build imported as desk v1
    assert b["path"].read_bytes()[512:1024] == image.read_bytes()[512:1024]  # its LBA 1 names the image
