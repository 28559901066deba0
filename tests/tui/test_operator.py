"""What an operator expects of the console (issue 9, part 2), driven through Pilot on a real SQLite
database and real core services: a machine's details, discovered PCs, sorting and columns kept
between runs, imports as background jobs, one palette for every screen, the doctor's findings as
dashboard alerts, asking before disabling a user, the whole machine form in one call."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from textual.command import CommandPalette
from textual.widgets import SelectionList, Static

from core.enums import BootState, MachineStatus, Role, WritebackPolicy
from core.models import Boot, EngineRequest, MachineObservation
from core.services import boots, images, machines, users
from ggnet_tui.prefs import Prefs
from ggnet_tui.screens.modals import ColumnsScreen, ConfirmScreen, FormScreen, TextScreen
from tests.conftest import make_user
from tests.tui.helpers import fill, log_in, make_app, random_disk, wait_for


def screen_name(app) -> str:
    return type(app.screen).__name__


def notes_of(app) -> list[str]:
    shown: list[str] = []
    notify = app.notify
    app.notify = lambda message, **kw: (shown.append(message), notify(message, **kw))  # type: ignore[method-assign]
    return shown


async def logged_in(pilot, user: str = "root-admin") -> None:
    await log_in(pilot, user)
    await wait_for(pilot, lambda: pilot.app.actor and screen_name(pilot.app) == "DashboardScreen")


async def go(pilot, key: str, name: str) -> None:
    await pilot.press(key)
    await wait_for(pilot, lambda: screen_name(pilot.app) == name and pilot.app.screen.refreshes)


async def form_open(pilot) -> None:
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, FormScreen) and pilot.app.screen.query("#save"))


async def choose(pilot, selector: str, value: str) -> None:
    from textual.widgets import Select

    pilot.app.screen.query_one(selector, Select).value = value
    await pilot.pause()


# --- a machine's details ---------------------------------------------------------------


T0 = datetime(2026, 3, 14, 8, 0, tzinfo=UTC)


async def details_of_the_first_machine(pilot, rows: int):
    """Log in, go to Machines and open the first machine's details, once its ``rows`` boots show."""
    app = pilot.app
    await logged_in(pilot)
    await go(pilot, "2", "MachinesScreen")
    await pilot.press("enter")
    await wait_for(pilot, lambda: screen_name(app) == "MachineDetailsScreen" and app.screen.table.row_count == rows)
    return app.screen


async def record_boots(core, admin, machine: str, count: int, **last: object) -> None:
    """Boots as the engine records them (ended ones, then the latest with ``last``'s fields)."""
    view = await machines.get_machine(core, admin, machine)
    async with core.db.transaction() as session:
        for i in range(count):
            at = T0 + timedelta(minutes=i)
            fields = dict(
                server=core.settings.server_name,
                machine_id=view.id,
                machine_name=view.name,
                mac=view.mac,
                origin="pc",
                requested_at=at,
                requested_by="pc",
                client_address="10.0.0.21",
                policy="fresh",
                state=BootState.ENDED.value,
                login_at=at + timedelta(seconds=12),
                login_address="10.0.0.21",
                ended_at=at + timedelta(seconds=50),
                end_reason="superseded",
            )
            if i == count - 1:
                fields.update(last)
            session.add(Boot(**fields))


async def observe(core, admin, machine: str, **values: object) -> None:
    """What the engine's observation step writes for a machine."""
    view = await machines.get_machine(core, admin, machine)
    async with core.db.transaction() as session:
        await session.merge(MachineObservation(machine_id=view.id, server=core.settings.server_name, **values))


