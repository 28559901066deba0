#!/usr/bin/env python3
"""Wall time of the `ggnet` command line (a benchmark, not a test).

Every figure is the real installed command run as a subprocess, printed with its anchor and the
ratio, all from the same run:

* start-up, SQLite, one machine: `ggnet machine list` with GGNET_PASSWORD (a bcrypt check at the
  production cost), and after `ggnet login` (the token); anchor `ggnet --version`;
* `ggnet machine list --json` at 1,000 machines (token); anchor `ggnet --version`;
* an operator's script of 100 commands (25 x machine add, show, set, list --json): every command
  with GGNET_PASSWORD, and `ggnet login` once then the token; with ``--before OLD_GGNET`` (an older
  install, e.g. a checkout of main in its own venv) also that ggnet running the same script, which
  is the "before" of issue 12; anchor 100 x `ggnet --version`;
* scale (unless --no-scale), on SQLite and PostgreSQL: `machine import` of 1,000 and 9,000 rows and
  `machine list` at 0, 1,000 and 10,000 machines (token).

Commands measured against each other run interleaved, a round at a time, so a busy machine slows
them alike; the figure is the median of the rounds. Beside each wall time, in brackets, the CPU time
the commands used (user + system): on a shared machine it moves less than the wall time.

    python benchmarks/bench_cli.py [--before PATH] [--repeat N] [--pg-url URL] [--sqlite-only] [--no-scale]

The PostgreSQL URL comes from --pg-url or GGNET_TEST_PG_URL (a role allowed to create databases);
a scratch database is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PASSWORD = "bench-pass-1"
SCRIPT_ROUNDS = 25  # x 4 commands = 100


def ggnet() -> str:
    beside = Path(sys.executable).parent / "ggnet"
    return str(beside) if beside.exists() else (shutil.which("ggnet") or sys.exit("ggnet is not installed"))


@dataclass(frozen=True)
class Took:
    wall: float
    cpu: float  # user + system of the command

    def __add__(self, other: Took) -> Took:
        return Took(self.wall + other.wall, self.cpu + other.cpu)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(exe: str, args: list[str], env: dict[str, str]) -> tuple[Took, subprocess.CompletedProcess[str]]:
    cpu = _children_cpu()
    start = time.perf_counter()
    result = subprocess.run([exe, *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    took = Took(time.perf_counter() - start, _children_cpu() - cpu)
    if result.returncode != 0:
        sys.exit(f"{exe} {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return took, result


def site(root: Path, name: str, exe: str, base_env: dict[str, str], **extra: str) -> dict[str, str]:
    """An initialised site (admin, no login yet) with its own data and runtime directories."""
    runtime = root / f"{name}-run"
    runtime.mkdir(mode=0o700)
    (root / f"{name}-run-no-login").mkdir(mode=0o700)  # see with_password
    env = {**base_env, "GGNET_DATA_DIR": str(root / name), "XDG_RUNTIME_DIR": str(runtime), **extra}
    run(exe, ["init", "--admin", "admin"], {**env, "GGNET_NEW_PASSWORD": PASSWORD})
    return env


def with_password(env: dict[str, str]) -> dict[str, str]:
    """A command that logs in by password: a runtime directory without the site's login token
    (a token for the same user wins over GGNET_PASSWORD)."""
    runtime = f"{env['XDG_RUNTIME_DIR']}-no-login"
    return {**env, "GGNET_USER": "admin", "GGNET_PASSWORD": PASSWORD, "XDG_RUNTIME_DIR": runtime}


def login(exe: str, env: dict[str, str]) -> Took:
    return run(exe, ["login"], {**env, "GGNET_USER": "admin", "GGNET_PASSWORD": PASSWORD})[0]


def rounds(cases: dict[str, Callable[[], Took]], repeat: int) -> dict[str, Took]:
    """Each case once per round, in turn; the median of each (wall and CPU apart)."""
    times: dict[str, list[Took]] = {label: [] for label in cases}
    for _ in range(repeat):
        for label, case in cases.items():
            times[label].append(case())
    return {
        label: Took(statistics.median(t.wall for t in values), statistics.median(t.cpu for t in values))
        for label, values in times.items()
    }


def line(label: str, figure: Took, anchor_label: str, anchor: Took) -> None:
    print(
        f"  {label:<44} {figure.wall:7.2f} s [{figure.cpu:6.2f}]   {anchor_label:<24} {anchor.wall:6.2f} s "
        f"[{anchor.cpu:6.2f}]   {figure.wall / anchor.wall:5.1f}x [{figure.cpu / anchor.cpu:4.1f}x]"
    )


def command(exe: str, args: list[str], env: dict[str, str], rows: int | None = None) -> Callable[[], Took]:
    def case() -> Took:
        took, result = run(exe, args, env)
        if rows is not None:
            assert len(json.loads(result.stdout)) == rows
        return took

    return case


def csv_file(directory: Path, first: int, count: int) -> Path:
    path = directory / f"machines-{first}-{count}.csv"
    lines = ["name,mac,ip,boot_mode"]
    for i in range(first, first + count):
        ip = f"10.{i // 250 // 250}.{i // 250 % 250}.{i % 250 + 1}"
        lines.append(
            f"pc{i:05d},52:54:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x},{ip},bios"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- start-up and 1,000 machines ---------------------------------------------------------


def warm_up(root: Path, name: str, exe: str, base_env: dict[str, str]) -> None:
    """Once, untimed: the commands' bytecode written, the files in the page cache."""
    env = site(root, name, exe, base_env)
    run(exe, ["machine", "add", "pc1", "--mac", "52:54:00:00:00:01"], with_password(env))
    run(exe, ["machine", "set", "pc1", "--ip", "10.0.0.1"], with_password(env))
    run(exe, ["machine", "show", "pc1"], with_password(env))
    if exe == ggnet():
        login(exe, env)
        run(exe, ["machine", "list", "--json"], env)
        run(exe, ["logout"], env)


