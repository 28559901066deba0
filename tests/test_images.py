"""Images service (import, versions, removal, assignment) on SQLite and PostgreSQL, and the
`ggnet image` commands, with the real qemu-img on small real disks."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pty
import re
import select
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlalchemy import select as sql_select

from core.auth import Actor
from core.boot.ipxe import Why
from core.context import Core
from core.engine.prepare import Refusal, resolve_version
from core.errors import Conflict, Invalid, NotFound, PermissionDenied
from core.models import AuditEvent, Boot, Disk, Image, ImageVersion, Machine, Writeback, utcnow
from core.services import images, machines
from core.storage.digest import disk_digest
from core.storage.qemu_img import Cancelled

from .cli import ADMIN_PW, as_admin, ggnet_executable, ok, one_error
from .test_qemu_img import SOURCES, MiB, make_original, qemu

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) is not installed")

FILE_NAME = re.compile(r"^[0-9a-f]{32}\.raw\Z")


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("image-disks")
    original = make_original(root / "original.bin")
    made = {"original": original}
    for fmt, options in SOURCES.items():
        made[fmt] = root / f"upload-{fmt}.img"  # the extension says nothing
        qemu("convert", "-f", "raw", "-O", fmt, *options, str(original), str(made[fmt]))
    # damaged and crafted inputs
    corrupt = root / "corrupt.qcow2"
    shutil.copy(made["qcow2"], corrupt)
    with open(corrupt, "r+b") as handle:
        handle.seek(0x30000)  # inside the L1/refcount metadata of a small qcow2: overwrite it with noise
        handle.write(os.urandom(0x20000))
    made["corrupt"] = corrupt
    backed = root / "backed.qcow2"
    qemu("create", "-f", "qcow2", "-b", str(original), "-F", "raw", str(backed))
    made["backed"] = backed
    # big enough that qemu-img is still converting when its first progress line arrives
    slow_raw = root / "slow.raw"
    with open(slow_raw, "wb") as handle:
        block = os.urandom(MiB)
        for _ in range(96):
            handle.write(block)
    made["slow"] = root / "slow.qcow2"
    qemu("convert", "-f", "raw", "-O", "qcow2", str(slow_raw), str(made["slow"]))
    slow_raw.unlink()
    return made


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image_files(core: Core) -> list[str]:
    directory = images.images_dir(core.settings)
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


async def count(core: Core, model: type) -> int:
    async with core.db.session() as session:
        return int((await session.execute(sql_select(func.count()).select_from(model))).scalar_one())


async def actions(core: Core, prefix: str = "image", outcome: str = "ok") -> list[str]:
    async with core.db.session() as session:
        query = (
            sql_select(AuditEvent.action)
            .where(AuditEvent.action.startswith(prefix), AuditEvent.outcome == outcome)
            .order_by(AuditEvent.id)
        )
        return list((await session.execute(query)).scalars())


async def live_session(core: Core, machine_name: str, image_name: str, number: int, state: str = "ready") -> int:
    """A current boot as the engine records it (the engine is tested elsewhere)."""
    async with core.db.transaction() as session:
        machine = (await session.execute(sql_select(Machine).where(Machine.name == machine_name))).scalar_one()
        version = (
            await session.execute(
                sql_select(ImageVersion)
                .join(Image, Image.id == ImageVersion.image_id)
                .where(Image.name == image_name, ImageVersion.number == number)
            )
        ).scalar_one()
        row = Boot(
            server=core.settings.server_name,
            machine_id=machine.id,
            machine_name=machine.name,
            mac=machine.mac,
            origin="pc",
            policy="fresh",
            image_version_id=version.id,
            state=state,
            requested_at=utcnow(),
        )
        session.add(row)
        await session.flush()
        return row.id


async def set_session_state(core: Core, session_id: int, state: str) -> None:
    async with core.db.transaction() as session:
        row = await session.get(Boot, session_id)
        assert row is not None
        row.state = state


# --- import -----------------------------------------------------------------------


async def test_import_every_format_serves_the_original_bytes(core: Core, admin: Actor, disks: dict[str, Path]) -> None:
    original = disk_digest(disks["original"])
    first = await images.import_image(core, admin, disks["qcow2"], name="win10", kind="system", notes="gold")
    assert (first.image, first.number, first.is_active, first.source_format) == ("win10", 1, True, "qcow2")
    assert first.sha256 == original
    for fmt in ("vpc", "vhdx", "vmdk", "vdi", "raw"):
        await images.import_image(core, admin, disks[fmt], new_version_of="win10")
    versions = await images.list_versions(core, admin, "win10")
    assert [(v.number, v.source_format, v.is_active) for v in versions] == [
        (1, "qcow2", False),
        (2, "vhd", False),
        (3, "vhdx", False),
        (4, "vmdk", False),
        (5, "vdi", False),
        (6, "raw", True),
    ]
    for version in versions:
        served = images.images_dir(core.settings) / version.file_name
        assert FILE_NAME.match(version.file_name)  # generated by the code, never from the upload's name
        assert version.sha256 == original == disk_digest(served)
        assert sha(served) == sha(disks["original"])
        assert version.virtual_size == disks["original"].stat().st_size
        assert oct(served.stat().st_mode & 0o777) == "0o600"
    assert image_files(core) == sorted(v.file_name for v in versions)  # nothing else in the directory
    shown = await images.get_image(core, admin, "win10")
    assert (shown.kind, shown.active_version, shown.version_count, shown.sha256) == ("system", 6, 6, original)
    assert [i.name for i in await images.list_images(core, admin)] == ["win10"]
    # one audit event per change
    assert await actions(core) == ["image.import"] + ["image.version.add"] * 5


async def test_new_version_without_activation_then_activate(
    core: Core, operator: Actor, disks: dict[str, Path]
) -> None:
    await images.import_image(core, operator, disks["vdi"], name="games", kind="game")
    added = await images.import_image(
        core, operator, disks["vhdx"], new_version_of="games", activate=False, notes="patch day"
    )
    assert (added.number, added.is_active, added.notes) == (2, False, "patch day")
    assert (await images.get_image(core, operator, "games")).active_version == 1
    done = await images.activate_version(core, operator, "games", 2)
    assert done.is_active
    assert [v.is_active for v in await images.list_versions(core, operator, "games")] == [False, True]
    with pytest.raises(Conflict, match="already active"):
        await images.activate_version(core, operator, "games", 2)
    with pytest.raises(NotFound, match="has no version 9"):
        await images.activate_version(core, operator, "games", 9)
    assert await actions(core) == ["image.import", "image.version.add", "image.activate"]


async def test_concurrent_new_versions_get_their_own_numbers(core: Core, admin: Actor, disks: dict[str, Path]) -> None:
    """Two consoles adding a version to the same image at once: both succeed, one active version."""
    await images.import_image(core, admin, disks["raw"], name="win")
    added = await asyncio.gather(
        *(images.import_image(core, admin, disks[f], new_version_of="win") for f in ("qcow2", "vdi", "vhdx"))
    )
    assert sorted(v.number for v in added) == [2, 3, 4]
    versions = await images.list_versions(core, admin, "win")
    assert [v.number for v in versions if v.is_active] == [max(v.number for v in added)]
    assert len(image_files(core)) == 4


@pytest.mark.parametrize("bad", ["corrupt", "backed"])
async def test_refused_input_leaves_neither_row_nor_file(
    core: Core, admin: Actor, disks: dict[str, Path], bad: str
) -> None:
    phrase = "damaged" if bad == "corrupt" else "backing file"
    with pytest.raises(Invalid, match=phrase):
        await images.import_image(core, admin, disks[bad], name="evil")
    assert await count(core, Image) == 0 and await count(core, ImageVersion) == 0
    assert image_files(core) == []
    assert await actions(core) == []


async def test_cancelled_import_leaves_neither_row_nor_file(core: Core, admin: Actor, disks: dict[str, Path]) -> None:
    cancel = asyncio.Event()
    with pytest.raises(Cancelled):
        await images.import_image(
            core, admin, disks["slow"], name="big", progress=lambda _v: cancel.set(), cancel=cancel
        )
    task: asyncio.Task[object] | None = None

    def cancel_task(_value: float) -> None:
        assert task is not None
        task.cancel()

    task = asyncio.ensure_future(images.import_image(core, admin, disks["slow"], name="big", progress=cancel_task))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await count(core, Image) == 0 and await count(core, ImageVersion) == 0
    assert image_files(core) == []


async def test_names_and_inputs_are_checked_before_any_work(core: Core, admin: Actor, disks: dict[str, Path]) -> None:
    with pytest.raises(Invalid, match="name: must be 1-64 characters"):
        await images.import_image(core, admin, disks["raw"], name="../../etc/passwd")
    with pytest.raises(Invalid, match="kind"):
        await images.import_image(core, admin, disks["raw"], name="x", kind="movie")
    with pytest.raises(Invalid, match="name: is required"):
        await images.import_image(core, admin, disks["raw"])
    with pytest.raises(NotFound, match="no image named 'nope'"):
        await images.import_image(core, admin, disks["raw"], new_version_of="nope")
    with pytest.raises(Invalid, match="file: .* does not exist"):
        await images.import_image(core, admin, "/nonexistent/disk.vhdx", name="x")
    await images.import_image(core, admin, disks["raw"], name="base")
    files = image_files(core)
    with pytest.raises(Conflict, match="already exists"):
        await images.import_image(core, admin, disks["qcow2"], name="base")
    assert image_files(core) == files


async def test_viewer_may_not_import_and_the_refusal_is_audited(
    core: Core, viewer: Actor, disks: dict[str, Path]
) -> None:
    with pytest.raises(PermissionDenied, match="viewer 'vera' may not manage images"):
        await images.import_image(core, viewer, disks["raw"], name="x")
    assert await actions(core, outcome="denied") == ["image.import"]
    assert image_files(core) == []


# --- removal ------------------------------------------------------------------------


async def test_removal_is_refused_while_used_and_names_the_machines(
    core: Core, admin: Actor, disks: dict[str, Path]
) -> None:
    await images.import_image(core, admin, disks["raw"], name="win")
    await images.import_image(core, admin, disks["qcow2"], new_version_of="win", activate=False)
    await images.import_image(core, admin, disks["vdi"], new_version_of="win", activate=False)
    for n, name in enumerate(("pc01", "pc02", "pc03"), start=1):
        await machines.add_machine(core, admin, name=name, mac=f"52:54:00:00:00:0{n}")
        await images.assign_image(core, admin, name, "win")
    await images.assign_image(core, admin, "pc01", pin_version=2)
    running = await live_session(core, "pc02", "win", 3)
    files = {v.number: v.file_name for v in await images.list_versions(core, admin, "win")}

    with pytest.raises(Conflict, match="version 2 is pinned by pc01"):
        await images.remove_image(core, admin, "win", 2)
    with pytest.raises(Conflict, match="version 3 is in use by the current boots of pc02"):
        await images.remove_image(core, admin, "win", 3)
    with pytest.raises(Conflict, match="version 1 is the active version .* activate another one first"):
        await images.remove_image(core, admin, "win", 1)
    with pytest.raises(Conflict, match="in use by the current boots of pc02"):
        await images.remove_image(core, admin, "win")
    versions = await images.list_versions(core, admin, "win")
    assert [(v.number, v.pinned_by, v.in_use_by) for v in versions] == [
        (1, [], []),
        (2, ["pc01"], []),
        (3, [], ["pc02"]),
    ]
    assert image_files(core) == sorted(files.values())

    # once the session has stopped and the pin is gone, versions can go: row and file
    await set_session_state(core, running, "ended")
    await images.remove_image(core, admin, "win", 3)
    await images.assign_image(core, admin, "pc01", pin_version=None)
    await images.remove_image(core, admin, "win", 2)
    assert [v.number for v in await images.list_versions(core, admin, "win")] == [1]
    assert image_files(core) == [files[1]]
    async with core.db.session() as session:
        assert (await session.get(Boot, running)).image_version_id is None  # type: ignore[union-attr]

    with pytest.raises(Conflict, match="only version .* remove the whole image"):
        await images.remove_image(core, admin, "win", 1)
    with pytest.raises(Conflict, match="assigned to pc01, pc02, pc03"):
        await images.remove_image(core, admin, "win")
    for name in ("pc01", "pc02", "pc03"):
        await images.assign_image(core, admin, name, None)
    await images.remove_image(core, admin, "win")
    assert await images.list_images(core, admin) == []
    assert await count(core, ImageVersion) == 0
    assert image_files(core) == []
    assert (await actions(core))[-3:] == ["image.version.delete", "image.version.delete", "image.delete"]


async def test_a_boot_being_prepared_also_blocks_removal(core: Core, admin: Actor, disks: dict[str, Path]) -> None:
    await images.import_image(core, admin, disks["raw"], name="win")
    await machines.add_machine(core, admin, name="pc09", mac="52:54:00:00:00:09")
    await images.assign_image(core, admin, "pc09", "win")
    await images.assign_image(core, admin, "pc09", None)  # unassigned, but its current boot still runs v1
    await live_session(core, "pc09", "win", 1, state="preparing")
    with pytest.raises(Conflict, match="pc09"):
        await images.remove_image(core, admin, "win")


# --- assignment and resolution ------------------------------------------------------------


async def test_assign_pin_and_resolve(core: Core, admin: Actor, disks: dict[str, Path]) -> None:
    await images.import_image(core, admin, disks["raw"], name="win")
    await images.import_image(core, admin, disks["qcow2"], new_version_of="win", activate=False)
    await images.import_image(core, admin, disks["raw"], name="linux")
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:00:00:01")

    async def resolved() -> tuple[str, int]:
        async with core.db.session() as session:
            machine = await machines.get_row(session, "pc01")
            version = await resolve_version(session, machine, Disk.SYSTEM)
            assert version is not None
            image = await session.get(Image, version.image_id)
            assert images.version_path(core.settings, version) == images.images_dir(core.settings) / version.file_name
            return image.name, version.number  # type: ignore[union-attr]

    with pytest.raises(Refusal) as refused:
        await resolved()
    assert refused.value.why == Why.NO_IMAGE
    view = await images.assign_image(core, admin, "pc01", "win")
    assert (view.image, view.pinned_version) == ("win", None)
    assert await resolved() == ("win", 1)
    view = await images.assign_image(core, admin, "pc01", pin_version=2)
    assert (view.image, view.pinned_version) == ("win", 2)
    assert await resolved() == ("win", 2)
    await images.import_image(core, admin, disks["vdi"], new_version_of="win")  # v3 active: pin still wins
    assert await resolved() == ("win", 2)
    await images.assign_image(core, admin, "pc01", pin_version=None)
    assert await resolved() == ("win", 3)
    with pytest.raises(NotFound, match="image 'win' has no version 7"):
        await images.assign_image(core, admin, "pc01", pin_version=7)
    await images.assign_image(core, admin, "pc01", "win", 1)
    view = await images.assign_image(core, admin, "pc01", "linux")  # another image drops the old pin
    assert (view.image, view.pinned_version) == ("linux", None)
    with pytest.raises(NotFound, match="no image named 'nope'"):
        await images.assign_image(core, admin, "pc01", "nope")
    await images.assign_image(core, admin, "pc01", None)
    with pytest.raises(Invalid, match="pin_version: .* has no image"):
        await images.assign_image(core, admin, "pc01", pin_version=1)
    with pytest.raises(Invalid):
        await images.assign_image(core, admin, "pc01")
    assign_events = await actions(core, "machine.assign_image")
    assert len(assign_events) == 6  # one per change made


async def test_machine_whose_image_has_no_active_version(core: Core, admin: Actor, disks: dict[str, Path]) -> None:
    await images.import_image(core, admin, disks["raw"], name="win")
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:00:00:01")
    await images.assign_image(core, admin, "pc01", "win")
    async with core.db.transaction() as session:  # a state only a crash mid-change could leave
        for version in (await session.execute(sql_select(ImageVersion))).scalars():
            version.is_active = False
    async with core.db.session() as session:
        with pytest.raises(Refusal) as refused:
            await resolve_version(session, await machines.get_row(session, "pc01"), Disk.SYSTEM)
    assert refused.value.why == Why.NO_VERSION and "image win has no active version" in refused.value.detail


async def test_game_disk_assignment(core: Core, admin: Actor, disks: dict[str, Path]) -> None:
    await images.import_image(core, admin, disks["raw"], name="win")
    await images.import_image(core, admin, disks["raw"], name="games", kind="game")
    await images.import_image(core, admin, disks["qcow2"], new_version_of="games", activate=False)
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:00:00:01")
    with pytest.raises(Invalid, match="game_image: 'win' is a system image"):
        await images.assign_image(core, admin, "pc01", game_image="win")
    with pytest.raises(Invalid, match="image: 'games' is a game image"):
        await images.assign_image(core, admin, "pc01", "games")
    view = await images.assign_image(core, admin, "pc01", "win", game_image="games", game_pin_version=2)
    assert (view.image, view.game_image, view.game_pinned_version) == ("win", "games", 2)
    async with core.db.session() as session:
        version = await resolve_version(session, await machines.get_row(session, "pc01"), Disk.GAME)
    assert version is not None and version.number == 2
    with pytest.raises(Conflict, match="pinned by pc01"):
        await images.remove_image(core, admin, "games")
    await images.assign_image(core, admin, "pc01", game_pin_version=None)
    with pytest.raises(Conflict, match="assigned to pc01"):
        await images.remove_image(core, admin, "games")
    view = await images.assign_image(core, admin, "pc01", game_image=None)
    assert (view.game_image, view.game_pinned_version) == (None, None)


async def test_viewer_may_not_assign(core: Core, admin: Actor, viewer: Actor, disks: dict[str, Path]) -> None:
    await images.import_image(core, admin, disks["raw"], name="win")
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:00:00:01")
    with pytest.raises(PermissionDenied, match="may not manage machines"):
        await images.assign_image(core, viewer, "pc01", "win")
    with pytest.raises(PermissionDenied, match="may not manage images"):
        await images.activate_version(core, viewer, "win", 1)
    with pytest.raises(PermissionDenied, match="may not manage images"):
        await images.remove_image(core, viewer, "win")
    assert await actions(core, "", outcome="denied") == ["machine.assign_image", "image.activate", "image.delete"]
    assert (await machines.get_machine(core, viewer, "pc01")).image is None
    assert [i.name for i in await images.list_images(core, viewer)] == ["win"]  # reading is fine


# --- a maintenance writeback applied as a version ------------------------------------------


async def test_applied_writeback_becomes_the_next_version(core: Core, admin: Actor, disks: dict[str, Path]) -> None:
    """The engine's last step of a maintenance apply (the engine itself is tested in tests/test_engine.py)."""
    first = await images.import_image(core, admin, disks["raw"], name="win")
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:00:00:01")
    await images.assign_image(core, admin, "pc01", "win")
    clone = images.images_dir(core.settings) / "0123456789abcdef0123456789abcdef.raw"
    shutil.copy(images.images_dir(core.settings) / first.file_name, clone)
    with open(clone, "r+b") as handle:
        handle.write(b"installed an update")
    expected = disk_digest(clone)
    async with core.db.transaction() as session:
        image_id = (await session.execute(sql_select(Image.id).where(Image.name == "win"))).scalar_one()
        machine = (await session.execute(sql_select(Machine).where(Machine.name == "pc01"))).scalar_one()
        machine.writeback_policy = "maintenance"
        writeback = Writeback(
            server=core.settings.server_name,
            machine_id=machine.id,
            disk="system",
            file_name="wb-1-system-0000abcd.raw",
            state="ready",
            retained=True,
        )
        session.add(writeback)
        await session.flush()
        ids = (machine.id, writeback.id)
    for _ in range(2):  # idempotent: an engine that died after the first call does it again
        number = await images.record_applied_version(
            core, admin, image_id, clone, activate=True, notes="from pc01", machine_id=ids[0], writeback_id=ids[1]
        )
        assert number == 2
    versions = await images.list_versions(core, admin, "win")
    assert [(v.number, v.is_active, v.notes) for v in versions] == [(1, False, ""), (2, True, "from pc01")]
    assert versions[1].sha256 == expected and versions[1].file_name == clone.name
    async with core.db.session() as session:
        assert (await session.get(Writeback, ids[1])).state == "discard"  # type: ignore[union-attr]
        assert (await session.get(Machine, ids[0])).writeback_policy == "fresh"  # type: ignore[union-attr]
    assert "image.version.apply" in await actions(core)


