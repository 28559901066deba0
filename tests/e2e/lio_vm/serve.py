"""`ggnet serve` inside the LIO VM: the boot server on kernel LIO, for end-to-end tests on hosts whose
own kernel has no LIO.

The VM (see ``__init__.py``) runs the host's checkout and venv over 9p. ggnet's data directory and
SQLite database live on the VM's tmpfs (``/run/ggnet``: LIO serves writebacks from there, and SQLite
keeps its locks in the VM); its TFTP root and log file live in the VM's work directory, which is
the same path on the host — so a QEMU client on the host gets ``boot.ipxe`` from QEMU's TFTP, and a
failing test shows the log. Its HTTP port and its iSCSI portal listen in the VM on the same port
numbers that are forwarded from the host's 127.0.0.1, so a client on QEMU's user network reaches
both at 10.0.2.2 (``GGNET_BOOT_ADDRESS``) and the ports ggnet writes into boot scripts are right.

Commands (``init``, ``machine add``, ``image import`` of any host file: the host root is readable in
the VM) run in the VM through the agent, forked from its already imported interpreter; passwords
are hashed at bcrypt cost 4 (as in the unit tests), which TCG otherwise spends seconds on.

Usage (one VM per run, reset for each module; the fixture ``lio_ggnet`` does the first steps)::

    site = LioGgnet.launch(tmp_path_factory.mktemp("lio"))   # VM up, ggnet imported in it
    site.ggnet("init", "--admin", "admin")                  # as admin (GGNET_USER/GGNET_PASSWORD set)
    site.ggnet("image", "import", str(host_file), "--name", "desk")
    site.start()                                            # ggnet serve, healthy
    ClientSpec(workdir, mac, site.tftp_root)                # a stock-iPXE client boots through it
    site.vm.call("exec", code=...)                          # behind ggnet's back (rtslib, configfs)
    site.stop(); site.close()                               # serve, then the VM
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.lio_vm import LioVm, LioVmError, free_port

PASSWORD = "lio-admin-pass"
DATA_DIR = "/run/ggnet"  # the VM's tmpfs (init.sh mounts it in the chroot)
COMMAND_TIMEOUT = 300.0  # a command under TCG: import of an image included


@dataclass(frozen=True)
class Ran:
    """A ggnet command's outcome, like subprocess.CompletedProcess."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class LioGgnet:
    def __init__(self, vm: LioVm, http_port: int, portal_port: int, **env: str) -> None:
        self.vm = vm
        self.http_port = http_port
        self.portal_port = portal_port
        self.tftp_root = vm.workdir / "tftp"
        self.log_path = vm.workdir / "ggnet-serve.log"
        self.pid: int | None = None
        self.env: dict[str, str] = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": f"{DATA_DIR}-home",
            "XDG_RUNTIME_DIR": f"{DATA_DIR}-home/run",
            "GGNET_DATA_DIR": DATA_DIR,
            "GGNET_LOG_FILE": str(vm.workdir / "ggnet.log"),
            "GGNET_TFTP_ROOT": str(self.tftp_root),
            "GGNET_SERVER_NAME": "lio-vm",  # the VM has no host name
            "GGNET_TARGET_BACKEND": "lio",
            "GGNET_PORTAL": f"0.0.0.0:{portal_port}",
            "GGNET_HTTP_ADDRESS": f"0.0.0.0:{http_port}",
            "GGNET_BOOT_ADDRESS": "10.0.2.2",  # the host as QEMU's user network shows it to clients
            "GGNET_WRITEBACK_DRIVER": "copy",  # tmpfs cannot reflink
            "GGNET_RESERVED_SPACE": "1M",
            "GGNET_WOL_ADDRESS": "127.0.0.1:9",
            "GGNET_USER": "admin",
            "GGNET_PASSWORD": PASSWORD,
            "GGNET_NEW_PASSWORD": PASSWORD,
            **env,
        }

    @classmethod
    def launch(cls, workdir: Path, memory_mib: int = 512, **env: str) -> LioGgnet:
        """Start a LIO VM with ggnet's ports forwarded and ggnet imported in it (about a minute under TCG)."""
        http_port, portal_port = free_port(), free_port()
        vm = LioVm(workdir, memory_mib=memory_mib, forward=(http_port, portal_port))
        vm.start()
        try:
            missing = vm.call("ggnet_preload", timeout=600)
            if missing:
                raise LioVmError(f"ggnet cannot be imported in the LIO VM: {', '.join(missing)}")
        except BaseException:
            vm.stop()
            raise
        return cls(vm, http_port, portal_port, **env)

    # --- commands ------------------------------------------------------------------------

    def ggnet(self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT, **env: str) -> Ran:
        """Run ``ggnet ARGS`` in the VM (as admin unless ``GGNET_USER=""``); AssertionError if it fails
        and ``check``."""
        answer = self.vm.call("ggnet", timeout=timeout + 30, args=list(args), env={**self.env, **env},
                              seconds=timeout, fast_hash=True)  # fmt: skip
        ran = Ran(tuple(args), int(answer["rc"]), answer["stdout"], answer["stderr"])
        if check and ran.returncode != 0:
            raise AssertionError(f"ggnet {' '.join(args)} exited {ran.returncode} in the LIO VM: {ran.stderr}")
        return ran

    def json(self, *args: str) -> object:
        return json.loads(self.ggnet(*args, "--json").stdout)

    # --- ggnet serve ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, wait: bool = True, timeout: float = 180.0) -> LioGgnet:
        with open(self.log_path, "a") as log:
            log.write(f"--- ggnet serve started {time.strftime('%H:%M:%S')}\n")
        self.pid = int(self.vm.call("ggnet", args=["serve"], env=self.env, background=True, log=str(self.log_path)))
        if wait:
            self.wait_healthy(timeout)
        return self

    def running(self) -> bool:
        return self.pid is not None and self.vm.call("reap", pid=self.pid) is None

    def health(self) -> tuple[int, dict[str, object]]:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def wait_healthy(self, timeout: float = 180.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not self.running():
                raise LioVmError(f"ggnet serve exited in the LIO VM: {self.log_tail()}")
            try:
                status, body = self.health()
                if status == 200:
                    return body
                last = body
            except (OSError, ValueError) as exc:
                last = exc
            time.sleep(0.5)
        raise LioVmError(f"ggnet serve in the LIO VM not healthy within {timeout:.0f} s: {last}\n{self.log_tail()}")

    def boot_script(self, mac: str, timeout: float = 120.0) -> str:
        with urllib.request.urlopen(f"{self.url}/boot/{mac.replace(':', '-')}", timeout=timeout) as answer:
            return answer.read().decode()

    async def logged_in(self, machine: str, timeout: float = 60.0) -> bool:
        """Wait (while the client runs) until the engine recorded its latest boot's iSCSI login (read in
        the VM's database by the agent). A boot-sector client is done in moments; a real PC stays
        logged in for hours."""
        code = (
            "import sqlite3\n"
            f"with sqlite3.connect('file:{DATA_DIR}/ggnet.db?mode=ro', uri=True) as conn:\n"
            "    row = conn.execute('SELECT login_at FROM boots WHERE machine_name = ? ORDER BY id DESC LIMIT 1',"
            f" ({machine!r},)).fetchone()\n"
            "result = bool(row and row[0])\n"
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if await asyncio.to_thread(self.vm.call, "exec", code=code):
                return True
            await asyncio.sleep(0.3)
        return False

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        """Stop ggnet serve (SIGKILL after ``timeout``); its exit status."""
        if self.pid is None:
            return None
        pid, self.pid = self.pid, None
        try:
            self.vm.call("signal", pid=pid, sig=int(sig))
        except LioVmError:  # already gone
            pass
        status = self.vm.call("reap", timeout=timeout + 30, pid=pid, wait=timeout)
        if status is None:
            self.vm.call("signal", pid=pid, sig=int(signal.SIGKILL))
            status = self.vm.call("reap", timeout=40, pid=pid, wait=10)
        return status  # type: ignore[no-any-return]

    def reset(self) -> None:
        """As if just launched: serve stopped; ggnet's data, LIO's configuration and the boot files gone."""
        self.stop()
        code = (
            "import shutil\n"
            f"for path in ({DATA_DIR!r}, {DATA_DIR + '-home'!r}):\n"
            "    shutil.rmtree(path, ignore_errors=True)\n"
            "rtslib_fb.RTSRoot().clear_existing(confirm=True)\n"
        )
        self.vm.call("exec", code=code)
        shutil.rmtree(self.tftp_root, ignore_errors=True)

    def close(self) -> None:
        try:
            if self.pid is not None and self.vm._sock is not None:
                self.stop()
        finally:
            self.vm.stop()


@pytest.fixture(scope="module")
def lio_ggnet(_lio_ggnet_vm: LioGgnet) -> Iterator[LioGgnet]:
    """A LIO VM ready to run ggnet (nothing initialised yet), as fresh for each test module: the VM
    is shared by the run (booting it and importing ggnet in it takes 20-25 s under TCG)."""
    _lio_ggnet_vm.reset()
    try:
        yield _lio_ggnet_vm
    finally:
        _lio_ggnet_vm.stop()


@pytest.fixture(scope="session")
def _lio_ggnet_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LioGgnet]:
    from tests.e2e import qemu_client
    from tests.e2e.lio_vm import ensure_initramfs, ensure_kernel, missing_prerequisites

    reason = missing_prerequisites() or qemu_client.available()
    if reason:
        pytest.skip(reason)
    try:
        ensure_initramfs(ensure_kernel())  # downloads Debian's kernel on the first run, then cached
    except (LioVmError, OSError) as exc:
        pytest.skip(f"cannot prepare the LIO VM's kernel: {exc}")
    site = LioGgnet.launch(tmp_path_factory.mktemp("lio-ggnet"))
    try:
        yield site
    finally:
        site.close()
