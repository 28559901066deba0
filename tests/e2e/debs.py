"""Debian packages for test guests: downloaded once with ``apt-get download``, unpacked with ``dpkg-deb -x``.

Nothing is installed on the host. The cache survives between test runs (CI, on a fresh machine,
downloads once per run):

    ${XDG_CACHE_HOME:-~/.cache}/ggnet-tests/debs/<name>_<version>_<arch>.deb
    ${XDG_CACHE_HOME:-~/.cache}/ggnet-tests/unpacked/<name>_<version>_<arch>/   (the package's files)

The version is the one apt would install now (``apt-cache show``), so a Debian update brings a new
download and old ones stay until the cache is cleared. A file lock serialises downloads and unpacks
between processes (parallel test workers share the cache).
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# read at import (collection) time: the autouse fixture points XDG_CACHE_HOME into each test's tmp dir
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ggnet-tests"


class DebError(RuntimeError):
    pass


def missing_tools() -> list[str]:
    """Debian packages whose programs this module needs and that are not installed."""
    tools = {"apt-get": "apt", "apt-cache": "apt", "dpkg-deb": "dpkg"}
    return sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})


def run(args: list[str], cwd: Path | None = None, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    """Run a program (argument list, no shell); its stdout, or DebError with its stderr."""
    done = subprocess.run(
        args,
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )
    if done.returncode != 0:
        raise DebError(f"{' '.join(args)} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


@contextmanager
def cache_lock() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@functools.cache  # apt-cache takes a moment; the answer holds for one test run
def candidate(package: str) -> tuple[str, str]:
    """(version, architecture) apt would install for ``package``."""
    try:
        out = run(["apt-cache", "show", "--no-all-versions", package], timeout=60)
    except DebError:
        out = ""
    if not out and os.geteuid() == 0:  # e.g. a container image shipped without package lists
        run(["apt-get", "update", "-qq"])
        out = run(["apt-cache", "show", "--no-all-versions", package], timeout=60)
    fields = dict(re.findall(r"^(Version|Architecture): (\S+)$", out, re.MULTILINE))
    if "Version" not in fields:
        raise DebError(f"apt knows no package {package}: run apt-get update")
    return fields["Version"], fields.get("Architecture", "amd64")


def deb_name(package: str) -> str:
    """The file name ``apt-get download`` gives the candidate (an epoch's colon is written %3a)."""
    version, arch = candidate(package)
    return f"{package}_{version.replace(':', '%3a')}_{arch}"


def download(package: str) -> Path:
    """The candidate's .deb in the cache, downloaded if it is not there yet."""
    name = deb_name(package)
    debs = CACHE / "debs"
    path = debs / f"{name}.deb"
    if path.is_file():
        return path
    with cache_lock():
        if path.is_file():  # another process fetched it while we waited
            return path
        debs.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=debs, prefix=".download-") as tmp:
            run(["apt-get", "download", "-qq", package], cwd=Path(tmp))
            fetched = Path(tmp) / path.name
            if not fetched.is_file():
                raise DebError(f"apt-get download {package} did not write {path.name}")
            fetched.rename(path)
    return path


def unpack(package: str) -> Path:
    """The directory holding the candidate's files (``dpkg-deb -x``), unpacked once."""
    name = deb_name(package)
    home = CACHE / "unpacked" / name
    if (home / ".unpacked").is_file():
        return home
    deb = download(package)
    with cache_lock():
        if (home / ".unpacked").is_file():
            return home
        home.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=home.parent, prefix=".unpack-") as tmp:
            root = Path(tmp) / "root"
            run(["dpkg-deb", "-x", str(deb), str(root)])
            (root / ".unpacked").write_text(f"{deb.name}\n")
            shutil.rmtree(home, ignore_errors=True)
            root.rename(home)
    return home


@functools.cache
def kernel_package() -> str:
    """The kernel package Debian's ``linux-image-amd64`` currently depends on, e.g. linux-image-6.1.0-57-amd64."""
    out = run(["apt-cache", "depends", "linux-image-amd64"], timeout=60)
    found = re.search(r"Depends:\s*(linux-image-\d\S*-amd64)\b", out)
    if found is None and os.geteuid() == 0:
        run(["apt-get", "update", "-qq"])
        found = re.search(
            r"Depends:\s*(linux-image-\d\S*-amd64)\b", run(["apt-cache", "depends", "linux-image-amd64"], timeout=60)
        )
    if found is None:
        raise DebError("cannot tell which kernel package linux-image-amd64 depends on: run apt-get update")
    return found.group(1)