async def test_details_show_the_boot_history_disk_and_io_rates(fast_settings, tmp_path):
    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    await images.import_image(core, admin, random_disk(tmp_path / "d.raw", 1), name="desk")
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:aa:00:01", image="desk")
    await machines.update_machine(core, admin, "pc01", writeback_policy="keep")
    await machines.add_machine(core, admin, name="pc02", mac="52:54:00:aa:00:02")
    await record_boots(
        core,
        admin,
        "pc01",
        3,
        state=BootState.FAILED.value,
        error="12 MiB free, 10240 MiB reserved",
        login_at=None,
        ended_at=None,
        end_reason=None,
    )
    seen = datetime.now(UTC)
    await observe(
        core,
        admin,
        "pc01",
        status=MachineStatus.FAILED.value,
        detail="12 MiB free, 10240 MiB reserved",
        read_bytes=100 << 20,
        written_bytes=10 << 20,
        writeback_bytes=3 << 30,
        observed_at=seen,
    )
    app = make_app(core)
    app.clock = lambda: datetime.now(UTC)
    async with app.run_test(size=(120, 40)) as pilot:
        await details_of_the_first_machine(pilot, rows=3)
        screen = app.screen
        summary = str(screen.query_one("#summary", Static).render())
        assert "failed: 12 MiB free, 10240 MiB reserved" in summary
        assert "keep, writeback 3.0 GiB" in summary and "desk" in summary
        assert "read 100.0 MiB" in summary and "written 10.0 MiB" in summary
        newest, *older = [screen.table.rows_by_key[k] for k in screen.table.order]
        assert str(newest["outcome"]) == "failed: 12 MiB free, 10240 MiB reserved"
        assert [o["login"] for o in older] == ["12 s", "12 s"] and older[0]["client"] == "10.0.0.21"
        assert str(older[0]["outcome"]) == "ended (superseded)"
        assert screen.sub_title == "3 boots"

        # the engine counts 20 MiB more read and 4 MiB more written over 2 s: 10 MiB/s and 2 MiB/s
        await observe(
            core,
            admin,
            "pc01",
            status=MachineStatus.FAILED.value,
            detail="12 MiB free, 10240 MiB reserved",
            read_bytes=120 << 20,
            written_bytes=14 << 20,
            writeback_bytes=3 << 30,
            observed_at=seen + timedelta(seconds=2),
        )
        await wait_for(pilot, lambda: "(10.0 MiB/s)" in str(screen.query_one("#summary", Static).render()))
        assert "written 14.0 MiB (2.0 MiB/s)" in str(screen.query_one("#summary", Static).render())

        await pilot.press("enter")  # everything about the boot under the cursor (the newest)
        await wait_for(pilot, lambda: isinstance(app.screen, TextScreen))
        assert "12 MiB free, 10240 MiB reserved" in str(app.screen.body)
        await pilot.press("escape")
        await pilot.press("escape")  # back to the machines
        await wait_for(pilot, lambda: screen_name(app) == "MachinesScreen")

        # the next machine's details: pc02's (empty) history
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: screen_name(app) == "MachineDetailsScreen" and app.screen.machine is not None)
        other = app.screen
        assert other.machine.name == "pc02" and other.table.row_count == 0
        assert "Machine pc02" in str(other.query_one("StatusHeader").render())
        assert "no target" in str(other.query_one("#summary", Static).render())


async def test_one_details_screen_serves_every_machine_and_goes_at_logout(fast_settings, tmp_path):
    """Kept between openings (composing it again cost more than its history): another machine's
    rows never show under this one's name, a read begun for the previous machine is dropped, and
    the next user gets a fresh screen."""
    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    for n in (1, 2):
        await machines.add_machine(core, admin, name=f"pc0{n}", mac=f"52:54:00:aa:00:0{n}")
    await record_boots(core, admin, "pc01", 3)
    app = make_app(core)
    async with app.run_test(size=(120, 40)) as pilot:
        await details_of_the_first_machine(pilot, rows=3)
        first = app.screen
        stale = await first.fetch()  # as a read of pc01 that ends after the screen turned to pc02
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen_name(app) == "MachinesScreen")
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: app.screen is first and first.machine is not None)
        assert first.machine.name == "pc02" and first.table.row_count == 0
        assert "Machine pc02" in str(first.query_one("StatusHeader").render())
        first.show(stale)
        assert first.machine.name == "pc02" and first.table.row_count == 0

        await app.log_out("Logged out.")
        await details_of_the_first_machine(pilot, rows=3)
        assert app.screen is not first and not first.is_attached


