"""iPXE boot scripts: golden renderings, injection refused, atomic writes, stale-script removal,
and the service that renders them from the database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from core.auth import Actor
from core.boot import ipxe
from core.boot.ipxe import MachineScript, SanBoot, Why
from core.context import Core
from core.errors import Invalid, PermissionDenied
from core.models import AuditEvent, BootSession, Image, Machine, Target
from core.services import boot, machines

GOLDEN = Path(__file__).parent / "golden"


def assert_golden(name: str, text: str) -> None:
    """Compare with tests/golden/<name>; UPDATE_GOLDEN=1 rewrites the file (review the diff!)."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == text, f"differs from {path}; UPDATE_GOLDEN=1 to accept"


SECRET = "Q8xk2LmP0aZr7TbW"


def sanboot(**overrides: object) -> SanBoot:
    values: dict[str, object] = dict(
        address="10.0.2.2",
        port=3260,
        lun=1,
        target_iqn="iqn.2024-01.lan.ggnet:pc01",
        initiator_iqn="iqn.2024-01.lan.ggnet:client.pc01",
        chap_username="pc01",
        chap_secret=SECRET,
    )
    values.update(overrides)
    return SanBoot(**values)  # type: ignore[arg-type]


# --- rendering -------------------------------------------------------------------


def test_boot_script_golden() -> None:
    text = ipxe.render_boot_script()
    assert_golden("boot.ipxe", text)
    assert text.startswith("#!ipxe\n")
    assert "chain ${mac:hexhyp}.ipxe || goto unregistered" in text
    assert "not registered in ggnet" in text
    assert "shell" not in text  # never hands the keyboard an iPXE shell


def test_sanboot_script_golden() -> None:
    text = ipxe.render_machine_script(MachineScript("pc01", "52:54:00:aa:00:01", sanboot()))
    assert_golden("52-54-00-aa-00-01.ipxe", text)
    lines = text.splitlines()
    assert "set initiator-iqn iqn.2024-01.lan.ggnet:client.pc01" in lines
    assert "set username pc01" in lines and f"set password {SECRET}" in lines
    assert "sanboot iscsi:10.0.2.2::3260:1:iqn.2024-01.lan.ggnet:pc01 || goto failed" in lines
    assert "--no-describe" not in text  # Windows needs the iBFT


def test_lun_is_hexadecimal_and_protocol_empty() -> None:
    text = ipxe.render_machine_script(MachineScript("pc02", "52:54:00:aa:00:02", sanboot(lun=26, port=3261)))
    assert "sanboot iscsi:10.0.2.2::3261:1a:iqn.2024-01.lan.ggnet:pc01 || goto failed" in text
    assert "iscsi:10.0.2.2::3261:0:" in ipxe.render_machine_script(
        MachineScript("pc02", "52:54:00:aa:00:02", sanboot(lun=0, port=3261))
    )


def test_no_session_script_golden() -> None:
    text = ipxe.render_machine_script(MachineScript("pc01", "52:54:00:aa:00:01", why=Why.NO_SESSION))
    assert_golden("52-54-00-aa-00-01.no-session.ipxe", text)
    assert "no boot session for pc01: start one with ggnet session start pc01" in text
    assert "sanboot" not in text and "password" not in text


@pytest.mark.parametrize(
    "why, phrase",
    [
        (Why.NO_IMAGE, "no image is assigned to pc07"),
        (Why.FAILED, "the last boot session of pc07 failed"),
        (Why.STOPPING, "the boot session of pc07 is being stopped"),
        (Why.NO_TARGET, "has no iSCSI target: run ggnet reconcile"),
    ],
)
def test_every_reason_is_explained(why: Why, phrase: str) -> None:
    text = ipxe.render_machine_script(MachineScript("pc07", "52:54:00:aa:00:07", why=why))
    assert phrase in text
    assert f"echo {ipxe.NOT_BOOTING}:" in text
    assert text.rstrip().endswith("exit 0")


def test_hostname_boot_address_is_allowed() -> None:
    text = ipxe.render_machine_script(MachineScript("pc01", "52:54:00:aa:00:01", sanboot(address="boot.lan")))
    assert "sanboot iscsi:boot.lan::3260:1:" in text


# --- injection -----------------------------------------------------------------------