# --- the command line ---------------------------------------------------------------------


def sqlite_rows(env: dict[str, str], sql: str) -> list[tuple]:
    with sqlite3.connect(Path(env["GGNET_DATA_DIR"]) / "ggnet.db") as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.slow
def test_cli_import_assign_and_refused_removal(site: dict[str, str], disks: dict[str, Path]) -> None:
    done = ok(as_admin(["image", "import", str(disks["vhdx"]), "--name", "win11", "--kind", "system"], site))
    assert "image 'win11' version 1 imported from vhdx" in done.stdout
    assert f"sha256 (ggnet-disk-v1) {disk_digest(disks['original'])}" in done.stdout
    ok(as_admin(["image", "import", str(disks["vmdk"]), "--new-version-of", "win11", "--no-activate"], site))
    listed = json.loads(ok(as_admin(["image", "list", "--json"], site)).stdout)
    assert [(i["name"], i["active_version"], i["version_count"]) for i in listed] == [("win11", 1, 2)]
    ok(as_admin(["machine", "set", "pc01", "--image", "win11", "--pin-version", "2"], site))
    assert sqlite_rows(
        site,
        "SELECT i.name, v.number FROM machines m JOIN images i ON i.id = m.image_id "
        "JOIN image_versions v ON v.id = m.pinned_version_id",
    ) == [("win11", 2)]
    one_error(as_admin(["image", "rm", "win11", "--version", "2"], site), "version 2 is pinned by pc01")
    versions = json.loads(ok(as_admin(["image", "versions", "win11", "--json"], site)).stdout)
    assert [(v["number"], v["pinned_by"]) for v in versions] == [(1, []), (2, ["pc01"])]
    ok(as_admin(["image", "activate", "win11", "2"], site))
    assert "win11" in ok(as_admin(["image", "show", "win11"], site)).stdout
    ok(as_admin(["machine", "set", "pc01", "--unpin", "--no-image"], site))
    ok(as_admin(["image", "rm", "win11"], site))
    assert sqlite_rows(site, "SELECT count(*) FROM image_versions") == [(0,)]
    assert list((Path(site["GGNET_DATA_DIR"]) / "images").iterdir()) == []