async def test_another_machines_details_open_at_its_newest_boot(fast_settings, tmp_path):
    """The screen turns to the next machine in one step (its rows replace the last machine's):
    the cursor and the view are back at the top, on that machine's newest boot."""
    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    for n in (1, 2):
        await machines.add_machine(core, admin, name=f"pc0{n}", mac=f"52:54:00:aa:00:0{n}")
    await record_boots(core, admin, "pc01", 80)
    await record_boots(core, admin, "pc02", 5, client_address="10.0.0.99", login_address="10.0.0.99")
    app = make_app(core)
    async with app.run_test(size=(120, 40)) as pilot:
        await details_of_the_first_machine(pilot, rows=80)
        screen = app.screen
        await pilot.press("end")  # the oldest boot, scrolled far down
        await wait_for(pilot, lambda: screen.table.cursor_row == 79 and screen.table.scroll_y > 0)
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen_name(app) == "MachinesScreen")
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: app.screen is screen and screen.machine is not None)
        table = screen.table
        assert screen.machine.name == "pc02" and table.row_count == 5
        assert table.cursor_row == 0 and table.scroll_y == 0
        assert table.rows_by_key[table.cursor_key]["client"] == "10.0.0.99"  # pc02's newest boot
        assert screen.sub_title == "5 boots"


async def test_an_unexpected_error_reading_another_machines_details_keeps_the_console(
    fast_settings, tmp_path, monkeypatch
):
    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    for n in (1, 2):
        await machines.add_machine(core, admin, name=f"pc0{n}", mac=f"52:54:00:aa:00:0{n}")
    from core.services import boots

    real = boots.machine_details

    async def failing(core_, actor, name, limit=1000):
        if name == "pc02":
            raise RuntimeError("the disk went away")
        return await real(core_, actor, name, limit=limit)

    monkeypatch.setattr(boots, "machine_details", failing)
    app = make_app(core)
    async with app.run_test(size=(120, 40)) as pilot:
        await logged_in(pilot)
        await go(pilot, "2", "MachinesScreen")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen_name(app) == "MachineDetailsScreen" and app.screen.machine is not None)
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen_name(app) == "MachinesScreen")
        await pilot.press("down", "enter")  # pc02: its read fails before and after the screen comes back
        await wait_for(pilot, lambda: screen_name(app) == "MachineDetailsScreen" and app.screen.refreshes >= 2)
        assert app.is_running and app.screen.machine is None and app.screen.machine_name == "pc02"
        assert "incident" in str(app.screen.query_one("#notice").render()).lower()


async def test_details_maintenance_apply_without_activating_with_a_note_then_discard(fast_settings, tmp_path):
    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    await images.import_image(core, admin, random_disk(tmp_path / "d.raw", 1), name="desk")
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:aa:00:01", image="desk")
    from core.models import Writeback

    app = make_app(core)
    shown = notes_of(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await logged_in(pilot)
        await go(pilot, "2", "MachinesScreen")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen_name(app) == "MachineDetailsScreen" and app.screen.refreshes)
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: any("is in maintenance" in m for m in shown))
        assert (await machines.get_machine(core, admin, "pc01")).writeback_policy == WritebackPolicy.MAINTENANCE

        # as if it had booted once in maintenance: the engine keeps its writeback
        view = await machines.get_machine(core, admin, "pc01")
        async with core.db.transaction() as session:
            session.add(
                Writeback(
                    server=core.settings.server_name,
                    machine_id=view.id,
                    disk="system",
                    file_name="wb-maint.raw",
                    state="ready",
                    retained=True,
                )
            )
        await pilot.press("A")
        await form_open(pilot)
        await choose(pilot, "#f-activate", "no")
        await fill(pilot, "#f-notes", "GPU driver 551.23")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: any("apply pc01's maintenance" in m for m in shown))
        async with core.db.session() as session:
            from sqlalchemy import select

            request = (await session.execute(select(EngineRequest))).scalar_one()
        assert request.params["activate"] is False and request.params["notes"] == "GPU driver 551.23"
        job = app.jobs.all[0]
        assert job.doing == "waiting for the engine"  # no engine runs in this test

        await pilot.press("D")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: any("maintenance ended" in m for m in shown))
    assert (await machines.get_machine(core, admin, "pc01")).writeback_policy == WritebackPolicy.FRESH


async def test_history_of_a_thousand_boots_says_how_many(core):  # on SQLite and PostgreSQL
    admin = await make_user(core, "root-admin", Role.ADMIN)
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:aa:00:01")
    await record_boots(core, admin, "pc01", 1005)
    details = await boots.machine_details(core, admin, "pc01", limit=1000)
    assert details.boots_total == 1005 and len(details.boots) == 1000
    assert details.boots[0].requested_at > details.boots[-1].requested_at  # newest first
    await machines.add_machine(core, admin, name="pc02", mac="52:54:00:aa:00:02")
    await record_boots(core, admin, "pc02", 3)
    for limit, shown in ((2, 2), (3, 3), (4, 3)):  # fewer, as many as and more than the history holds
        details = await boots.machine_details(core, admin, "pc02", limit=limit)
        assert details.boots_total == 3 and len(details.boots) == shown
    # the details' history is the history's views, newest first
    assert details.boots == await boots.boot_history(core, admin, "pc02")