INJECTIONS = [
    ("name", dict(name="pc01\nshell")),
    ("name", dict(name="pc01 || shell")),
    ("name", dict(name="PC01")),  # not in stored form
    ("mac", dict(mac="52:54:00:aa:00:01\nshell")),
    ("target_iqn", dict(boot=sanboot(target_iqn="iqn.2024-01.lan.ggnet:pc01 || shell"))),
    ("target_iqn", dict(boot=sanboot(target_iqn="iqn.2024-01.lan.ggnet:pc01\nshell"))),
    ("target_iqn", dict(boot=sanboot(target_iqn="iqn.2024-01.lan.ggnet:${net0/ip}"))),
    ("initiator_iqn", dict(boot=sanboot(initiator_iqn="iqn.2024-01.lan.ggnet:x #comment"))),
    ("chap_username", dict(boot=sanboot(chap_username="pc01 ; shell"))),
    ("chap_username", dict(boot=sanboot(chap_username="${password}"))),
    ("chap_secret", dict(boot=sanboot(chap_secret="abc${x}def"))),
    ("chap_secret", dict(boot=sanboot(chap_secret="abc def"))),
    ("chap_secret", dict(boot=sanboot(chap_secret="abcdef\nshell"))),
    ("chap_secret", dict(boot=sanboot(chap_secret=""))),
    ("boot_address", dict(boot=sanboot(address="10.0.2.2 || shell"))),
    ("boot_address", dict(boot=sanboot(address="0.0.0.0"))),
    ("port", dict(boot=sanboot(port=0))),
    ("lun", dict(boot=sanboot(lun=-1))),
]


@pytest.mark.parametrize("field, change", INJECTIONS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(INJECTIONS)])
def test_unsafe_values_are_refused(field: str, change: dict[str, object]) -> None:
    values: dict[str, object] = dict(name="pc01", mac="52:54:00:aa:00:01", boot=sanboot())
    values.update(change)
    with pytest.raises(Invalid) as refused:
        ipxe.render_machine_script(MachineScript(**values))  # type: ignore[arg-type]
    assert any(field in key for key in refused.value.errors), refused.value.errors
    assert "abc" not in refused.value.message  # a secret is never quoted back


def test_two_machines_with_one_mac_are_refused() -> None:
    with pytest.raises(Invalid, match="more than one machine"):
        ipxe.render_all([MachineScript("pc01", "52:54:00:aa:00:01"), MachineScript("pc02", "52-54-00-AA-00-01")])


# --- writing ---------------------------------------------------------------------------


