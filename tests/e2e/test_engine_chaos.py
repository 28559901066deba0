"""`ggnet serve` killed with SIGKILL in the middle of its work, again and again; two of them at once.

No QEMU here: the boot requests are plain HTTP GETs of /boot/<mac> (what iPXE does), for PCs that
do not exist — their iSCSI login is not what these tests are about (test_engine_tgt.py boots real
clients). Writebacks are copies: the test's tmp directory is ext4, which cannot reflink.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.cli import ggnet_executable
from tests.e2e.bootdisk import make_prev_disk
from tests.e2e.engine_site import (
    convergence_problems,
    db_rows,
    engine_dry_run,
    engine_env,
    ggnet,
    mac_of,
    machine_names,
    setup_site,
    tgt_targets,
    unsettled,
)
from tests.e2e.serve import GgnetServe
from tests.e2e.tgtd import TgtDaemon

pytestmark = pytest.mark.e2e

MACHINES = 20
KILLS = 20
KILL_BUDGET_SECONDS = 600  # the loop stops after this even if fewer kills happened (then the test fails)
STRANGERS = ["52:54:00:c4:01:01", "52:54:00:c4:01:02"]


def _image(tmp_path: Path, token: str) -> Path:
    """A boot disk with some data in it, so each copy takes a moment (a kill can land in one)."""
    path = make_prev_disk(tmp_path / f"{token}.raw", size_mib=24, token=token)
    with open(path, "r+b") as f:
        for mib in range(1, 24, 3):
            f.seek(mib << 20)
            f.write(os.urandom(1 << 20))
    return path


@dataclass
class Workload:
    """PCs asking for their scripts and operators typing commands, until stopped."""

    env: dict[str, str]
    url: str
    rng: random.Random
    stop_flag: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    running: dict[int, subprocess.Popen[str]] = field(default_factory=dict)
    finished: list[tuple[list[str], int, str, str]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, boot_threads: int = 3, command_threads: int = 2) -> None:
        self.stop_flag.clear()
        self.threads = [threading.Thread(target=self._boots, daemon=True) for _ in range(boot_threads)]
        self.threads += [threading.Thread(target=self._commands, daemon=True) for _ in range(command_threads)]
        for thread in self.threads:
            thread.start()

    def _boots(self) -> None:
        macs = [mac_of(i) for i in range(1, MACHINES + 1)] + STRANGERS
        while not self.stop_flag.is_set():
            burst = self.rng.sample(macs, self.rng.randint(1, 6))
            for mac in burst:
                if self.stop_flag.is_set():
                    return
                try:
                    with urllib.request.urlopen(f"{self.url}/boot/{mac.replace(':', '-')}", timeout=20) as answer:
                        body = answer.read().decode()
                    with self.lock:
                        self.answers.append(body)
                except (OSError, http.client.HTTPException):  # URLError is an OSError
                    time.sleep(0.05)  # the server was killed, maybe mid-answer: the PC's iPXE would retry too

    def _intent(self) -> list[str]:
        rng = self.rng
        some = sorted(rng.sample(machine_names(MACHINES), rng.randint(1, 5)))
        return rng.choice(
            [
                ["session", "start", "--all", "--no-wait"],
                ["session", "start", *some, "--no-wait"],
                ["session", "start", *some],  # waits: with no engine running it converges itself
                ["session", "stop", "--all", "--force", "--no-wait"],
                ["session", "stop", *some, "--force", "--no-wait"],
                ["machine", "set", some[0], "--keep-writeback"],
                ["machine", "set", some[0], "--discard-writeback"],
                ["image", "activate", "desk", rng.choice(["1", "2"])],
                ["reconcile"],
            ]
        )

    def _commands(self) -> None:
        while not self.stop_flag.is_set():
            args = self._intent()
            proc = subprocess.Popen(
                [ggnet_executable(), *args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            with self.lock:
                self.running[proc.pid] = proc
            out, err = proc.communicate()
            with self.lock:
                self.running.pop(proc.pid, None)
                self.finished.append((args, proc.returncode, out, err))

    def stop(self, drain_seconds: float) -> int:
        """No new work; commands still running after ``drain_seconds`` are killed (they may be
        converging themselves: that is one more kill -9 of an engine). Returns how many were."""
        self.stop_flag.set()
        deadline = time.monotonic() + drain_seconds
        while time.monotonic() < deadline and any(t.is_alive() for t in self.threads):
            time.sleep(0.1)
        killed = 0
        with self.lock:
            leftovers = list(self.running.values())
        for proc in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)  # by PID: only the ggnet this test started
                killed += 1
        for thread in self.threads:
            thread.join(30)
        return killed


@pytest.mark.timeout(KILL_BUDGET_SECONDS + 300)
def test_serve_killed_at_random_moments_converges_after_each_restart(tmp_path: Path, tgtd_daemon: TgtDaemon) -> None:
    """20 machines, boot requests and operator intents; ``ggnet serve`` gets SIGKILL at a random
    moment, ≥20 times. After each kill: restart, and the engine's passes at start leave everything
    converged — no boot requested/preparing/ending, tgtd holding exactly the ready boots' targets
    (and CHAP accounts), no stray or partial file, every ready boot's writeback present, rows and
    files in agreement; a dry-run pass finds no drift."""
    env = engine_env(tmp_path, tgtd_daemon, GGNET_CONVERGE_SECONDS="3600")  # no timer passes: only what we cause
    setup_site(
        env,
        MACHINES,
        {"desk": [_image(tmp_path, "v1"), _image(tmp_path, "v2")]},
        keep={"pc03", "pc07", "pc11"},
    )
    rng = random.Random(int(os.environ.get("GGNET_CHAOS_SEED", time.time())))
    serve = GgnetServe(env, tmp_path / "serve.log")
    workload = Workload(env, serve.url, rng)
    started = time.monotonic()
    kills: list[dict[str, object]] = []
    try:
        serve.start()
        while len(kills) < KILLS and time.monotonic() - started < KILL_BUDGET_SECONDS:
            workload.start()
            time.sleep(rng.uniform(0.2, 2.0))  # a boot request's work takes well under a second
            serve.stop(signal.SIGKILL)
            left_mid_work = unsettled(env)  # before any command could converge in its place
            cli_killed = workload.stop(drain_seconds=rng.uniform(0.3, 2.0))
            serve.start()  # healthy: its first pass has run
            report = engine_dry_run(env)
            problems = convergence_problems(env, tgtd_daemon)
            drift = [d.describe() for d in report.drift] + report.errors
            ready = sum(1 for b in db_rows(env, b="SELECT state FROM boots")["b"] if b["state"] == "ready")
            kills.append({"mid_work": len(left_mid_work), "cli_killed": cli_killed, "ready": ready})
            assert not problems and not drift, (
                f"after kill {len(kills)} (left mid-work: {left_mid_work[:10]}):\n"
                + "\n".join(problems + drift)
                + f"\nserve log: {(tmp_path / 'serve.log').read_text()[-3000:]}"
            )
    finally:
        workload.stop(drain_seconds=0)
        serve.stop()
    # every command that was not killed succeeded or said why in one sentence
    for args, code, out, err in workload.finished:
        if code == -signal.SIGKILL:
            continue
        assert code in (0, 1), (args, code, err)
        assert "Traceback" not in out + err and "unexpected" not in err, (args, err)
        assert code == 0 or any(line.startswith("error: ") for line in err.splitlines()), (args, err)
    assert all(a.startswith("#!ipxe") for a in workload.answers)
    mid_work = sum(1 for k in kills if k["mid_work"])
    print(
        f"\n{len(kills)} kills in {time.monotonic() - started:.0f} s; {mid_work} left work in the middle; "
        f"{sum(int(k['cli_killed']) for k in kills)} commands killed; {len(workload.finished)} commands, "
        f"{len(workload.answers)} boot answers; ready boots after each: {[k['ready'] for k in kills]}"
    )
    assert len(kills) >= KILLS, f"only {len(kills)} kills within {KILL_BUDGET_SECONDS} s"
    # the kills must have landed in the middle of work, or this test proves nothing
    assert mid_work >= KILLS // 4, kills
    # the workload did boot machines, so the checks above compared targets with boots
    assert sum(1 for k in kills if k["ready"]) >= KILLS // 2, kills


def _engine_status(env: dict[str, str]) -> dict[str, object]:
    return db_rows(env, s="SELECT pid, mode, passes FROM engine_status")["s"][0]


def _wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.1)


def test_a_second_serve_waits_for_the_lock_never_converges_and_takes_over(
    tmp_path: Path, tgtd_daemon: TgtDaemon
) -> None:
    """Two `ggnet serve` on one server: the second says whom it waits for and does nothing; the
    first does all the work; killed, the second takes over and converges what it left."""
    env = engine_env(tmp_path, tgtd_daemon)
    setup_site(env, 3, {"desk": [_image(tmp_path, "v1")]})
    first = GgnetServe(env, tmp_path / "first.log").start()
    second = GgnetServe(env, tmp_path / "second.log").start(wait=False)
    assert first.process is not None and second.process is not None
    try:
        waiting = f"waiting for the engine lock of bootsrv, held by process {first.process.pid}"
        _wait_for(lambda: waiting in second.log_path.read_text(), 30, "the second serve says whom it waits for")
        # the first answers PCs and operators; the second stays out of it
        assert first.boot_script(mac_of(1)).startswith("#!ipxe")
        assert "pc02: ready" in ggnet(env, "session", "start", "pc02").stdout
        ggnet(env, "reconcile")
        assert _engine_status(env)["pid"] == first.process.pid
        assert second.log_path.read_text().strip() == waiting
        assert second.process.poll() is None
        # the first dies in the middle of things: the second takes over and converges
        ggnet(env, "session", "start", "pc03", "--no-wait")
        first.stop(signal.SIGKILL)
        _wait_for(lambda: "boot requests on" in second.log_path.read_text(), 30, "the second serve takes over")
        second.wait_healthy()
        assert _engine_status(env)["pid"] == second.process.pid
        assert engine_dry_run(env).drift == []
        assert convergence_problems(env, tgtd_daemon) == []
        ready = {
            b["machine_name"]
            for b in db_rows(env, b="SELECT machine_name, state FROM boots")["b"]
            if b["state"] == "ready"
        }
        assert ready == {"pc01", "pc02", "pc03"}
        assert second.boot_script(mac_of(1)).startswith("#!ipxe")
    finally:
        second.stop()
        first.stop()


def test_reconcile_while_serve_runs_is_answered_by_serves_engine(tmp_path: Path, tgtd_daemon: TgtDaemon) -> None:
    """`ggnet reconcile` with `ggnet serve` running records a request that serve's engine carries
    out; the command does not converge itself (it could not take the lock, and does not try to)."""
    env = engine_env(tmp_path, tgtd_daemon)
    setup_site(env, 2, {"desk": [_image(tmp_path, "v1")]})
    serve = GgnetServe(env, tmp_path / "serve.log").start()
    assert serve.process is not None
    try:
        serve.boot_and_settle(mac_of(1))  # the pass the boot request set off is over: nothing repairs behind our back
        victim = tgt_targets(tgtd_daemon)["iqn.2024-01.lan.ggnet:pc01"]
        tgtd_daemon.tgtadm("--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", str(victim.tid), "--force")
        before = int(_engine_status(env)["passes"])  # type: ignore[call-overload]
        dry = ggnet(env, "reconcile", "--dry-run", check=False)
        assert dry.returncode == 0 and "would repair: target iqn.2024-01.lan.ggnet:pc01 (missing)" in dry.stdout, dry
        done = ggnet(env, "reconcile")
        assert "repaired: target iqn.2024-01.lan.ggnet:pc01 (pc01): missing" in done.stdout, done.stdout
        status = _engine_status(env)
        assert status["pid"] == serve.process.pid and status["mode"] == "serve"
        assert int(status["passes"]) >= before + 1  # type: ignore[call-overload]  # (a dry run records none)
        requests = db_rows(env, r="SELECT kind, state, requested_by FROM engine_requests")["r"]
        assert [(r["kind"], r["state"]) for r in requests] == [("pass", "done")] * 2  # the two commands
        assert convergence_problems(env, tgtd_daemon) == []
    finally:
        serve.stop()