# --- discovered PCs ---------------------------------------------------------------------


async def ask_to_boot(core, macs: list[str]) -> None:
    """Unknown PCs asking the real engine for their script (no target stack is needed for that)."""
    from core.engine.engine import Engine

    core.settings.target_backend = "tgt"
    core.settings.tgt_control_port = 32000  # nothing listens there: never a system tgtd
    engine = Engine(core, mode="once")
    for i, mac in enumerate(macs):
        answer = await engine.boot_request(mac, f"10.0.0.{50 + i}")
        assert answer.state == "unregistered"
    await engine.close()


async def test_discovered_pcs_adopted_in_bulk_all_or_none_and_forgotten(fast_settings, tmp_path):
    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    await images.import_image(core, admin, random_disk(tmp_path / "d.raw", 1), name="desk")
    await machines.add_machine(core, admin, name="pc08", mac="52:54:00:aa:00:08")
    await ask_to_boot(core, ["52:54:00:bb:00:01", "52:54:00:bb:00:02", "52:54:00:bb:00:03"])
    app = make_app(core)
    shown = notes_of(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await logged_in(pilot)
        dashboard = app.screen
        await wait_for(
            pilot,
            lambda: any(
                "3 unknown PC(s) asked to boot" in str(r["alert"])
                for r in dashboard.query_one("#alerts").rows_by_key.values()
            ),
        )
        await go(pilot, "9", "DiscoveredScreen")
        table = app.screen.table
        await wait_for(pilot, lambda: table.row_count == 3)
        assert table.rows_by_key["52:54:00:bb:00:02"]["address"] == "10.0.0.51"
        assert table.order[0] == "52:54:00:bb:00:03"  # the latest to ask first
        first, second = table.order[:2]
        await pilot.press("space", "space")  # marks the first two (the cursor moves down)

        # pc07, pc08: pc08 exists, so neither is adopted
        await pilot.press("a")
        await form_open(pilot)
        await fill(pilot, "#f-first", "7")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "pc08" in str(app.screen.query_one("#form-error", Static).render()))
        assert [m.name for m in await machines.list_machines(core, admin)] == ["pc08"]
        await fill(pilot, "#f-first", "10")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: any(m.startswith("Adopted 2") for m in shown))
        await wait_for(pilot, lambda: screen_name(app) == "DiscoveredScreen" and table.row_count == 1)
        adopted = {m.name: m for m in await machines.list_machines(core, admin)}
        assert sorted(adopted) == ["pc08", "pc10", "pc11"]
        assert (adopted["pc10"].mac, adopted["pc11"].mac) == (first, second) and adopted["pc10"].image == "desk"

        await pilot.press("ctrl+d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: screen_name(app) == "DiscoveredScreen" and table.row_count == 0)
    assert await boots.discovered(core, admin) == []


# --- sorting and columns ------------------------------------------------------------------


async def test_sort_by_any_column_and_chosen_columns_are_remembered(fast_settings):
    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    for name, ip in (("pc01", "10.0.0.21"), ("pc02", "10.0.0.9"), ("pc10", "10.0.0.100")):
        await machines.add_machine(core, admin, name=name, mac=f"52:54:00:aa:00:{name[-2:]}", ip=ip)
    app = make_app(core)
    async with app.run_test(size=(120, 40)) as pilot:
        await logged_in(pilot)
        await go(pilot, "2", "MachinesScreen")
        table = app.screen.table
        await wait_for(pilot, lambda: table.row_count == 3)
        await pilot.press("O")  # reverse the first column: names descending
        await wait_for(pilot, lambda: table.order == ["pc10", "pc02", "pc01"])
        ip_x = sum(table.widths[c.key] + 2 for c in table.shown[: [c.key for c in table.shown].index("ip")]) + 1
        await pilot.click(table, offset=(ip_x, 0))  # the IP header: numbers in their order, not as text
        await wait_for(pilot, lambda: table.order == ["pc02", "pc01", "pc10"])
        assert "IP ▲" in table.render_line(0).text
        await pilot.click(table, offset=(ip_x, 0))
        await wait_for(pilot, lambda: table.order == ["pc10", "pc01", "pc02"])

        await pilot.press("C")
        await wait_for(pilot, lambda: isinstance(app.screen, ColumnsScreen))
        choices = app.screen.query_one(SelectionList)
        choices.deselect("mac")
        choices.select("read")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: screen_name(app) == "MachinesScreen")
        assert "mac" in table.hidden and "read" not in table.hidden
        assert "MAC" not in table.render_line(0).text and "Read" in table.render_line(0).text

    saved = Prefs()
    assert saved.sort("machines") == ("ip", True)
    assert "mac" not in saved.columns("machines") and "read" in saved.columns("machines")

    again = make_app(core)  # the next run of the console
    async with again.run_test(size=(120, 40)) as pilot:
        await logged_in(pilot)
        await go(pilot, "2", "MachinesScreen")
        table = again.screen.table
        await wait_for(pilot, lambda: table.row_count == 3)
        assert table.order == ["pc10", "pc01", "pc02"] and "mac" in table.hidden


