"""Targets made by hand the way ggnet makes them, for the OS-phase tests until the boot engine serves them.

TgtBackend (ggnet's own) creates the machine's target: its writeback as LUN 1, its initiator IQN in
the ACL, its CHAP account. The game disk's writeback is added as LUN 2 with tgtadm, and the per-MAC
iPXE script is written by hand (``sanboot --filename <loader>`` under Secure Boot). Once ``ggnet
serve`` answers ``/boot/<mac>``, a test registers machines instead and points ``boot.ipxe`` at it;
this module then goes away.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from core.iscsi.base import LunSpec, TargetSpec
from core.iscsi.tgt import TgtBackend, parse_show_target
from tests.e2e.osphase.client import CHAIN_FAILED, SANBOOT_FAILED
from tests.e2e.osphase.disk import OsPhaseDisk, build_game_disk, writeback
from tests.e2e.tgtd import TgtDaemon

BOOT_IPXE = f"#!ipxe\nchain ${{mac:hexhyp}}.ipxe || goto unknown\nexit\n:unknown\necho {CHAIN_FAILED}\n"
GAME_LUN = 2


@dataclass(frozen=True)
class Machine:
    name: str
    mac: str
    spec: TargetSpec  # its target; spec.backing_file is the system disk's writeback (LUN 1)
    game: Path | None = None  # the game disk's writeback (LUN 2), if it has one
    game_content: str | None = None  # the word its /ggnet-game.txt holds


async def make_machine(
    daemon: TgtDaemon, disk: OsPhaseDisk, workdir: Path, name: str, mac: str, game_content: str | None = None
) -> Machine:
    """A machine's target, made by hand as ggnet makes it (the engine will do this)."""
    spec = TargetSpec(
        iqn=f"iqn.2024-01.lan.ggnet:{name}",
        luns=(LunSpec(1, writeback(disk.path, workdir / f"{name}.img")),),
        initiator_iqn=f"iqn.2024-01.lan.ggnet.client:{name}",
        chap_username=f"ggnet-{name}",
        chap_secret=f"{name}chapsecret01",  # letters and digits, what ggnet's scripts allow
        portal_host=daemon.portal_host,
        portal_port=daemon.portal_port,
    )
    await TgtBackend(daemon.control_port).apply(spec)
    game = None
    if game_content is not None:
        game = build_game_disk(workdir / f"{name}-game.img", game_content)
        add_game_lun(daemon, spec.iqn, game)
    return Machine(name, mac, spec, game, game_content)


def add_game_lun(daemon: TgtDaemon, iqn: str, game: Path) -> None:
    shown = daemon.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "target").stdout
    tid = str(next(t.tid for t in parse_show_target(shown) if t.iqn == iqn))
    lun = ("--tid", tid, "--lun", str(GAME_LUN))
    daemon.tgtadm("--lld", "iscsi", "--op", "delete", "--mode", "logicalunit", *lun, check=False)
    daemon.tgtadm("--lld", "iscsi", "--op", "new", "--mode", "logicalunit", *lun,
                  "--backing-store", str(game), "--bstype", "rdwr")  # fmt: skip


async def renew_disks(daemon: TgtDaemon, disk: OsPhaseDisk, machine: Machine, boot: int) -> Machine:
    """New writebacks from the images, served in place of the old ones (what a `fresh` machine gets at
    each boot). tgtd keeps its backing files open: a new file must be put behind the LUN, not
    renamed over the old one."""
    renewed = writeback(disk.path, machine.spec.luns[0].backing_file.with_suffix(f".{boot}.img"))
    spec = dataclasses.replace(machine.spec, luns=(LunSpec(1, renewed),))
    await TgtBackend(daemon.control_port).apply(spec)
    game = None
    if machine.game is not None and machine.game_content is not None:
        game = build_game_disk(machine.game.with_suffix(f".{boot}.img"), machine.game_content)
        add_game_lun(daemon, spec.iqn, game)
    return dataclasses.replace(machine, spec=spec, game=game)


def write_script(tftp: Path, daemon: TgtDaemon, machine: Machine, loader: str | None = None) -> None:
    """The machine's per-MAC script; ``loader``: the EFI file sanboot starts instead of the default one."""
    spec = machine.spec
    filename = f"--filename {loader} " if loader else ""
    (tftp / f"{machine.mac.replace(':', '-')}.ipxe").write_text(
        f"#!ipxe\nset initiator-iqn {spec.initiator_iqn}\nset username {spec.chap_username}\n"
        f"set password {spec.chap_secret}\n"
        f"sanboot {filename}iscsi:10.0.2.2::{daemon.portal_port}:1:{spec.iqn} || goto failed\n"
        f"exit\n:failed\necho {SANBOOT_FAILED}\nexit 1\n"
    )


def tftp_root(path: Path) -> Path:
    """A TFTP directory whose boot.ipxe chains the per-MAC script."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "boot.ipxe").write_text(BOOT_IPXE)
    return path
