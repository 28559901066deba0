"""An OS-phase site served by a real ``ggnet serve``: registered machines boot the OS-phase disk
(disk.py) through the engine, the way a LAN centre's PCs do. Shared by the OS-phase tests (tgtd
here, LIO in its VM) and benchmarks/bench_osphase.py.

Everything goes through ggnet's own front doors: the CLI records intent (images, machines, boot
modes, game disks, Secure Boot loaders), ``ggnet serve`` answers the clients' boot requests and
writes ``boot.ipxe`` into the TFTP root the clients' firmware loads. What a test reads back comes
from the CLI too (``machine show``: the current boot's CHAP secret and the boot history; ``target
list``: the LUNs' writeback files), and from the writebacks themselves (disk.boots_on_disk).

    site = OsSite(tmp_path, tgt_env(tmp_path, tgtd_daemon))
    site.setup(osphase_disk, games={"games": game_disk})   # init, images (before ggnet serve starts)
    site.serve.start()
    site.add(Pc("pc01", "uefi", game="games"), Pc("pc02", keep=True))
    results = await boot_clients([site.client("pc01", "first"), site.client("pc02", "first")])
    site.luns()["pc01"]     # {1: system writeback, 2: game writeback} while the boot is current
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cli import ggnet_executable
from tests.e2e.osphase.client import os_client
from tests.e2e.osphase.disk import SECURE_BOOT_LOADER, OsPhaseDisk
from tests.e2e.qemu_client import ClientSpec, Firmware, Hook
from tests.e2e.serve import GgnetServe
from tests.e2e.tgtd import TgtDaemon, free_tcp_port

PASSWORD = "osphase-admin-pass"
SYSTEM_IMAGE = "osdisk"
FIRMWARES: dict[str, Firmware] = {"bios": "bios", "uefi": "uefi", "uefi-secure": "uefi-secure"}  # boot mode: client


def base_env(root: Path, **settings: str) -> dict[str, str]:
    """A ggnet environment of its own under ``root``: data directory, TFTP root, HTTP port, an admin."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("GGNET_")},
        "GGNET_DATA_DIR": str(root / "data"),
        "GGNET_TFTP_ROOT": str(root / "tftp"),
        "GGNET_HTTP_ADDRESS": f"127.0.0.1:{free_tcp_port()}",
        "GGNET_BOOT_ADDRESS": "10.0.2.2",  # the host as QEMU's user network shows it to the clients
        "GGNET_RESERVED_SPACE": "1M",
        "GGNET_WOL_ADDRESS": "127.0.0.1:9",
        "GGNET_USER": "admin",
        "GGNET_PASSWORD": PASSWORD,
        "GGNET_NEW_PASSWORD": PASSWORD,
        **settings,
    }


def tgt_env(root: Path, daemon: TgtDaemon) -> dict[str, str]:
    return base_env(
        root,
        GGNET_TARGET_BACKEND="tgt",
        GGNET_TGT_CONTROL_PORT=str(daemon.control_port),
        GGNET_PORTAL=f"127.0.0.1:{daemon.portal_port}",
    )


def mac_of(name: str) -> str:
    """A stable locally administered MAC per machine name (52:54:00 is QEMU's prefix)."""
    digest = sum((i + 1) * ord(c) for i, c in enumerate(name))
    return f"52:54:00:0f:{digest // 256 % 256:02x}:{digest % 256:02x}"


@dataclass(frozen=True)
class Pc:
    """A machine to register: its boot mode (bios, uefi, uefi-secure), policy and game image."""

    name: str
    mode: str = "bios"
    keep: bool = False
    game: str | None = None