# --- background jobs and the file picker -------------------------------------------------------


async def test_import_runs_as_a_job_console_stays_usable_checksum_shown_cancel_leaves_nothing(
    fast_settings, tmp_path, monkeypatch
):
    from core.storage import qemu_img
    from ggnet_tui.screens.images import ImportDialog

    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    files = tmp_path / "isos"
    files.mkdir()
    core.settings.import_dir = files
    source = random_disk(files / "win11.raw", 8)
    (files / "readme.txt").write_text("not a disk")
    # hold the import after 100 %, while it hashes the last part of the disk, until the test has
    # looked (the hashing runs in a thread: a threading.Event holds it)
    hashing, release = threading.Event(), threading.Event()
    real_hash = qemu_img._hash_window

    def held_hash(*args):
        hashing.set()
        release.wait(60)
        return real_hash(*args)

    monkeypatch.setattr(qemu_img, "_hash_window", held_hash)
    app = make_app(core)
    shown = notes_of(app)
    async with app.run_test(size=(80, 24)) as pilot:
        await logged_in(pilot)
        await go(pilot, "3", "ImagesScreen")
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, ImportDialog) and app.screen.query("#tree"))
        tree = app.screen.query_one("#tree")
        assert Path(tree.path) == files  # GGNET_IMPORT_DIR on the first import
        await wait_for(pilot, lambda: tree.root.children)
        assert [n.label.plain for n in tree.root.children] == ["win11.raw"]  # disk images only
        await fill(pilot, "#path", source)
        await fill(pilot, "#name", "win11")
        await fill(pilot, "#notes", "first cut")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen_name(app) == "ImagesScreen" and app.jobs.all)
        job = app.jobs.all[0]

        await wait_for(pilot, lambda: hashing.is_set() and job.percent == 100)
        await go(pilot, "2", "MachinesScreen")  # the console goes on while the job runs
        await go(pilot, "0", "JobsScreen")
        row = lambda: app.screen.table.rows_by_key[str(job.id)]  # noqa: E731
        await wait_for(pilot, lambda: str(row()["progress"]) == "computing the checksum")
        assert row()["left"] == "-" and job.percent == 100

        await pilot.press("q")  # quitting asks while a job runs
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "1 job(s) still running" in str(app.screen.question)
        await pilot.press("n")
        release.set()
        await wait_for(pilot, lambda: job.state == "done")
        await wait_for(pilot, lambda: "imported win11 version 1" in str(row()["result"]))
        assert any("imported win11 version 1" in m for m in shown)

        # a second import from another directory, cancelled on the Jobs screen while converting
        other = tmp_path / "more"
        other.mkdir()
        started, go_on = asyncio.Event(), asyncio.Event()
        real_convert = qemu_img.convert_to_raw

        async def held_convert(*args, **kwargs):
            started.set()
            await go_on.wait()
            return await real_convert(*args, **kwargs)

        monkeypatch.setattr(qemu_img, "convert_to_raw", held_convert)
        files_before = sorted(p.name for p in core.settings.data_dir.rglob("*") if p.is_file())
        await go(pilot, "3", "ImagesScreen")
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, ImportDialog) and app.screen.query("#tree"))
        assert Path(app.screen.query_one("#tree").path) == files  # the last directory used
        await fill(pilot, "#path", random_disk(other / "game.raw", 4))
        await fill(pilot, "#name", "game")
        await pilot.press("enter")
        await wait_for(pilot, lambda: started.is_set())
        second = app.jobs.all[0]
        await go(pilot, "0", "JobsScreen")
        await wait_for(pilot, lambda: app.screen.table.cursor_key is not None)
        app.screen.table.move_cursor(app.screen.table.get_row_index(str(second.id)))
        await pilot.press("x")
        assert second.cancel.is_set()
        go_on.set()
        await wait_for(pilot, lambda: second.state == "cancelled" and app.busy == 0)
    assert Prefs().import_dir == str(other)
    listed = await images.list_images(core, admin)
    assert [i.name for i in listed] == ["win11"]
    assert [v.notes for v in await images.list_versions(core, admin, "win11")] == ["first cut"]
    assert sorted(p.name for p in core.settings.data_dir.rglob("*") if p.is_file()) == files_before


