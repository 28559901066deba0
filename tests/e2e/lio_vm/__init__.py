"""Kernel LIO in a small QEMU VM, for end-to-end tests on machines whose own kernel has no LIO.

The VM runs Debian's kernel (the package ``linux-image-amd64`` depends on, fetched with
``apt-get download`` and cached under ``${XDG_CACHE_HOME:-~/.cache}/ggnet-tests/lio-vm/``) with a
busybox initramfs holding only the modules LIO, virtio networking, virtio-serial and 9p need. Its
``/init`` (``init.sh``) mounts the host's root read-only over 9p and the test's work directory
read-write at the same path, then runs ``agent.py`` — the project's own ``LioBackend`` — in a chroot
with the same interpreter as the tests (``sys.executable``). The host drives the agent over a
virtio-serial port (a Unix socket here); the VM's port 3260 is forwarded to 127.0.0.1:<port>, so a
diskless client on QEMU's user network reaches the target at 10.0.2.2:<port>.

Writebacks live in the work directory, so the kernel's FileIO backstore writes straight into the
host's file (9p without a cache): what a client writes can be checked in the host file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the VM's PID joins the clients' registry: whatever is left when the tests exit is killed
from tests.e2e.qemu_client import _live

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
# read at import (collection) time: the autouse fixture points XDG_CACHE_HOME into each test's tmp dir
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ggnet-tests" / "lio-vm"
QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")
# what the VM loads (with their dependencies, in order); crc32c_generic is requested by name at login
MODULES = (
    "configfs", "target_core_mod", "target_core_file", "target_core_iblock", "iscsi_target_mod",
    "crc32c_generic", "virtio_pci", "virtio_net", "virtio_console", "9pnet_virtio", "9p",
)  # fmt: skip
READY = "LIOVM: agent ready"
FAILED = ("LIOVM: FAILED", "Kernel panic", "Traceback (most recent call last)")


class LioVmError(RuntimeError):
    pass


def missing_prerequisites() -> str | None:
    """None when the VM can run here, else what is missing (Debian package names)."""
    tools = {QEMU: "qemu-system-x86", "apt-get": "apt", "apt-cache": "apt", "dpkg-deb": "dpkg",
             "modprobe": "kmod", "cpio": "cpio"}  # fmt: skip
    missing = sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})
    if not BUSYBOX.is_file() or b"ld-linux" in BUSYBOX.read_bytes()[:8192]:
        missing.append("busybox-static")  # a dynamic busybox cannot run in the initramfs
    return f"missing for the LIO VM: {', '.join(missing)}" if missing else None


def _run(args: list[str], cwd: Path | None = None, timeout: float = 300) -> str:
    done = subprocess.run(args, check=False, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise LioVmError(f"{' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


@functools.cache  # apt-cache takes a second or two; once per test run is enough
def kernel_package() -> str:
    """The kernel package Debian's ``linux-image-amd64`` currently depends on."""

    def lookup() -> str | None:
        done = subprocess.run(
            ["apt-cache", "depends", "linux-image-amd64"], check=False, capture_output=True, text=True, timeout=60
        )
        found = re.search(r"Depends:\s*(linux-image-\d\S*-amd64)\b", done.stdout)
        return found.group(1) if found else None

    package = lookup()
    if package is None and os.geteuid() == 0:  # e.g. a container image shipped without package lists
        _run(["apt-get", "update", "-qq"])
        package = lookup()
    if package is None:
        raise LioVmError("cannot tell which kernel package linux-image-amd64 depends on: run apt-get update")
    return package


@dataclass(frozen=True)
class Kernel:
    version: str  # e.g. 6.1.0-56-amd64
    vmlinuz: Path
    modules: Path  # directory of the selected .ko files
    load_order: list[str]  # file names in that directory, dependencies first


def ensure_kernel() -> Kernel:
    """The cached kernel and modules; downloads and unpacks the package on the first run."""
    package = kernel_package()
    version = package.removeprefix("linux-image-")
    home = CACHE / version
    if not (home / "load_order").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE, prefix=".unpack-") as tmp:
            work = Path(tmp)
            _run(["apt-get", "download", package], cwd=work)
            deb = next(work.glob(f"{package}_*.deb"))
            _run(["dpkg-deb", "-x", str(deb), str(work / "root")])
            _run(["depmod", "-b", str(work / "root"), version])  # the package ships no modules.dep
            staged = work / "staged"
            (staged / "modules").mkdir(parents=True)
            order: list[str] = []
            for module in MODULES:
                out = _run(["modprobe", "-d", str(work / "root"), "-S", version, "--show-depends", module])
                for line in out.splitlines():
                    parts = line.split()
                    if parts[:1] == ["insmod"] and Path(parts[1]).name not in order:
                        order.append(Path(parts[1]).name)
                        shutil.copy(parts[1], staged / "modules" / Path(parts[1]).name)
            shutil.copy(work / "root" / "boot" / f"vmlinuz-{version}", staged / "vmlinuz")
            (staged / "load_order").write_text("\n".join(order) + "\n")
            shutil.rmtree(home, ignore_errors=True)
            staged.rename(home)
    return Kernel(version, home / "vmlinuz", home / "modules", (home / "load_order").read_text().split())


