"""Partial files (core.storage.temps): a dead creator's are swept, a live creator's never are; and
an import whose process is killed leaves no qemu-img running and nothing the next sweep does not remove.
Real processes, real SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.storage import temps

ROOT = Path(__file__).resolve().parent.parent


def python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def sweep_in_another_process(directory: Path) -> list[str]:
    code = "import sys; from core.storage import temps; print(*temps.remove_orphans(sys.argv[1]), sep='\\n')"
    done = python(code, str(directory))
    out, err = done.communicate(timeout=60)
    assert done.returncode == 0, err
    return [line for line in out.splitlines() if line]


def test_a_partial_is_private_locked_and_removed_unless_committed(tmp_path: Path) -> None:
    dest = tmp_path / "image.raw"
    with temps.partial(dest) as part:
        assert temps.is_temporary(part.path.name) and part.path.name.startswith(".image.raw.")
        assert stat.S_IMODE(part.path.stat().st_mode) == 0o600
        os.write(part.fd, b"data")
        assert sweep_in_another_process(tmp_path) == []  # alive: left alone
        assert part.path.exists()
    assert list(tmp_path.iterdir()) == []  # not committed: removed
    with pytest.raises(RuntimeError), temps.partial(dest) as part:
        raise RuntimeError("failed half way")
    assert list(tmp_path.iterdir()) == []
    with temps.partial(dest) as part:
        os.write(part.fd, b"complete")
        part.commit(dest)
    assert [p.name for p in tmp_path.iterdir()] == ["image.raw"]
    assert dest.read_bytes() == b"complete"


def test_the_temporaries_of_a_killed_process_are_swept_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "image.raw").write_bytes(b"served")
    (tmp_path / ".hidden.part").write_bytes(b"not our pattern")
    os.mkfifo(tmp_path / ".fifo.0123456789ab.part")  # named like one, not a file: skipped, never blocks
    (tmp_path / ".link.0123456789ab.part").symlink_to(tmp_path / "image.raw")
    creator = python(
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from core.storage import temps\n"
        "with temps.partial(Path(sys.argv[1]) / 'new.raw') as part:\n"
        "    os.write(part.fd, b'half')\n"
        "    print(part.path, flush=True)\n"
        "    time.sleep(600)\n",
        str(tmp_path),
    )
    assert creator.stdout is not None
    partial = Path(creator.stdout.readline().strip())
    assert partial.exists()
    assert sweep_in_another_process(tmp_path) == []
    creator.send_signal(signal.SIGKILL)
    creator.communicate(timeout=60)
    assert partial.exists()  # SIGKILL: no clean-up ran
    assert temps.remove_orphans(tmp_path) == [partial]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".fifo.0123456789ab.part", ".hidden.part", ".link.0123456789ab.part", "image.raw"]
    assert (tmp_path / "image.raw").read_bytes() == b"served"


def test_a_creator_racing_a_sweeper_keeps_its_file(tmp_path: Path) -> None:
    """A sweep that lands between a creator's create and its lock must not take the file from it."""
    sweeper = python(
        "import sys, time\n"
        "from core.storage import temps\n"
        "end = time.monotonic() + 600\n"
        "print('ready', flush=True)\n"
        "while time.monotonic() < end:\n"
        "    temps.remove_orphans(sys.argv[1])\n",
        str(tmp_path),
    )
    try:
        assert sweeper.stdout is not None and sweeper.stdout.readline().strip() == "ready"
        for n in range(300):
            with temps.partial(tmp_path / f"disk{n}.raw") as part:
                os.write(part.fd, b"x")
                assert part.path.exists(), n
                held = os.fstat(part.fd)
                named = part.path.stat()
                assert (held.st_ino, held.st_nlink) == (named.st_ino, 1), n
    finally:
        sweeper.kill()
        sweeper.communicate(timeout=60)
    assert list(tmp_path.iterdir()) == []


def test_sweeping_a_missing_directory_finds_nothing(tmp_path: Path) -> None:
    assert temps.remove_orphans(tmp_path / "nope") == []


# --- an import killed half way ---------------------------------------------------------

IMPORTER = """
import asyncio, os, signal, sys
from pathlib import Path
from core.auth import SYSTEM
from core.config import Settings
from core.context import Core
from core.services import images

def children():
    found = []
    for task in Path("/proc/self/task").iterdir():
        found += (task / "children").read_text().split()
    return found

def kill_myself(percent):
    # qemu-img is running (it just reported progress). Freeze it, so that it cannot finish on its
    # own: only the kernel's parent-death signal can end it now. Then die without any clean-up.
    running = children()
    for pid in running:
        os.kill(int(pid), signal.SIGSTOP)
    print(" ".join(running), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

async def main():
    data = Path(sys.argv[1])
    core = Core.open(Settings(data_dir=data, log_file=data / "ggnet.log"))
    await core.db.upgrade()
    await images.import_image(core, SYSTEM, sys.argv[2], name="big", progress=kill_myself)

asyncio.run(main())
"""


def process_state(pid: int) -> str | None:
    """The state letter of a process, None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def process_dead(pid: int) -> bool:
    """Gone, or a zombie whose threads have all exited. A zombie leader alone is not enough: qemu-img's
    other threads share its descriptors (and so its lock) until the last of them exits."""
    state = process_state(pid)
    if state is None:
        return True
    try:
        return state == "Z" and len(os.listdir(f"/proc/{pid}/task")) <= 1
    except FileNotFoundError:
        return True


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) is not installed")
def test_an_import_killed_mid_conversion_leaves_no_qemu_img_and_only_a_sweepable_partial(tmp_path: Path) -> None:
    source = tmp_path / "big.raw"
    with open(source, "wb") as handle:
        block = os.urandom(1 << 20)
        for _ in range(256):
            handle.write(block)
    data = tmp_path / "data"
    importer = python(IMPORTER, str(data), str(source))
    out, err = importer.communicate(timeout=300)
    assert importer.returncode == -signal.SIGKILL, err
    qemu_pids = [int(pid) for pid in out.split()]
    assert qemu_pids, "qemu-img was not running when the import was killed"
    deadline = time.monotonic() + 20  # a bound against hanging; the kernel kills it at once
    while not all(process_dead(pid) for pid in qemu_pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [pid for pid in qemu_pids if not process_dead(pid)]
    for pid in survivors:  # leave nothing behind, even when failing
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "qemu-img outlived ggnet"
    images = data / "images"
    partials = [p for p in images.iterdir() if temps.is_temporary(p.name)]
    assert len(partials) == 1  # SIGKILL: the import could not clean up
    # qemu-img held the lock too (it inherited the descriptor); dead, it no longer does
    assert temps.remove_orphans(images) == partials
    assert list(images.iterdir()) == []