def test_typed_path_completes_to_directories_and_disk_images(tmp_path):
    from ggnet_tui.screens.images import complete_path

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "win11.vhdx").write_bytes(b"")
    (tmp_path / "images" / "win11.txt").write_text("")
    assert complete_path(f"{tmp_path}/ima") == f"{tmp_path}/images/"
    assert complete_path(f"{tmp_path}/images/w") == f"{tmp_path}/images/win11.vhdx"
    assert complete_path(f"{tmp_path}/nothing-here") is None


# --- one palette --------------------------------------------------------------------------------


async def test_palette_finds_and_runs_commands_of_other_screens(fast_settings):
    from ggnet_tui.screens.images import ImportDialog

    core = fast_settings
    await make_user(core, "root-admin", Role.ADMIN)
    await make_user(core, "vera", Role.VIEWER)
    app = make_app(core)
    async with app.run_test(size=(80, 24)) as pilot:
        await logged_in(pilot)
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"import image")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ImportDialog))
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen_name(app) == "ImagesScreen")

    from ggnet_tui.app import CommandTable

    viewer = make_app(core)
    async with viewer.run_test(size=(80, 24)) as pilot:
        await logged_in(pilot, "vera")
        provider = CommandTable(viewer.screen)
        labels = [provider._label(c) for c, _mode in provider._commands()]
        assert "Discovered: Mark" in labels and "Jobs: Cancel" in labels and "Machines: Add" not in labels


# --- the doctor on the dashboard -----------------------------------------------------------------


async def test_dashboard_shows_the_doctors_findings_with_the_fix_and_alerts_can_be_acknowledged(fast_settings):
    from core import doctor

    core = fast_settings
    await make_user(core, "root-admin", Role.ADMIN)
    admin = await users.login(core, "root-admin", "correct-horse-1")
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:aa:00:01", boot_mode="uefi")
    app = make_app(core)
    app.disk_usage = lambda _path: SimpleNamespace(free=1 << 30, total=100 << 30)
    async with app.run_test(size=(120, 40)) as pilot:
        await logged_in(pilot)
        table = app.screen.query_one("#alerts")
        texts = lambda: [str(r["alert"]) for r in table.rows_by_key.values()]  # noqa: E731
        await wait_for(pilot, lambda: any("tftp root" in t for t in texts()))
        said = texts()
        # what ggnet doctor says, with its fix: no engine, no TFTP root, little space
        assert any("no boot engine runs" in t and "systemctl start ggnet" in t for t in said)
        assert any("run ggnet boot render" in t for t in said)
        space = doctor.free_space_check(core.settings.data_dir, 1 << 30, 100 << 30)
        assert space.status == "fail" and any(space.detail in t for t in said)  # one meaning of "low disk"

        key = next(k for k, r in table.rows_by_key.items() if "tftp root" in str(r["alert"]))
        table.move_cursor(table.get_row_index(key))
        await pilot.press("k")
        await wait_for(pilot, lambda: not any("tftp root" in t for t in texts()))
        assert app.screen.sub_title == "1 alert(s) acknowledged"
        app.screen.action_refresh_now()
        await wait_for(pilot, lambda: app.screen.settled)
        assert not any("tftp root" in t for t in texts())  # stays hidden while its cause is the same


