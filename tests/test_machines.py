"""Machines on SQLite and PostgreSQL: add, edit, rename, remove, list and CSV import."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from core.auth import Actor
from core.context import Core
from core.errors import Conflict, Invalid, NotFound
from core.models import Boot
from core.services import images, machines


async def test_add_normalises_and_generates_credentials(core: Core, admin: Actor) -> None:
    added = await machines.add_machine(
        core, admin, name="PC01", mac="5254.0012.3456", ip=" 192.168.1.21 ", boot_mode="uefi-secure"
    )
    assert (added.name, added.mac, added.ip, added.boot_mode) == (
        "pc01",
        "52:54:00:12:34:56",
        "192.168.1.21",
        "uefi-secure",
    )
    assert added.initiator_iqn == f"{core.settings.iqn_base}:client.pc01"
    assert added.chap_username == "pc01"
    assert added.chap_secret is None  # a secret is made for each boot (tests/test_engine.py)
    assert (added.writeback_policy, added.boot_enabled, added.status) == ("fresh", True, "off")
    other = await machines.add_machine(core, admin, name="pc02", mac="52:54:00:12:34:57")
    assert other.boot_mode == "bios" and other.ip is None
    assert (added.row_version, added.updated_by) == (1, "root-admin")
    assert added.updated_at.tzinfo is not None


async def test_list_is_sorted_and_show_finds_any_case(core: Core, admin: Actor) -> None:
    for name, mac in (("pc10", "52:54:00:00:00:10"), ("lab-a", "52:54:00:00:00:0a"), ("pc02", "52:54:00:00:00:02")):
        await machines.add_machine(core, admin, name=name, mac=mac)
    assert [m.name for m in await machines.list_machines(core, admin)] == ["lab-a", "pc02", "pc10"]
    assert (await machines.get_machine(core, admin, " PC10 ")).mac == "52:54:00:00:00:10"
    assert await machines.count_machines(core, admin) == 3
    with pytest.raises(NotFound, match="no machine named 'pc99'"):
        await machines.get_machine(core, admin, "pc99")


async def test_update_changes_only_what_is_given(core: Core, admin: Actor) -> None:
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:12:34:56", ip="192.168.1.21")
    changed = await machines.update_machine(core, admin, "pc01", boot_mode="uefi", keep_writeback=True)
    assert (changed.boot_mode, changed.writeback_policy, changed.ip, changed.mac) == (
        "uefi",
        "keep",
        "192.168.1.21",
        "52:54:00:12:34:56",
    )
    assert changed.row_version == 2
    cleared = await machines.update_machine(core, admin, "pc01", ip=None)
    assert cleared.ip is None
    remac = await machines.update_machine(core, admin, "pc01", mac="52-54-00-AB-CD-EF")
    assert remac.mac == "52:54:00:ab:cd:ef"


async def test_rename_follows_the_generated_iqn_but_keeps_a_custom_one(core: Core, admin: Actor) -> None:
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:12:34:56")
    renamed = await machines.update_machine(core, admin, "pc01", name="PC05")
    assert (renamed.name, renamed.chap_username) == ("pc05", "pc05")
    assert renamed.initiator_iqn == f"{core.settings.iqn_base}:client.pc05"
    with pytest.raises(NotFound):
        await machines.get_machine(core, admin, "pc01")
    custom = "iqn.1991-05.com.microsoft:desktop-7"
    await machines.add_machine(core, admin, name="pc06", mac="52:54:00:12:34:57", initiator_iqn=custom.upper())
    kept = await machines.update_machine(core, admin, "pc06", name="pc07")
    assert kept.initiator_iqn == custom


async def test_iqns_are_unique_without_regard_to_case(core: Core, admin: Actor) -> None:
    await machines.add_machine(
        core, admin, name="pc01", mac="52:54:00:12:34:56", initiator_iqn="iqn.1991-05.com.microsoft:desk"
    )
    with pytest.raises(Conflict, match="initiator_iqn"):
        await machines.add_machine(
            core, admin, name="pc02", mac="52:54:00:12:34:57", initiator_iqn="IQN.1991-05.COM.MICROSOFT:DESK"
        )


async def test_remove(core: Core, admin: Actor) -> None:
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:12:34:56")
    await machines.remove_machine(core, admin, "PC01")
    assert await machines.list_machines(core, admin) == []
    # the MAC and name are free again
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:12:34:56")


async def test_csv_import_all_rows(core: Core, admin: Actor) -> None:
    text = (
        "\ufeffName, MAC ,IP,Boot-Mode\n"  # BOM, spaces and a hyphen in the header are tolerated
        "pc01,52:54:00:00:00:01,192.168.1.11,uefi\n"
        "\n"
        "pc02,5254.0000.0002,,\n"
        '"pc03","52-54-00-00-00-03","192.168.1.13","bios"\n'
    )
    checked = await machines.check_csv(core, admin, text.lstrip("\ufeff"))
    assert [m.name for m in checked] == ["pc01", "pc02", "pc03"]
    assert await machines.list_machines(core, admin) == []  # the dry run wrote nothing
    names = await machines.import_csv(core, admin, text.lstrip("\ufeff"), source="lab.csv")
    assert names == ["pc01", "pc02", "pc03"]
    listed = {m.name: m for m in await machines.list_machines(core, admin)}
    assert listed["pc01"].boot_mode == "uefi" and listed["pc01"].ip == "192.168.1.11"
    assert listed["pc02"].mac == "52:54:00:00:00:02" and listed["pc02"].ip is None
    assert {m.writeback_policy for m in listed.values()} == {"fresh"}


async def test_policy_and_may_boot(core: Core, admin: Actor) -> None:
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:12:34:56")
    changed = await machines.update_machine(core, admin, "pc01", writeback_policy="keep", boot_enabled=False)
    assert (changed.writeback_policy, changed.boot_enabled) == ("keep", False)
    back = await machines.update_machine(core, admin, "pc01", keep_writeback=False, boot_enabled=True)
    assert (back.writeback_policy, back.boot_enabled) == ("fresh", True)
    with pytest.raises(Invalid, match="writeback_policy: maintenance is started with"):
        await machines.update_machine(core, admin, "pc01", writeback_policy="maintenance")
    with pytest.raises(Invalid, match="writeback_policy"):
        await machines.update_machine(core, admin, "pc01", writeback_policy="sometimes")


async def test_set_is_all_or_nothing(core: Core, admin: Actor) -> None:
    """`machine set pc02 --name pc99 --mac ... --image nope` used to rename and then fail."""
    await machines.add_machine(core, admin, name="pc02", mac="52:54:00:12:34:56")
    with pytest.raises(NotFound, match="no image named 'nope'"):
        await machines.update_machine(core, admin, "pc02", name="pc99", mac="52:54:00:00:00:99", image="nope")
    kept = await machines.get_machine(core, admin, "pc02")
    assert (kept.name, kept.mac, kept.row_version) == ("pc02", "52:54:00:12:34:56", 1)


async def test_csv_import_gives_machines_their_game_image(core: Core, admin: Actor, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"ggnet".ljust(1 << 20, b"\0"))
    await images.import_image(core, admin, disk, name="win")
    await images.import_image(core, admin, disk, name="games", kind="game")
    bad = (
        "name,mac,game_image\n"
        "pc01,52:54:00:00:00:01,games\n"
        "pc02,52:54:00:00:00:02,win\n"
        "pc03,52:54:00:00:00:03,nope\n"
        "pc04,52:54:00:00:00:04,\n"
        "pc05,52:54:00:00:00:05,nope\n"
        "pc06,52:54:00:00:00:06,bad name\n"
    )
    expected = [
        (3, "game_image: 'win' is a system image; it must be a game image"),
        (4, "game_image: no image named 'nope'"),
        (6, "game_image: no image named 'nope'"),
        (7, "game_image: must be 1-64 characters: letters, digits, '.', '_' and '-', starting with a letter or digit"),
    ]
    for check in (machines.check_csv, machines.import_csv):
        with pytest.raises(machines.CsvRowError) as caught:
            await check(core, admin, bad, source="lab.csv")
        assert caught.value.rows == expected
    assert await machines.list_machines(core, admin) == []  # all or nothing
    good = "name,mac,boot_mode,game_image\npc01,52:54:00:00:00:01,uefi,games\npc02,52:54:00:00:00:02,,\n"
    assert await machines.import_csv(core, admin, good, source="lab.csv") == ["pc01", "pc02"]
    listed = {m.name: m for m in await machines.list_machines(core, admin)}
    assert (listed["pc01"].game_image, listed["pc01"].boot_mode, listed["pc01"].image) == ("games", "uefi", None)
    assert listed["pc02"].game_image is None


async def current_boot(core: Core, name: str) -> tuple[str, str | None, str | None] | None:
    async with core.db.session() as session:
        boot = (
            (await session.execute(select(Boot).where(Boot.machine_name == name).order_by(Boot.id.desc())))
            .scalars()
            .first()
        )
    return None if boot is None else (boot.state, boot.end_reason, boot.ended_by)


async def test_disabling_a_machine_ends_its_current_boot(core: Core, admin: Actor) -> None:
    """A machine that may no longer boot loses its running boot: the engine removes its target (its
    client's next login, the OS's from the iBFT, is refused: tests/e2e/test_osphase_tgt.py)."""
    for name, mac in (("pc01", "52:54:00:00:00:01"), ("pc02", "52:54:00:00:00:02")):
        view = await machines.add_machine(core, admin, name=name, mac=mac)
        async with core.db.transaction() as session:
            session.add(Boot(server=core.settings.server_name, machine_id=view.id, machine_name=name, mac=mac,
                             origin="pc", policy="fresh", state="ready", chap_secret=machines.new_chap_secret()))  # fmt: skip
    await machines.update_machine(core, admin, "pc01", notes="nothing about booting")
    assert await current_boot(core, "pc01") == ("ready", None, None)
    await machines.update_machine(core, admin, "pc01", boot_enabled=False)
    assert await current_boot(core, "pc01") == ("ending", "disabled", "root-admin")
    assert await current_boot(core, "pc02") == ("ready", None, None)  # the others keep theirs
    await machines.update_machine(core, admin, "pc01", boot_enabled=True)
    assert await current_boot(core, "pc01") == ("ending", "disabled", "root-admin")  # enabling starts nothing