def listing(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_sync_writes_world_readable_files_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    files = ipxe.render_all(
        [MachineScript("pc01", "52:54:00:aa:00:01", sanboot()), MachineScript("pc02", "52:54:00:aa:00:02")]
    )
    first = ipxe.sync_tftp_root(root, files)
    assert sorted(first.written) == sorted(files)
    assert listing(root) == sorted([*files, ".ggnet.lock"])
    for name, text in files.items():
        assert (root / name).read_text() == text
        assert (root / name).stat().st_mode & 0o777 == 0o644  # TFTP servers serve world-readable files
    inode = (root / "boot.ipxe").stat().st_ino
    again = ipxe.sync_tftp_root(root, files)
    assert again.changed == 0 and again.unchanged == len(files)
    assert (root / "boot.ipxe").stat().st_ino == inode  # unchanged files are not rewritten


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    """A real write failure: the file-size limit (RLIMIT_FSIZE) stops the write half-way with EFBIG."""
    target = tmp_path / "52-54-00-aa-00-01.ipxe"
    target.write_text("old content\n")
    program = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from core.boot.ipxe import write_atomic\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    write_atomic(Path(sys.argv[1]), 'x' * 100000)\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program, str(target)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    assert result.stdout.strip() == "27", result.stderr  # EFBIG
    assert target.read_text() == "old content\n"
    assert listing(tmp_path) == [target.name]


def test_stale_scripts_removed_only_when_ggnet_wrote_them(tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    old = ipxe.render_all([MachineScript("pc01", "52:54:00:aa:00:01"), MachineScript("pc09", "52:54:00:aa:00:09")])
    ipxe.sync_tftp_root(root, old)
    operators_own = root / "52-54-00-bb-00-01.ipxe"  # hand-written for a machine ggnet does not know
    operators_own.write_text("#!ipxe\nsanboot iscsi:10.0.0.1::3260:0:iqn.2000-01.com.example:disk\n")
    other = root / "notes.txt"
    other.write_text(ipxe.MARKER + "\n")
    linked = root / "52-54-00-cc-00-01.ipxe"
    linked.symlink_to(root / "52-54-00-aa-00-09.ipxe")
    crashed = root / ".ggnet-abc123.tmp"  # a temporary file left by a crashed run
    crashed.write_text("half")

    new = ipxe.render_all([MachineScript("pc01", "52:54:00:aa:00:01")])
    result = ipxe.sync_tftp_root(root, new)

    assert result.removed == ["52-54-00-aa-00-09.ipxe"]
    assert not (root / "52-54-00-aa-00-09.ipxe").exists()
    assert operators_own.exists() and other.exists() and linked.is_symlink()
    assert not crashed.exists()


# --- the service, on SQLite and PostgreSQL --------------------------------------------------


async def _seed(core: Core, admin: Actor) -> None:
    """pc01 active (target LUN 1), pc02 image but no session, pc03 no image, pc04 failed, pc05 stopping."""
    for i in range(1, 6):
        await machines.add_machine(core, admin, name=f"pc0{i}", mac=f"52:54:00:aa:00:0{i}")
    async with core.db.transaction() as session:
        image = Image(name="win11", kind="system", description="")
        session.add(image)
        await session.flush()
        rows = {m.name: m for m in (await session.execute(select(Machine))).scalars()}
        for name in ("pc01", "pc02", "pc04", "pc05"):
            rows[name].image_id = image.id
        for name, state in (("pc01", "active"), ("pc04", "error"), ("pc05", "stopping")):
            boot_session = BootSession(machine_id=rows[name].id, kind="normal", state=state)
            session.add(boot_session)
            await session.flush()
            if state == "active":
                session.add(
                    Target(
                        session_id=boot_session.id,
                        machine_id=rows[name].id,
                        backend="tgt",
                        lun=1,
                        iqn=f"iqn.2024-01.lan.ggnet:{name}",
                        portal="0.0.0.0:3261",
                    )
                )


async def test_render_boot_files_from_the_database(core: Core, admin: Actor, operator: Actor) -> None:
    core.settings.boot_address = "10.0.2.2"
    core.settings.portal = "0.0.0.0:3261"
    await _seed(core, admin)
    report = await boot.render_boot_files(core, operator)
    root = Path(core.settings.tftp_root)  # type: ignore[arg-type]
    assert report.machines == 5 and len(report.written) == 6 and report.removed == []
    secret = (await machines.get_machine(core, admin, "pc01")).chap_secret
    pc01 = (root / "52-54-00-aa-00-01.ipxe").read_text()
    assert "sanboot iscsi:10.0.2.2::3261:1:iqn.2024-01.lan.ggnet:pc01 || goto failed" in pc01
    assert f"set password {secret}" in pc01
    assert "set initiator-iqn iqn.2024-01.lan.ggnet:client.pc01" in pc01
    assert "no boot session for pc02" in (root / "52-54-00-aa-00-02.ipxe").read_text()
    assert "no image is assigned to pc03" in (root / "52-54-00-aa-00-03.ipxe").read_text()
    assert "the last boot session of pc04 failed" in (root / "52-54-00-aa-00-04.ipxe").read_text()
    assert "pc05 is being stopped" in (root / "52-54-00-aa-00-05.ipxe").read_text()
    async with core.db.session() as session:
        events = (await session.execute(select(AuditEvent).where(AuditEvent.action == "boot.render"))).scalars().all()
    assert len(events) == 1 and events[0].actor == "oscar"
    assert secret not in json.dumps(events[0].after) + (events[0].detail or "")

    # a removed machine's script goes at the next render; the others stay as they are
    await machines.remove_machine(core, admin, "pc03")
    again = await boot.render_boot_files(core, operator)
    assert again.removed == ["52-54-00-aa-00-03.ipxe"] and again.written == []


async def test_write_boot_files_joins_the_callers_transaction(core: Core, admin: Actor) -> None:
    core.settings.boot_address = "10.0.2.2"
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:aa:00:01")
    async with core.db.transaction() as session:
        changed = await boot.write_boot_files(core, session)
        assert changed == 2  # boot.ipxe and pc01's script
        assert await boot.write_boot_files(core, session) == 0
    async with core.db.session() as session:
        assert (await session.execute(select(AuditEvent).where(AuditEvent.action.like("boot.%")))).first() is None


async def test_viewer_may_not_render(core: Core, viewer: Actor) -> None:
    with pytest.raises(PermissionDenied):
        await boot.render_boot_files(core, viewer)
    assert not Path(core.settings.tftp_root).exists()  # type: ignore[arg-type]
    async with core.db.session() as session:
        denied = (await session.execute(select(AuditEvent).where(AuditEvent.outcome == "denied"))).scalars().all()
    assert [(e.action, e.actor) for e in denied] == [("boot.render", "vera")]


async def test_wildcard_portal_needs_a_boot_address(sqlite_core: Core) -> None:
    from tests.conftest import make_user

    admin = await make_user(sqlite_core, "root-admin", "admin")
    await _seed(sqlite_core, admin)
    with pytest.raises(Invalid, match="GGNET_BOOT_ADDRESS"):
        await boot.render_boot_files(sqlite_core, admin)
    assert not Path(sqlite_core.settings.tftp_root).exists()  # type: ignore[arg-type]