# --- users, and the machine form ------------------------------------------------------------------


async def test_disabling_a_user_asks_first(fast_settings):
    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    await make_user(core, "oscar", Role.OPERATOR)
    app = make_app(core)
    async with app.run_test(size=(80, 24)) as pilot:
        await logged_in(pilot)
        await go(pilot, "6", "UsersScreen")
        table = app.screen.table
        await wait_for(pilot, lambda: "oscar" in table.rows_by_key)
        table.move_cursor(table.get_row_index("oscar"))
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await wait_for(pilot, lambda: screen_name(app) == "UsersScreen")
        assert not (await users.get_user(core, admin, "oscar")).disabled
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: str(table.rows_by_key["oscar"]["state"]) == "disabled")
    assert (await users.get_user(core, admin, "oscar")).disabled


async def test_machine_form_sets_may_boot_policy_and_images_in_one_call(fast_settings, tmp_path):
    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    await images.import_image(core, admin, random_disk(tmp_path / "d.raw", 1), name="desk")
    await images.import_image(core, admin, random_disk(tmp_path / "g.raw", 1), name="steam", kind="game")
    app = make_app(core)
    async with app.run_test(size=(120, 40)) as pilot:
        await logged_in(pilot)
        await go(pilot, "2", "MachinesScreen")
        await pilot.press("a")
        await form_open(pilot)
        await fill(pilot, "#f-name", "pc01")
        await fill(pilot, "#f-mac", "52:54:00:aa:00:01")
        await choose(pilot, "#f-boot_enabled", "no")
        await choose(pilot, "#f-writeback_policy", "keep")
        await choose(pilot, "#f-image", "desk")
        await choose(pilot, "#f-game_image", "steam")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: screen_name(app) == "MachinesScreen")
        added = await machines.get_machine(core, admin, "pc01")
        assert (added.boot_enabled, added.writeback_policy, added.image, added.game_image) == (
            False,
            "keep",
            "desk",
            "steam",
        )
        await wait_for(pilot, lambda: "pc01" in app.screen.table.rows_by_key)

        # a version that is not a number is refused under its field, and nothing changes
        await pilot.press("e")
        await form_open(pilot)
        await choose(pilot, "#f-boot_enabled", "yes")
        await fill(pilot, "#f-pin_version", "newest")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "version number" in str(app.screen.query_one("#e-pin_version").render()))
        assert not (await machines.get_machine(core, admin, "pc01")).boot_enabled
        await fill(pilot, "#f-pin_version", "v1")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: screen_name(app) == "MachinesScreen")
    changed = await machines.get_machine(core, admin, "pc01")
    assert changed.boot_enabled and changed.pinned_version == 1


async def test_adding_a_machine_with_an_unknown_image_adds_nothing(fast_settings):
    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    with pytest.raises(Exception, match="no image named 'nope'"):
        await machines.add_machine(core, admin, name="pc01", mac="52:54:00:aa:00:01", image="nope")
    assert await machines.list_machines(core, admin) == []


# --- the engine's truth (issue 9 part 1, now that the engine records it) --------------------------