@dataclass
class OsSite:
    root: Path
    env: dict[str, str]
    serve: Any = None  # GgnetServe, or anything with start/stop/boot_script (the LIO VM's)
    first_lun: int = 1  # tgtd: LUN 0 is its controller; LIO: 0
    macs: dict[str, str] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)  # machine: boot mode

    def __post_init__(self) -> None:
        if self.serve is None:
            self.serve = GgnetServe(self.env, self.root / "serve.log")

    @property
    def tftp(self) -> Path:
        return Path(self.env["GGNET_TFTP_ROOT"])

    @property
    def portal_port(self) -> int:
        return int(self.env["GGNET_PORTAL"].rpartition(":")[2])

    # --- the CLI ---------------------------------------------------------------------------

    def ggnet(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([ggnet_executable(), *args], env=self.env, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"ggnet {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    async def aggnet(self, *args: str) -> tuple[int, str, str]:
        """The CLI from inside a running event loop (a hook): the other clients keep being watched.
        (returncode, stdout, stderr)"""
        proc = await asyncio.create_subprocess_exec(
            ggnet_executable(), *args, env=self.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 300)
        return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")

    def json(self, *args: str) -> Any:
        return json.loads(self.ggnet(*args, "--json").stdout)

    # --- intent ----------------------------------------------------------------------------

    def setup(self, disk: OsPhaseDisk, games: dict[str, Path] | None = None) -> None:
        """The database, the OS-phase disk as the system image (Debian's signed shim as its Secure
        Boot loader) and the game images: what an operator does once, before ``ggnet serve`` runs."""
        # `ggnet init` itself, with the admin's password hashed at the tests' low bcrypt cost: every
        # later command logs in with it, and at ggnet's own cost each login takes ~0.4 s of CPU
        init = "import sys; from core import auth; auth.set_bcrypt_rounds(4); from ggnet_tui.cli import main; main()"
        done = subprocess.run([sys.executable, "-c", init, "init", "--admin", "admin"], env=self.env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        self.ggnet("image", "import", str(disk.path), "--name", SYSTEM_IMAGE)
        self.ggnet("image", "set", SYSTEM_IMAGE, "--efi-loader", SECURE_BOOT_LOADER)
        for name, path in (games or {}).items():
            self.ggnet("image", "import", str(path), "--name", name, "--kind", "game")

    def add(self, *pcs: Pc) -> None:
        """Register machines (one CSV import: name, MAC, boot mode, game image), each booting the
        system image (fresh unless ``keep``)."""
        rows = ["name,mac,boot_mode,game_image"]
        for pc in pcs:
            self.macs[pc.name], self.modes[pc.name] = mac_of(pc.name), pc.mode
            rows.append(f"{pc.name},{self.macs[pc.name]},{pc.mode},{pc.game or ''}")
        csv = self.root / f"machines-{len(self.macs)}.csv"
        csv.write_text("\n".join(rows) + "\n")
        self.ggnet("machine", "import", str(csv))
        for pc in pcs:
            self.ggnet("machine", "set", pc.name, "--image", SYSTEM_IMAGE, *(["--keep-writeback"] if pc.keep else []))

    # --- what ggnet recorded ----------------------------------------------------------------

    def machine(self, name: str) -> dict[str, Any]:
        """``machine show``: initiator IQN, CHAP user, the current boot's secret, the latest boots."""
        return dict(self.json("machine", "show", name, "--boots", "10"))

    def luns(self) -> dict[str, dict[int, Path]]:
        """The writeback files each machine's target serves now, by machine and LUN."""
        return {
            target["machine"]: {int(lun): Path(path) for lun, path in target["luns"].items() if path}
            for target in self.json("target", "list")
            if target["machine"]
        }

    # --- clients ---------------------------------------------------------------------------

    def client(self, name: str, run: str, *, hooks: list[Hook] | None = None, **kw: Any) -> ClientSpec:
        """The machine's PC, with the firmware its boot mode needs, booting through ``ggnet serve``."""
        return os_client(self.root / f"{name}-{run}", self.macs[name], self.tftp, FIRMWARES[self.modes[name]],
                         hooks=hooks or (), **kw)  # fmt: skip