def test_cli_refuses_a_crafted_image_with_one_line(site: dict[str, str], disks: dict[str, Path]) -> None:
    one_error(as_admin(["image", "import", str(disks["backed"]), "--name", "evil"], site), "has a backing file")
    assert sqlite_rows(site, "SELECT count(*) FROM images") == [(0,)]


def test_cli_ctrl_c_cancels_cleanly(site: dict[str, str], disks: dict[str, Path]) -> None:
    """On a terminal the import shows progress; Ctrl-C at the first percentage leaves nothing."""
    env = {**site, "GGNET_USER": "admin", "GGNET_PASSWORD": ADMIN_PW}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, with the pty as its terminal
        os.execve(ggnet_executable(), [ggnet_executable(), "image", "import", str(disks["slow"]), "--name", "big"], env)
    output = b""
    deadline = time.monotonic() + 60  # a guard against hanging, not a measurement
    try:
        while b"%" not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                try:
                    output += os.read(fd, 1024)
                except OSError:
                    break
        assert b"importing" in output, output
        os.kill(pid, signal.SIGINT)
        while time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 130, output
    assert b"cancelled" in output and b"Traceback" not in output
    assert sqlite_rows(site, "SELECT count(*) FROM images") == [(0,)]
    assert list((Path(site["GGNET_DATA_DIR"]) / "images").iterdir()) == []