def startup(root: Path, base_env: dict[str, str], repeat: int) -> None:
    exe = ggnet()
    env = site(root, "startup", exe, base_env)
    run(exe, ["machine", "add", "pc00001", "--mac", "52:54:00:00:00:01"], with_password(env))
    login(exe, env)
    figures = rounds(
        {
            "version": command(exe, ["--version"], env),
            "password": command(exe, ["machine", "list"], with_password(env)),
            "token": command(exe, ["machine", "list"], env),
        },
        repeat,
    )
    print("\nstart-up, SQLite, 1 machine")
    line("ggnet --version", figures["version"], "(the anchor)", figures["version"])
    line("machine list, GGNET_PASSWORD (bcrypt)", figures["password"], "ggnet --version", figures["version"])
    line("machine list, after ggnet login (token)", figures["token"], "ggnet --version", figures["version"])

    run(exe, ["machine", "import", str(csv_file(root, 2, 999))], env)
    figures = rounds(
        {
            "version": command(exe, ["--version"], env),
            "list": command(exe, ["machine", "list", "--json"], env, rows=1000),
        },
        repeat,
    )
    print("\n1,000 machines, SQLite")
    line("machine list --json (token)", figures["list"], "ggnet --version", figures["version"])


# --- an operator's script of 100 commands -------------------------------------------------


def script(exe: str, env: dict[str, str], use_login: bool) -> Took:
    """The timed part: (ggnet login, then) 100 commands."""
    command_env = env if use_login else with_password(env)
    total = login(exe, env) if use_login else Took(0, 0)
    for i in range(SCRIPT_ROUNDS):
        name = f"pc{i:03d}"
        total += run(exe, ["machine", "add", name, "--mac", f"52:54:00:00:01:{i:02x}"], command_env)[0]
        total += run(exe, ["machine", "show", name], command_env)[0]
        total += run(exe, ["machine", "set", name, "--ip", f"10.1.0.{i + 1}"], command_env)[0]
        total += run(exe, ["machine", "list", "--json"], command_env)[0]
    return total


