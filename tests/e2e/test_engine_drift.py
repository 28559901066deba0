"""Drift on tgtd, made behind ggnet's back with tgtadm and the file system, through the engine.

One `ggnet serve` for the module. Before each test pc01 is booted (its boot request answered) on a
target that does not sit on tgtd's lowest free tid, so a target that is deleted and made again
(rather than repaired in place) shows as a changed tid. A target outside the IQN base stands by
and must never be touched. Each kind of drift must be reported by `ggnet reconcile --dry-run`,
naming the field, and repaired by `ggnet reconcile`; afterwards an iSCSI login with the boot's
CHAP secret works (libiscsi's iscsi-inq, a real initiator) and, at the end, a real QEMU client
boots through it all.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import qemu_client
from tests.e2e.bootdisk import WRITE_OK, make_prev_disk
from tests.e2e.engine_site import (
    IQN_BASE,
    ShownTarget,
    convergence_problems,
    db_rows,
    engine_dry_run,
    engine_env,
    engine_pass,
    ggnet,
    mac_of,
    setup_site,
    tgt_accounts,
    tgt_targets,
)
from tests.e2e.qemu_client import ClientSpec, run_client
from tests.e2e.serve import GgnetServe
from tests.e2e.tgtd import TgtDaemon, start_private_tgtd, unavailable

pytestmark = pytest.mark.e2e

PC01 = f"{IQN_BASE}:pc01"
FOREIGN = "iqn.2000-01.org.example:not-ggnet"


class Drift:
    def __init__(self, serve: GgnetServe, tgtd: TgtDaemon, env: dict[str, str], tmp: Path) -> None:
        self.serve, self.tgtd, self.env, self.tmp = serve, tgtd, env, tmp

    def adm(self, *args: str) -> str:
        return self.tgtd.tgtadm("--lld", "iscsi", *args).stdout

    def target(self) -> ShownTarget:
        return tgt_targets(self.tgtd)[PC01]

    def boot(self) -> dict[str, Any]:
        rows = db_rows(
            self.env,
            b="SELECT b.chap_secret, w.file_name FROM boots b JOIN writebacks w ON w.id = b.system_writeback_id "
            "WHERE b.machine_name = 'pc01' AND b.state = 'ready'",
        )["b"]
        assert len(rows) == 1, rows
        return rows[0]

    def login_works(self) -> bool:
        """A real iSCSI login with pc01's initiator name, CHAP user and this boot's secret."""
        port = self.env["GGNET_PORTAL"].rsplit(":", 1)[1]
        url = f"iscsi://pc01%{self.boot()['chap_secret']}@127.0.0.1:{port}/{PC01}/1"
        result = subprocess.run(
            ["iscsi-inq", "-i", f"{IQN_BASE}:client.pc01", url], capture_output=True, text=True, timeout=30
        )
        return result.returncode == 0


@pytest.fixture(scope="module")
def drift_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drift]:
    why = unavailable() or qemu_client.available()
    if why:
        pytest.skip(why)
    if shutil.which("iscsi-inq") is None:
        pytest.skip("iscsi-inq is not installed (Debian: libiscsi-bin)")
    tmp = tmp_path_factory.mktemp("drift")
    tgtd = start_private_tgtd(tmp)
    serve = None
    try:
        env = engine_env(tmp, tgtd)
        setup_site(env, 2, {"desk": [make_prev_disk(tmp / "v1.raw", token="v1")]})
        serve = GgnetServe(env, tmp / "serve.log").start()
        site = Drift(serve, tgtd, env, tmp)
        site.adm("--op", "new", "--mode", "target", "--tid", "100", "-T", FOREIGN)
        site.adm("--op", "bind", "--mode", "target", "--tid", "100", "-I", "ALL")
        yield site
    finally:
        if serve is not None:
            serve.stop()
        tgtd.stop()


@pytest.fixture
def site(drift_site: Drift) -> Iterator[Drift]:
    """pc01 booted afresh on a tid above a free one; nothing drifts; the foreign target as it was."""
    s = drift_site
    foreign_before = tgt_targets(s.tgtd)[FOREIGN.lower()]
    asyncio.run(_offline(s.env, "pc01"))
    engine_pass(s.env)
    assert PC01 not in tgt_targets(s.tgtd)
    used = {t.tid for t in tgt_targets(s.tgtd).values()}
    placeholder = min(set(range(1, 100)) - used)
    s.adm("--op", "new", "--mode", "target", "--tid", str(placeholder), "-T", "iqn.2000-01.org.example:placeholder")
    assert "sanboot" in s.serve.boot_and_settle(mac_of(1))
    s.adm("--op", "delete", "--mode", "target", "--tid", str(placeholder))
    assert s.target().tid > placeholder
    assert _drift_found(s) == [] and convergence_problems(s.env, s.tgtd) == [] and s.login_works()
    yield s
    assert tgt_targets(s.tgtd)[FOREIGN.lower()] == foreign_before, "ggnet touched a target that is not its own"


async def _offline(env: dict[str, str], name: str) -> None:
    from core.auth import Actor
    from core.context import Core
    from core.models import Role
    from core.services import boots
    from tests.e2e.engine_site import settings_of

    core = Core.open(settings_of(env))
    try:
        await boots.take_offline(core, Actor(None, "root (local)", Role.ADMIN), [name], force=True)
    finally:
        await core.close()


def _drift_found(site: Drift) -> list[str]:
    """What a dry-run pass of the running serve finds (as the CLI's dry run, without its start-up)."""
    report = engine_dry_run(site.env)
    return [d.describe() for d in report.drift] + report.errors


def _dry_run(site: Drift) -> list[str]:
    result = ggnet(site.env, "reconcile", "--dry-run", check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result
    return [line for line in result.stdout.splitlines() if line.startswith("would repair: ")]


def _reconcile(site: Drift) -> str:
    result = ggnet(site.env, "reconcile", check=False)
    assert result.returncode == 0 and result.stderr == "", result
    return result.stdout


# --- each kind of drift ----------------------------------------------------------------------------


def drift_portal(s: Drift) -> None:
    port = s.env["GGNET_PORTAL"].rsplit(":", 1)[1]
    s.adm("--op", "delete", "--mode", "portal", "--param", f"portal=127.0.0.1:{port}")


def drift_lun(s: Drift) -> None:
    s.adm("--op", "delete", "--mode", "logicalunit", "--tid", str(s.target().tid), "--lun", "1")


def drift_backing_file(s: Drift) -> None:
    other = make_prev_disk(s.tmp / "intruder.raw", token="intruder")
    tid = str(s.target().tid)
    s.adm("--op", "delete", "--mode", "logicalunit", "--tid", tid, "--lun", "1")
    s.adm("--op", "new", "--mode", "logicalunit", "--tid", tid, "--lun", "1", "-b", str(other))


def drift_acl(s: Drift) -> None:
    tid = str(s.target().tid)
    s.adm("--op", "unbind", "--mode", "target", "--tid", tid, "--initiator-name", f"{IQN_BASE}:client.pc01")
    s.adm("--op", "bind", "--mode", "target", "--tid", tid, "--initiator-name", "iqn.2000-01.org.example:intruder")


def drift_chap_user(s: Drift) -> None:
    tid = str(s.target().tid)
    s.tgtd.tgtadm("--lld", "iscsi", "--op", "delete", "--mode", "account", "--user", "intruder", check=False)
    s.adm("--op", "unbind", "--mode", "account", "--tid", tid, "--user", "pc01")
    s.adm("--op", "new", "--mode", "account", "--user", "intruder", "--password", "intruder-secret1")
    s.adm("--op", "bind", "--mode", "account", "--tid", tid, "--user", "intruder")


def drift_chap_secret(s: Drift) -> None:
    tid = str(s.target().tid)
    s.adm("--op", "delete", "--mode", "account", "--user", "pc01")
    s.adm("--op", "new", "--mode", "account", "--user", "pc01", "--password", "notThisBootsSecret9")
    s.adm("--op", "bind", "--mode", "account", "--tid", tid, "--user", "pc01")


def drift_disabled(s: Drift) -> None:
    s.adm("--op", "update", "--mode", "target", "--tid", str(s.target().tid), "-n", "state", "-v", "offline")


def drift_target_deleted(s: Drift) -> None:
    s.adm("--op", "delete", "--mode", "target", "--tid", str(s.target().tid), "--force")


def drift_stray_target(s: Drift) -> None:
    s.adm("--op", "new", "--mode", "target", "--tid", "50", "-T", f"{IQN_BASE}:ghost")


def drift_stray_account(s: Drift) -> None:
    """pc02 has no boot: as a kill between making its account and binding it would leave it."""
    s.adm("--op", "new", "--mode", "account", "--user", "pc02", "--password", "leftOverSecret12")


def drift_stray_writeback(s: Drift) -> None:
    (Path(s.env["GGNET_DATA_DIR"]) / "writebacks" / "wb-99-system-deadbeef.raw").write_bytes(b"\0" * 4096)


def drift_orphan_temporary(s: Drift) -> None:
    (Path(s.env["GGNET_DATA_DIR"]) / "writebacks" / ".wb-98-system-deadbeef.raw.0123456789ab.part").write_bytes(b"x")


# (how, the dry run's line, what the repair says)
DRIFTS: dict[str, tuple[Callable[[Drift], None], str | None, str]] = {
    "portal": (drift_portal, f"target {PC01} (portal", f"target {PC01} (pc01): "),
    "lun": (drift_lun, f"target {PC01} (lun", f"target {PC01} (pc01): "),
    "backing_file": (drift_backing_file, f"target {PC01} (backing_file", f"target {PC01} (pc01): "),
    "acl": (drift_acl, f"target {PC01} (acl", f"target {PC01} (pc01): "),
    "chap_user": (drift_chap_user, f"target {PC01} (chap_user", f"target {PC01} (pc01): "),
    "chap_secret": (drift_chap_secret, f"target {PC01} (chap_secret", f"target {PC01} (pc01): "),
    "disabled": (drift_disabled, f"target {PC01} (enabled", f"target {PC01} (pc01): "),
    "target deleted": (drift_target_deleted, f"target {PC01} (missing", f"target {PC01} (pc01): missing"),
    "stray target": (drift_stray_target, f"stray-target {IQN_BASE}:ghost", f"stray target {IQN_BASE}:ghost: deleted"),
    "stray account": (drift_stray_account, "stray-account pc02", "stray CHAP account pc02 (pc02): deleted"),
    "stray writeback": (
        drift_stray_writeback,
        "stray-writeback wb-99-system-deadbeef.raw",
        "wb-99-system-deadbeef.raw: removed",
    ),
    "orphan temporary": (
        drift_orphan_temporary,
        None,  # a dry run leaves temporaries alone: whether their creator lives shows only by taking its lock
        ".wb-98-system-deadbeef.raw.0123456789ab.part: removed",
    ),
}


@pytest.mark.parametrize("kind", list(DRIFTS))
def test_drift_is_reported_naming_the_field_and_repaired(site: Drift, kind: str) -> None:
    make, reported, repaired = DRIFTS[kind]
    make(site)
    lines = _dry_run(site)
    assert reported is None or any(reported in line for line in lines), lines
    if kind == "chap_secret":  # tgtd never shows a secret: a login with the boot's secret is refused
        assert not site.login_works()
    else:  # seen independently of ggnet, too
        assert convergence_problems(site.env, site.tgtd) != []
    out = _reconcile(site)
    assert any(line.startswith("repaired: ") and repaired in line for line in out.splitlines()), out
    assert convergence_problems(site.env, site.tgtd) == []
    assert _drift_found(site) == []
    assert site.login_works(), "pc01's client could not log in with its boot's secret after the repair"


def test_an_account_that_is_not_a_machines_stays(site: Drift) -> None:
    """ggnet's own: its machines' accounts. Someone else's account, bound to nothing, is left alone."""
    site.adm("--op", "new", "--mode", "account", "--user", "visitor", "--password", "visitorSecret123")
    try:
        assert _drift_found(site) == []
        _reconcile(site)
        assert "visitor" in tgt_accounts(site.tgtd)
    finally:
        site.adm("--op", "delete", "--mode", "account", "--user", "visitor")


IN_PLACE = ["portal", "lun", "backing_file", "acl", "chap_user", "chap_secret", "disabled"]


@pytest.mark.parametrize("kind", IN_PLACE)
def test_drift_on_a_target_is_repaired_in_place(site: Drift, kind: str) -> None:
    """The target stays (same tid): a client logged in to it keeps its session."""
    tid = site.target().tid
    DRIFTS[kind][0](site)
    _reconcile(site)
    assert site.target().tid == tid, "the target was deleted and made again"
    assert convergence_problems(site.env, site.tgtd) == [] and site.login_works()


def test_a_client_boots_after_all_that(site: Drift) -> None:
    """One real QEMU client (stock iPXE) boots pc01 through the repaired server."""
    for kind in ("acl", "lun"):
        DRIFTS[kind][0](site)
    _reconcile(site)
    fail = (*qemu_client.DEFAULT_FAIL, "GGNET-NOT-BOOTING")
    spec = ClientSpec(site.tmp / "qemu-pc01", mac_of(1), Path(site.env["GGNET_TFTP_ROOT"]), fail=fail, timeout=120)
    result = asyncio.run(run_client(spec))
    assert result.ok, f"{result.reason}\n{result.com2_text[-2000:]}"
    assert WRITE_OK in result.com1_text