def test_machine_set_usage_errors(site: dict[str, str]) -> None:
    for args in (["--image", "x", "--no-image"], ["--pin-version", "1", "--unpin"], ["--pin-version", "0"]):
        result = as_admin(["machine", "set", "pc01", *args], site)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    one_error(as_admin(["machine", "set", "pc01", "--image", "nope"], site), "no image named 'nope'")


def test_image_import_usage(site: dict[str, str], disks: dict[str, Path]) -> None:
    assert as_admin(["image", "import", str(disks["raw"])], site).returncode == 2
    assert as_admin(["image", "import", str(disks["raw"]), "--name", "a", "--no-activate"], site).returncode == 2


# --- the Secure Boot loader of an image --------------------------------------------------------


async def test_efi_loader_set_checked_and_cleared(core: Core, admin: Actor, disks: dict[str, Path]) -> None:
    await images.import_image(core, admin, disks["raw"], name="win")
    await images.import_image(core, admin, disks["raw"], name="games", kind="game")
    assert (await images.get_image(core, admin, "win")).efi_loader is None
    view = await images.set_efi_loader(core, admin, "win", " \\EFI\\BOOT\\shimx64.efi ")
    assert view.efi_loader == "\\EFI\\BOOT\\shimx64.efi"
    assert [i.efi_loader for i in await images.list_images(core, admin)] == [None, "\\EFI\\BOOT\\shimx64.efi"]
    # the rule the boot script applies: nothing iPXE reads as a separator, comment or expansion
    for bad in ("\\EFI\\x.efi || shell", "${x}", "\\EFI\\x.efi #", "", "\\EFI\\" + "a" * 300, "\\EFI\\x\n.efi"):
        with pytest.raises(Invalid, match="efi_loader: must be a path on the disk"):
            await images.set_efi_loader(core, admin, "win", bad)
    with pytest.raises(Invalid, match="efi_loader: 'games' is a game image"):
        await images.set_efi_loader(core, admin, "games", "\\EFI\\BOOT\\shimx64.efi")
    with pytest.raises(NotFound, match="no image named 'nope'"):
        await images.set_efi_loader(core, admin, "nope", None)
    assert (
        await images.get_image(core, admin, "win")
    ).efi_loader == "\\EFI\\BOOT\\shimx64.efi"  # refusals changed nothing
    assert (await images.set_efi_loader(core, admin, "win", None)).efi_loader is None
    async with core.db.session() as session:
        events = (
            await session.execute(
                sql_select(AuditEvent).where(AuditEvent.action == "image.update").order_by(AuditEvent.id)
            )
        ).scalars()
        assert [(e.before, e.after) for e in events] == [
            ({"efi_loader": None}, {"efi_loader": "\\EFI\\BOOT\\shimx64.efi"}),
            ({"efi_loader": "\\EFI\\BOOT\\shimx64.efi"}, {"efi_loader": None}),
        ]