def ensure_initramfs(kernel: Kernel) -> Path:
    """An uncompressed newc cpio (TCG unpacks it faster than a gzipped one), cached by content."""
    init = (HERE / "init.sh").read_bytes()
    digest = hashlib.sha256(init + BUSYBOX.read_bytes() + "\n".join(kernel.load_order).encode())
    path = CACHE / kernel.version / f"initramfs-{digest.hexdigest()[:16]}.cpio"
    if path.is_file():
        return path
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=".initramfs-") as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "etc", "modules"):
            (root / d).mkdir(parents=True)
        shutil.copy(BUSYBOX, root / "bin" / "busybox")
        (root / "bin" / "sh").symlink_to("busybox")
        (root / "init").write_bytes(init)
        (root / "init").chmod(0o755)
        for name in kernel.load_order:
            shutil.copy(kernel.modules / name, root / "modules" / name)
        (root / "modules.list").write_text("\n".join(kernel.load_order) + "\n")
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        archive = Path(tmp) / "initramfs.cpio"
        with open(archive, "wb") as out:
            done = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], check=False, cwd=root, input="\n".join(names).encode(),
                                  stdout=out, stderr=subprocess.PIPE, timeout=60)  # fmt: skip
        if done.returncode != 0:
            raise LioVmError(f"cpio failed: {done.stderr.decode().strip()}")
        archive.rename(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LioVm:
    """One LIO VM. ``start()``, then ``call("create", spec=...)`` etc., then ``stop()`` (or use ``with``)."""

    def __init__(
        self, workdir: Path, port: int | None = None, memory_mib: int = 384, forward: Sequence[int] = ()
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.port = port or free_port()
        self.memory_mib = memory_mib
        self.forward = tuple(forward)  # more host ports forwarded to the same port in the VM (ggnet serve's)
        self.console = self.workdir / "console.log"
        self.timings: dict[str, float] = {}
        self.last_elapsed = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._pending = b""

    def __enter__(self) -> LioVm:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def console_text(self) -> str:
        try:
            return self.console.read_bytes().decode("latin1")
        except FileNotFoundError:
            return ""

    def _command(self, kernel: Kernel, initramfs: Path, control: Path) -> list[str]:
        for value in (sys.executable, str(HERE / "agent.py"), str(self.workdir)):
            if any(c.isspace() or c == "," for c in value):
                raise LioVmError(f"path {value!r} cannot go on the VM's kernel command line")
        append = (f"console=ttyS0 quiet panic=-1 ggnet.python={sys.executable} "
                  f"ggnet.agent={HERE / 'agent.py'} ggnet.work={self.workdir}")  # fmt: skip
        return [
            QEMU, "-accel", "tcg", "-m", str(self.memory_mib), "-smp", "1",
            "-display", "none", "-monitor", "none", "-no-reboot",
            "-kernel", str(kernel.vmlinuz), "-initrd", str(initramfs), "-append", append,
            "-nic", f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{self.port}-:3260"
            + "".join(f",hostfwd=tcp:127.0.0.1:{p}-:{p}" for p in self.forward),
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={self.workdir},mount_tag=ggnetwork,security_model=none,multidevs=remap",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=ctl,path={control},server=on,wait=off",
            "-device", "virtserialport,chardev=ctl,name=ggnet.ctl",
            "-serial", f"file:{self.console}",
        ]  # fmt: skip

    def start(self, timeout: float = 120) -> None:
        t0 = time.monotonic()
        kernel = ensure_kernel()
        initramfs = ensure_initramfs(kernel)
        self.timings["kernel_and_initramfs"] = time.monotonic() - t0
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.console.write_bytes(b"")  # QEMU appends; a previous run's text must not count
        # a Unix socket path is limited to 108 bytes: keep it short, outside the work directory
        self._sockdir = Path(tempfile.mkdtemp(prefix="liovm-"))
        control = self._sockdir / "ctl"
        t1 = time.monotonic()
        with open(self.workdir / "qemu.stderr", "wb") as stderr:
            self._proc = subprocess.Popen(self._command(kernel, initramfs, control), stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)  # fmt: skip
        _live.add(self._proc.pid)
        try:
            deadline = time.monotonic() + timeout
            while not control.exists():
                self._check_alive()
                if time.monotonic() > deadline:
                    raise LioVmError("QEMU did not create its control socket")
                time.sleep(0.02)
            self._sock = socket.socket(socket.AF_UNIX)
            self._sock.connect(str(control))
            while READY not in self.console_text():
                self._check_alive()
                if time.monotonic() > deadline:
                    raise LioVmError(f"the LIO VM was not ready after {timeout:.0f} s:\n{self._tail()}")
                time.sleep(0.05)
            self.timings["vm_ready"] = time.monotonic() - t1
        except BaseException:
            self.stop()
            raise

    def _tail(self, lines: int = 40) -> str:
        return "\n".join(self.console_text().splitlines()[-lines:])

    def _check_alive(self) -> None:
        text = self.console_text()
        hit = next((f for f in FAILED if f in text), None)
        if hit is not None:
            raise LioVmError(f"the LIO VM failed ({hit}):\n{self._tail()}")
        if self._proc is not None and self._proc.poll() is not None:
            err = (self.workdir / "qemu.stderr").read_text(errors="replace").strip()
            raise LioVmError(f"QEMU exited rc={self._proc.returncode}: {err}\n{self._tail()}")

    def call(self, op: str, timeout: float = 60, **args: Any) -> Any:
        """Run one agent operation in the VM; its error (as ``LioVmError``) if it failed."""
        if self._sock is None:
            raise LioVmError("the LIO VM is not running")
        self._sock.sendall(json.dumps({"op": op, **args}, default=str).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            self._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LioVmError(f"no answer to {op!r} from the LIO VM within {timeout:.0f} s:\n{self._tail()}")
            self._sock.settimeout(min(remaining, 0.5))
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise LioVmError(f"the LIO VM closed its control channel:\n{self._tail()}")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        reply = json.loads(line)
        if not reply["ok"]:
            raise LioVmError(reply["error"])
        self.last_elapsed = float(reply.get("elapsed", 0.0))  # what the operation took inside the VM
        return reply["result"]

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            _live.discard(self._proc.pid)
            self._proc = None
        if getattr(self, "_sockdir", None) is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = None
