"""Dozens of `ggnet` commands at once against one database, with `ggnet serve` running.

What operators do in a busy hour, all in the same second: start and stop sessions of overlapping
machines, change machines, list, read the boot history, reconcile. Every command must succeed or
say why in one `error: <sentence>` line — never "unexpected", never "database is locked", never a
traceback — and afterwards one pass leaves everything consistent. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli import ggnet_executable
from tests.conftest import drop_pg_database, make_database_url
from tests.e2e.bootdisk import make_prev_disk
from tests.e2e.engine_site import convergence_problems, engine_dry_run, engine_env, engine_pass, mac_of, setup_site
from tests.e2e.serve import GgnetServe
from tests.e2e.tgtd import TgtDaemon

pytestmark = pytest.mark.e2e

MACHINES = 8
COMMANDS = 36


def _commands(rng: random.Random) -> list[list[str]]:
    names = [f"pc{i:02d}" for i in range(1, MACHINES + 1)]

    def some(k: int) -> list[str]:
        return sorted(rng.sample(names, k))

    kinds = [
        lambda: ["session", "start", *some(3)],
        lambda: ["session", "start", *some(2), "--no-wait"],
        lambda: ["session", "start", "--all", "--no-wait"],
        lambda: ["session", "stop", *some(3), "--force"],
        lambda: ["session", "stop", "--all", "--force", "--no-wait"],
        lambda: ["machine", "set", some(1)[0], rng.choice(["--keep-writeback", "--discard-writeback"])],
        lambda: ["machine", "list"],
        lambda: ["machine", "show", some(1)[0]],
        lambda: ["session", "list", "--json"],
        lambda: ["boot", "history", "--json"],
        lambda: ["boot", "history", some(1)[0]],
        lambda: ["target", "list"],
        lambda: ["reconcile"],
        lambda: ["reconcile", "--dry-run"],
    ]
    # every kind at least twice, the rest at random
    chosen = [k() for k in kinds for _ in range(2)]
    chosen += [rng.choice(kinds)() for _ in range(COMMANDS - len(chosen))]
    rng.shuffle(chosen)
    return chosen


@pytest.fixture
def database_url(db_kind: str, tmp_path: Path, template_root: Path):  # type: ignore[no-untyped-def]
    if db_kind == "sqlite":
        yield None  # the default: ggnet.db in the data directory
        return
    url, name = asyncio.run(make_database_url("pg", tmp_path, template_root))
    yield url
    asyncio.run(drop_pg_database(name))  # type: ignore[arg-type]


@pytest.mark.timeout(900)
def test_dozens_of_commands_at_once_succeed_or_say_why(
    tmp_path: Path, tgtd_daemon: TgtDaemon, database_url: str | None, db_kind: str
) -> None:
    env = engine_env(tmp_path, tgtd_daemon, database_url=database_url)
    setup_site(env, MACHINES, {"desk": [make_prev_disk(tmp_path / "v1.raw", token="v1")]}, keep={"pc02"})
    serve = GgnetServe(env, tmp_path / "serve.log").start()
    seed = int(os.environ.get("GGNET_CHAOS_SEED", time.time()))
    rng = random.Random(seed)
    try:
        for i in (1, 2, 5):  # some machines are booted when the rush starts
            assert "sanboot" in serve.boot_script(mac_of(i))
        commands = _commands(rng)
        started = time.monotonic()
        running = [
            (
                args,
                subprocess.Popen(
                    [ggnet_executable(), *args],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
            for args in commands
        ]
        results = []
        for args, proc in running:
            out, err = proc.communicate(timeout=600)
            results.append((args, proc.returncode, out, err))
        elapsed = time.monotonic() - started
        errors: collections.Counter[str] = collections.Counter()
        for args, code, out, err in results:
            shown = f"ggnet {' '.join(args)} -> {code}\n{err}"
            assert "Traceback" not in out + err, shown
            assert "unexpected" not in err and "database is locked" not in err, shown
            assert code in (0, 1), shown
            for line in err.splitlines():
                assert line.startswith("error: ") and len(line) > len("error: ") + 10, shown
                errors[f"{args[0]} {args[1]}: {line}"] += 1
            if code == 1:
                assert err, shown
        # the reading commands and the reconciles all succeeded
        for args, code, _out, err in results:
            if args[:2] in (["machine", "list"], ["session", "list"], ["boot", "history"], ["target", "list"]):
                assert code == 0, (args, err)
        print(f"\n{db_kind}: {len(results)} commands at once in {elapsed:.1f} s (seed {seed}); sentences:")
        for line, count in sorted(errors.items()):
            print(f"  {count} x {line}")
        serve.wait_healthy()
        report = engine_pass(env)  # one pass, after all of it
        assert report.errors == [], report.to_json()
        assert convergence_problems(env, tgtd_daemon) == []
        report = engine_dry_run(env)
        assert report.drift == [] and report.errors == [], report.to_json()
        assert convergence_problems(env, tgtd_daemon) == []
    finally:
        serve.stop()