def test_cli_image_set_efi_loader(site: dict[str, str], disks: dict[str, Path]) -> None:
    ok(as_admin(["image", "import", str(disks["raw"]), "--name", "win11"], site))
    done = ok(as_admin(["image", "set", "win11", "--efi-loader", "\\EFI\\Microsoft\\Boot\\bootmgfw.efi"], site))
    assert done.stdout == "image 'win11': uefi-secure machines start \\EFI\\Microsoft\\Boot\\bootmgfw.efi\n"
    assert "\\EFI\\Microsoft\\Boot\\bootmgfw.efi" in ok(as_admin(["image", "list"], site)).stdout
    shown = json.loads(ok(as_admin(["image", "show", "win11", "--json"], site)).stdout)
    assert shown["efi_loader"] == "\\EFI\\Microsoft\\Boot\\bootmgfw.efi"
    one_error(as_admin(["image", "set", "win11", "--efi-loader", "a b"], site), "efi_loader: must be a path")
    for args in ([], ["--efi-loader", "\\EFI\\x.efi", "--no-efi-loader"]):
        result = as_admin(["image", "set", "win11", *args], site)
        assert result.returncode == 2 and "--no-efi-loader" in result.stderr, result.stderr
    assert "the disk's default loader" in ok(as_admin(["image", "set", "win11", "--no-efi-loader"], site)).stdout
    assert json.loads(ok(as_admin(["image", "show", "win11", "--json"], site)).stdout)["efi_loader"] is None