def scripts(root: Path, base_env: dict[str, str], before: str | None, repeat: int) -> None:
    exe = ggnet()
    cases: dict[str, Callable[[], Took]] = {}
    serial = iter(range(1_000_000))

    def fresh(label: str, program: str, use_login: bool) -> Callable[[], Took]:
        def case() -> Took:
            env = site(root, f"script-{label}-{next(serial)}", program, base_env)
            return script(program, env, use_login)

        return case

    def versions() -> Took:
        env = {**base_env, "GGNET_DATA_DIR": str(root / "versions")}
        total = Took(0, 0)
        for _ in range(SCRIPT_ROUNDS * 4):
            total += run(exe, ["--version"], env)[0]
        return total

    cases["version"] = versions
    if before:
        cases["before"] = fresh("before", before, use_login=False)
    cases["password"] = fresh("password", exe, use_login=False)
    cases["token"] = fresh("token", exe, use_login=True)
    figures = rounds(cases, repeat)
    print(f"\nan operator's script of {SCRIPT_ROUNDS * 4} commands (machine add, show, set, list --json), SQLite")
    anchor = f"{SCRIPT_ROUNDS * 4} x ggnet --version"
    if before:
        line("before: the older ggnet, GGNET_PASSWORD", figures["before"], anchor, figures["version"])
    line("this ggnet, GGNET_PASSWORD on every command", figures["password"], anchor, figures["version"])
    line("this ggnet, ggnet login once, then the token", figures["token"], anchor, figures["version"])
    if before:
        before_took = figures["before"]
        for label in ("token", "password"):
            after = figures[label]
            print(
                f"  after ({label}) / before: {after.wall / before_took.wall:.2f} wall, "
                f"{after.cpu / before_took.cpu:.2f} CPU"
            )


# --- scale ---------------------------------------------------------------------------------


def timed(args: list[str], env: dict[str, str], repeat: int, expect_rows: int | None = None) -> str:
    times = [command(ggnet(), args, env, expect_rows)().wall for _ in range(repeat)]
    if repeat == 1:
        return f"{times[0]:6.2f} s"
    return f"{statistics.median(times):6.2f} s (min {min(times):.2f}, max {max(times):.2f}, n={repeat})"


def scale(kind: str, root: Path, base_env: dict[str, str], repeat: int, **extra: str) -> None:
    env = site(root, f"scale-{kind}", ggnet(), base_env, **extra)
    login(ggnet(), env)
    print(f"\nscale, {kind} (after ggnet login)")
    print(f"  machine list --json,      0 machines : {timed(['machine', 'list', '--json'], env, repeat, 0)}")
    imported = timed(["machine", "import", str(csv_file(root, 0, 1000))], env, 1)
    print(f"  machine import  1,000-row CSV         : {imported}")
    print(f"  machine list --json,  1,000 machines : {timed(['machine', 'list', '--json'], env, repeat, 1000)}")
    imported = timed(["machine", "import", str(csv_file(root, 1000, 9000))], env, 1)
    print(f"  machine import  9,000-row CSV         : {imported}")
    print(f"  machine list --json, 10,000 machines : {timed(['machine', 'list', '--json'], env, repeat, 10000)}")
    print(f"  machine list (table), 10,000 machines: {timed(['machine', 'list'], env, repeat)}")


async def _pg(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", metavar="GGNET", help="an older ggnet executable for the script's 'before'")
    parser.add_argument("--repeat", type=int, default=5, help="rounds of each start-up figure (default 5)")
    parser.add_argument("--script-repeat", type=int, default=1, help="rounds of the 100-command scripts")
    parser.add_argument("--pg-url", default=os.environ.get("GGNET_TEST_PG_URL"))
    parser.add_argument("--sqlite-only", action="store_true")
    parser.add_argument("--no-scale", action="store_true")
    options = parser.parse_args()

    # an installed ggnet runs from compiled bytecode: without it every command would compile
    # ggnet's modules again (a tenth of a second), so the benchmark lets Python write it
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("GGNET_") and k != "PYTHONDONTWRITEBYTECODE"}
    print(f"ggnet CLI benchmark: {ggnet()}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if options.before:
        print(f"before: {options.before}")
    with tempfile.TemporaryDirectory(prefix="ggnet-bench-") as tmp:
        root = Path(tmp)
        for number, program in enumerate(filter(None, [ggnet(), options.before])):
            warm_up(root, f"warm-up-{number}", program, base_env)
        startup(root, base_env, options.repeat)
        scripts(root, base_env, options.before, options.script_repeat)
        if options.no_scale:
            return
        scale("SQLite", root, base_env, 3)
        if options.sqlite_only:
            return
        if not options.pg_url:
            print("\nPostgreSQL: skipped (give --pg-url or set GGNET_TEST_PG_URL)")
            return
        name = f"ggnet_bench_{uuid.uuid4().hex[:8]}"
        asyncio.run(_pg(options.pg_url, f'CREATE DATABASE "{name}"'))
        try:
            url = f"{options.pg_url.rpartition('/')[0]}/{name}"
            scale("PostgreSQL", root, base_env, 3, GGNET_DATABASE_URL=url)
        finally:
            asyncio.run(_pg(options.pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