async def test_failed_boot_then_good_boot_clears_it_added_machine_boots_deleted_machine_keeps_history(tgtd_site):
    """On a private tgtd with the real engine: a refused boot shows pc01 failed with the reason (an
    alert that can be acknowledged); its next good boot clears both. A machine added in the console
    boots at once (no boot files to render); deleted, its boots stay in the history."""
    from core.engine.engine import Engine
    from ggnet_tui.screens.modals import FormScreen as Form

    core, admin, _daemon = tgtd_site
    core.settings.target_backend = "tgt"
    core.settings.boot_address = "10.0.2.2"
    core.settings.observe_seconds = 0.2
    core.settings.converge_seconds = 0.5  # a refusal shows at the engine's next pass
    core.settings.reserved_space = 1 << 60  # no disk has that much: boots are refused
    engine = Engine(core, mode="embedded")
    assert await engine.lock.acquire()
    await engine.start()
    running = asyncio.create_task(engine.run_forever())
    app = make_app(core)
    shown = notes_of(app)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await logged_in(pilot)
            refused = await engine.boot_request("52:54:00:aa:00:01", "10.0.0.21")
            assert refused.state == "refused"
            dashboard = app.screen
            alerts = dashboard.query_one("#alerts")
            pc01_alert = lambda: [k for k in alerts.rows_by_key if k.startswith("failed:pc01:")]  # noqa: E731
            await wait_for(pilot, lambda: pc01_alert() and dashboard.settled)
            assert "MiB reserved" in str(alerts.rows_by_key[pc01_alert()[0]]["alert"])
            alerts.move_cursor(alerts.get_row_index(pc01_alert()[0]))
            await pilot.press("k")
            await wait_for(pilot, lambda: not pc01_alert())
            await go(pilot, "2", "MachinesScreen")
            rows = app.screen.table.rows_by_key
            await wait_for(pilot, lambda: str(rows["pc01"]["status"]) == "failed")

            core.settings.reserved_space = 1 << 20
            ready = await engine.boot_request("52:54:00:aa:00:01", "10.0.0.21")
            assert ready.state == "ready"
            await wait_for(pilot, lambda: str(app.screen.table.rows_by_key["pc01"]["status"]) == "booting")
            assert (await machines.get_machine(core, admin, "pc01")).status == MachineStatus.BOOTING
            await go(pilot, "1", "DashboardScreen")
            await wait_for(
                pilot, lambda: app.screen.settled and not any(k.startswith("failed:") for k in app.screen.alerts)
            )
            assert not app.acknowledged  # the cause went: a later failure is a new alert

            # added in the console, it boots at once
            await go(pilot, "2", "MachinesScreen")
            await pilot.press("a")
            await wait_for(pilot, lambda: isinstance(app.screen, Form) and app.screen.query("#save"))
            await fill(pilot, "#f-name", "pc02")
            await fill(pilot, "#f-mac", "52:54:00:aa:00:02")
            await choose(pilot, "#f-image", "disk")
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: "pc02" in app.screen.table.rows_by_key)
            answer = await engine.boot_request("52:54:00:aa:00:02", "10.0.0.22")
            assert answer.state == "ready" and "sanboot" in answer.script

            # taken offline and deleted: its boot stays in the history
            table = app.screen.table
            table.move_cursor(table.get_row_index("pc02"))
            await pilot.press("x")
            await wait_for(pilot, lambda: "taken offline 1" in shown)
            await pilot.press("ctrl+d")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await wait_for(pilot, lambda: "pc02" not in app.screen.table.rows_by_key)
            await go(pilot, "4", "SessionsScreen")
            await pilot.press("h")
            await wait_for(pilot, lambda: any(r["machine"] == "pc02" for r in app.screen.table.rows_by_key.values()))
    finally:
        engine.stop()
        await running
        await engine.close()
    history = await boots.boot_history(core, admin)
    assert "pc02" in {b.machine for b in history}


async def test_details_prepare_offline_and_reset_a_kept_disk(fast_settings, tmp_path):
    from sqlalchemy import select

    from core.models import Writeback

    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    await images.import_image(core, admin, random_disk(tmp_path / "d.raw", 1), name="desk")
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:aa:00:01", image="desk", writeback_policy="keep")
    view = await machines.get_machine(core, admin, "pc01")
    async with core.db.transaction() as session:
        session.add(
            Writeback(
                server=core.settings.server_name,
                machine_id=view.id,
                disk="system",
                file_name="wb-kept.raw",
                state="ready",
                retained=True,
            )
        )
    app = make_app(core)
    shown = notes_of(app)
    async with app.run_test(size=(120, 40)) as pilot:
        await logged_in(pilot)
        await go(pilot, "2", "MachinesScreen")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen_name(app) == "MachineDetailsScreen" and app.screen.refreshes)
        details = app.screen
        await pilot.press("s")
        await wait_for(pilot, lambda: details.table.row_count == 1)
        assert str(next(iter(details.table.rows_by_key.values()))["outcome"]) == "requested"
        await pilot.press("x")
        await wait_for(pilot, lambda: "taken offline 1" in shown)
        await wait_for(pilot, lambda: "ending" in str(next(iter(details.table.rows_by_key.values()))["outcome"]))
        await pilot.press("W")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: any("writeback reset (1 dropped)" in m for m in shown))
    async with core.db.session() as session:
        kept = (await session.execute(select(Writeback))).scalar_one()
    assert kept.state == "discard"  # the engine removes it; the next boot starts from the image
