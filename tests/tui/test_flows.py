"""The console's flows driven through Pilot on a real SQLite database and real core services."""

from __future__ import annotations

import asyncio
import socket

import pytest
from textual.command import CommandPalette
from textual.widgets import Static

from core.models import Role
from core.services import audit, machines, users
from core.services import boots as boots_service
from ggnet_tui.screens.modals import ConfirmScreen, FormScreen
from tests.conftest import make_user
from tests.tui.helpers import PASSWORD, FakeProbe, fill, log_in, make_app, message, random_disk, type_text, wait_for


def screen_name(app) -> str:
    return type(app.screen).__name__


def field_error(app, name: str) -> str:
    return str(app.screen.query_one(f"#e-{name}", Static).render())


async def test_first_run_creates_the_admin(fast_settings):
    core = fast_settings
    app = make_app(core)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: screen_name(app) == "FirstRunScreen" and app.screen.query("#again"))
        await fill(pilot, "#username", "boss", typed=True)
        await fill(pilot, "#password", PASSWORD, typed=True)
        await fill(pilot, "#again", "something-else-1")
        await pilot.press("enter")
        await wait_for(pilot, lambda: "differ" in message(app))
        assert await users.count_users(core) == 0
        await fill(pilot, "#again", PASSWORD)
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen_name(app) == "DashboardScreen")
        assert app.actor.username == "boss" and app.actor.role == Role.ADMIN
    assert await users.count_users(core) == 1


async def test_login_failure_then_success(fast_settings):
    core = fast_settings
    await make_user(core, "oscar", Role.OPERATOR)
    app = make_app(core)
    async with app.run_test(size=(80, 24)) as pilot:
        await log_in(pilot, "oscar", "wrong-password-9")
        await wait_for(pilot, lambda: "wrong user name or password" in message(app))
        assert app.actor is None and screen_name(app) == "LoginScreen"
        assert app.screen.query_one("#password").password  # masked
        await log_in(pilot, "oscar")
        await wait_for(pilot, lambda: screen_name(app) == "DashboardScreen")
        assert app.actor.username == "oscar"
        header = str(app.screen.query_one("StatusHeader").render())
        assert "bootsrv" in header and "SQLite" in header and "oscar (operator)" in header and "target" in header


async def test_login_throttling_is_explained(fast_settings):
    core = fast_settings
    await make_user(core, "oscar", Role.OPERATOR)
    app = make_app(core)
    async with app.run_test(size=(80, 24)) as pilot:
        for attempt in range(4):  # three free failures, then the account must wait
            await log_in(pilot, "oscar", f"wrong-{attempt}-password")
            await wait_for(pilot, lambda: message(app) and "checking" not in message(app))
        assert "too many failed logins" in message(app) and "try again in" in message(app)
        assert app.actor is None


async def _machines_screen(pilot, app):
    await pilot.press("2")
    await wait_for(pilot, lambda: screen_name(app) == "MachinesScreen")


async def test_add_edit_delete_machine(fast_settings):
    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    app = make_app(core)
    async with app.run_test(size=(80, 24)) as pilot:
        await log_in(pilot, "root-admin")
        await wait_for(pilot, lambda: app.actor)
        await _machines_screen(pilot, app)
        # add, with a validation error first: the message sits next to the field, nothing is written
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, FormScreen) and app.screen.query("#save"))
        await fill(pilot, "#f-name", "pc01")
        await fill(pilot, "#f-mac", "not-a-mac")
        await pilot.press("enter")
        await wait_for(pilot, lambda: "MAC address" in field_error(app, "mac"))
        assert await machines.list_machines(core, admin) == []
        await fill(pilot, "#f-mac", "5254.00AA.0001", typed=True)
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen_name(app) == "MachinesScreen")
        await wait_for(pilot, lambda: "pc01" in app.screen.table.rows_by_key)
        assert (await machines.get_machine(core, admin, "pc01")).mac == "52:54:00:aa:00:01"

        # edit: a bad IP is refused inline, then a good one is saved
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, FormScreen) and app.screen.query("#save"))
        await fill(pilot, "#f-ip", "10.0.0.300")
        await pilot.press("enter")
        await wait_for(pilot, lambda: field_error(app, "ip"))
        assert (await machines.get_machine(core, admin, "pc01")).ip is None
        await fill(pilot, "#f-ip", "10.0.0.21")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen_name(app) == "MachinesScreen")
        await wait_for(pilot, lambda: app.screen.table.rows_by_key["pc01"]["ip"] == "10.0.0.21")
        assert (await machines.get_machine(core, admin, "pc01")).ip == "10.0.0.21"

        # delete asks first; "no" keeps it, "yes" removes it
        await pilot.press("ctrl+d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen.query("#yes"))
        await pilot.press("n")
        await wait_for(pilot, lambda: screen_name(app) == "MachinesScreen")
        assert len(await machines.list_machines(core, admin)) == 1
        await pilot.press("ctrl+d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen.query("#yes"))
        await pilot.press("y")
        await wait_for(pilot, lambda: not app.screen.table.rows_by_key)
        assert await machines.list_machines(core, admin) == []


async def test_bulk_wake_on_marked_rows(fast_settings):
    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    for i in range(1, 4):
        await machines.add_machine(core, admin, name=f"pc0{i}", mac=f"52:54:00:aa:00:0{i}")
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the "LAN": a loopback socket
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    core.settings.wol_address = f"127.0.0.1:{receiver.getsockname()[1]}"
    app = make_app(core)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await log_in(pilot, "root-admin")
            await wait_for(pilot, lambda: app.actor)
            await _machines_screen(pilot, app)
            await wait_for(pilot, lambda: len(app.screen.table.rows_by_key) == 3)
            await pilot.press("space")  # marks pc01, moves to pc02
            await pilot.press("down")  # skip pc02
            await pilot.press("space")  # marks pc03
            assert app.screen.marked == {"pc01", "pc03"}
            assert str(app.screen.table.rows_by_key["pc01"]["mark"]) == "*"
            await pilot.press("w")
            await wait_for(pilot, lambda: not app.screen.marked)
        packets = [receiver.recv(200) for _ in range(2)]
    finally:
        receiver.close()
    expected = [b"\xff" * 6 + bytes([0x52, 0x54, 0x00, 0xAA, 0x00, i]) * 16 for i in (1, 3)]
    assert packets == expected
    events, _ = await audit.list_events(core, admin, action="machine.wake")
    assert len(events) == 1 and events[0].after["woken"] == ["pc01", "pc03"]


async def test_viewer_sees_no_editing_actions_and_core_refuses_a_forced_one(fast_settings):
    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    await make_user(core, "vera", Role.VIEWER)
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:aa:00:01")
    app = make_app(core)
    async with app.run_test(size=(120, 40)) as pilot:
        await log_in(pilot, "vera")
        await wait_for(pilot, lambda: app.actor)
        await _machines_screen(pilot, app)
        shown = {b.binding.id for b in app.screen.active_bindings.values() if b.enabled}
        assert "machines.add" not in shown and "machines.delete" not in shown and "machines.mark" in shown
        await pilot.press("a")  # the key does nothing for a viewer
        await pilot.pause()
        assert screen_name(app) == "MachinesScreen"
        assert not app.check_action("go", ("users",))
        # forcing the action past the UI: the form opens, but core refuses the change
        app.screen.action_add()
        await wait_for(pilot, lambda: isinstance(app.screen, FormScreen) and app.screen.query("#save"))
        await fill(pilot, "#f-name", "pc02")
        await fill(pilot, "#f-mac", "52:54:00:aa:00:02")
        await pilot.press("enter")
        error = lambda: str(app.screen.query_one("#form-error", Static).render())  # noqa: E731
        await wait_for(pilot, lambda: "permission denied" in error())
        assert "may not manage machines" in error()
    assert [m.name for m in await machines.list_machines(core, admin)] == ["pc01"]


@pytest.mark.parametrize("change", ["disable", "password"])
async def test_disabled_user_or_new_password_returns_to_login_audited(fast_settings, change):
    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    await make_user(core, "oscar", Role.OPERATOR)
    app = make_app(core)
    async with app.run_test(size=(80, 24)) as pilot:
        await log_in(pilot, "oscar")
        await wait_for(pilot, lambda: screen_name(app) == "DashboardScreen")
        await _machines_screen(pilot, app)
        await pilot.press("a")  # in the middle of something
        await wait_for(pilot, lambda: isinstance(app.screen, FormScreen))
        if change == "disable":  # from another console
            await users.disable_user(core, admin, "oscar")
        else:
            await users.set_password(core, admin, "oscar", "another-horse-2")
        await wait_for(pilot, lambda: app.actor is None and screen_name(app) == "LoginScreen")
        await wait_for(pilot, lambda: "log in again" in message(app))
        assert "disabled, deleted or its password changed" in message(app)
        # the console goes on: the user name is kept and the password field has the focus
        assert app.screen.query_one("#username").value == "oscar"
        assert app.focused is app.screen.query_one("#password")
        await pilot.pause()
        assert app.is_running
    events, _ = await audit.list_events(core, admin, action="auth.logout")
    assert [e.actor for e in events] == ["oscar"]


async def test_keys_typed_in_one_burst_land_in_their_fields(fast_settings):
    """A password manager, a paste or tmux send-keys: user name, Tab, password, Enter arrive
    before the console has handled the first; the Tab must still move to the password field."""
    from textual import events

    core = fast_settings
    await make_user(core, "oscar", Role.OPERATOR)
    app = make_app(core)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.opened.is_set() and screen_name(app) == "LoginScreen")
        await pilot.pause()
        keys = [*"oscar", "tab", *PASSWORD, "enter"]
        for key in keys:  # posted all at once, no pause between them
            app.post_message(events.Key(key, {"tab": "\t", "enter": "\r"}.get(key, key)))
        await wait_for(pilot, lambda: screen_name(app) == "DashboardScreen")
        assert app.actor.username == "oscar"
        await pilot.press("ctrl+l")  # locked by the user, and it says so
        await wait_for(pilot, lambda: screen_name(app) == "LockScreen")
        assert "Locked by oscar." in " ".join(str(label.render()) for label in app.screen.query("Label"))
        assert "Idle" not in " ".join(str(label.render()) for label in app.screen.query("Label"))


async def test_idle_console_locks_and_unlocks(fast_settings):
    core = fast_settings
    core.settings.idle_lock_minutes = 0.01  # 0.6 s
    await make_user(core, "oscar", Role.OPERATOR)
    app = make_app(core)
    async with app.run_test(size=(80, 24)) as pilot:
        await log_in(pilot, "oscar")
        await wait_for(pilot, lambda: screen_name(app) == "LockScreen")
        await pilot.press("2")  # nothing behind the lock answers
        assert screen_name(app) == "LockScreen"
        await fill(pilot, "#password", "wrong-password-1")
        await pilot.press("enter")
        await wait_for(pilot, lambda: "wrong" in message(app))
        assert app.locked
        core.settings.idle_lock_minutes = 15
        await fill(pilot, "#password", PASSWORD)
        await pilot.press("enter")
        await wait_for(pilot, lambda: not app.locked and screen_name(app) == "DashboardScreen")


async def test_another_consoles_change_appears_and_cursor_stays(fast_settings):
    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    for name in ("pc02", "pc04"):
        await machines.add_machine(core, admin, name=name, mac=f"52:54:00:aa:00:{name[-2:]}")
    probe = FakeProbe()
    app = make_app(core, probe)
    async with app.run_test(size=(80, 24)) as pilot:
        await log_in(pilot, "root-admin")
        await wait_for(pilot, lambda: app.actor)
        await _machines_screen(pilot, app)
        table = app.screen.table
        await wait_for(pilot, lambda: table.order == ["pc02", "pc04"])
        await pilot.press("down")
        assert table.cursor_key == "pc04"
        # another operator adds a machine sorted above the cursor; a PC comes online
        await machines.add_machine(core, admin, name="pc01", mac="52:54:00:aa:00:01")
        probe.online = {"pc04"}
        await wait_for(pilot, lambda: table.order == ["pc01", "pc02", "pc04"])
        await wait_for(pilot, lambda: table.rows_by_key["pc04"]["status"].plain == "online")
        assert table.cursor_key == "pc04" and table.cursor_row == 2

        # hidden screens do not poll; shown again, they catch up at once
        machines_screen = app.screen
        await pilot.press("1")
        await wait_for(pilot, lambda: screen_name(app) == "DashboardScreen" and machines_screen.settled)
        polls = machines_screen.refreshes
        await pilot.pause(5 * core.settings.refresh_seconds)
        assert machines_screen.refreshes == polls
        await pilot.press("2")
        await wait_for(pilot, lambda: machines_screen.refreshes > polls)


async def test_keys_remapped_from_config_and_palette(fast_settings):
    core = fast_settings
    core.settings.keys = {"machines.add": "n"}
    await make_user(core, "root-admin", Role.ADMIN)
    app = make_app(core)
    async with app.run_test(size=(80, 24)) as pilot:
        await log_in(pilot, "root-admin")
        await wait_for(pilot, lambda: app.actor)
        await _machines_screen(pilot, app)
        await pilot.press("a")
        await pilot.pause()
        assert screen_name(app) == "MachinesScreen"
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, FormScreen) and app.screen.query("#save"))
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen_name(app) == "MachinesScreen")
        # the palette offers the same commands: "Users" switches screens
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
        await type_text(pilot, "Users")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen_name(app) == "UsersScreen")


async def test_quit_asks_while_work_runs(fast_settings):
    core = fast_settings
    await make_user(core, "root-admin", Role.ADMIN)
    app = make_app(core)
    async with app.run_test(size=(80, 24)) as pilot:
        await log_in(pilot, "root-admin")
        await wait_for(pilot, lambda: app.actor)
        app.busy = 1  # as while an image import runs
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen.query("#yes"))
        await pilot.press("n")
        await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        await pilot.press("q")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen.query("#yes"))
        await pilot.press("n")
        await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        assert app.is_running
        app.busy = 0
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running)


async def test_bulk_prepare_is_summarised_in_one_notification_naming_the_consoles_key(fast_settings, tmp_path):
    """Four machines marked, three without an image: one notification groups them by reason and
    says which key fixes it (remapped here), never a CLI command; nothing else is shown."""
    from core.services import images

    core = fast_settings
    core.settings.keys = {"machines.assign": "I"}
    admin = await make_user(core, "root-admin", Role.ADMIN)
    await images.import_image(core, admin, random_disk(tmp_path / "d.raw", 1), name="desk")
    for i in range(1, 5):
        await machines.add_machine(core, admin, name=f"pc0{i}", mac=f"52:54:00:aa:00:0{i}")
    await images.assign_image(core, admin, "pc01", "desk")
    app = make_app(core)
    shown: list[str] = []
    notify = app.notify
    app.notify = lambda message, **kw: (shown.append(message), notify(message, **kw))  # type: ignore[method-assign]
    async with app.run_test(size=(80, 24)) as pilot:
        await log_in(pilot, "root-admin")
        await wait_for(pilot, lambda: app.actor)
        await _machines_screen(pilot, app)
        await wait_for(pilot, lambda: len(app.screen.table.rows_by_key) == 4)
        await pilot.press("ctrl+a")
        shown.clear()
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, FormScreen) and app.screen.query("#save"))
        await pilot.press("ctrl+s")  # the dialog holds only a choice: save by key
        await wait_for(pilot, lambda: shown)
        await pilot.pause(0.3)
    assert shown == ["prepared 1; 3 have no image: pc02, pc03, pc04 (press I on Machines (2))"]
    assert "ggnet" not in shown[0]
    current = await boots_service.current_boots(core, admin)
    assert [b.machine for b in current] == ["pc01"]


@pytest.mark.slow
async def test_prepare_and_offline_through_the_engine_on_a_real_tgtd(tgtd_site):
    """The console records intent; an engine (here in the test's process) acts on it within a second."""
    from core.engine.engine import Engine
    from core.services import boots

    core, admin, daemon = tgtd_site
    core.settings.target_backend = "tgt"
    core.settings.boot_address = "10.0.2.2"
    engine = Engine(core, mode="embedded")
    assert await engine.lock.acquire()
    await engine.start()
    running = asyncio.create_task(engine.run_forever())
    app = make_app(core)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await log_in(pilot, "root-admin")
            await wait_for(pilot, lambda: app.actor)
            await _machines_screen(pilot, app)
            await wait_for(pilot, lambda: app.screen.table.rows_by_key)
            await pilot.press("s")
            await wait_for(pilot, lambda: isinstance(app.screen, FormScreen) and app.screen.query("#save"))
            await pilot.press("ctrl+s")
            await pilot.press("4")
            await wait_for(
                pilot,
                lambda: (
                    screen_name(app) == "SessionsScreen"
                    and [str(r["state"]) for r in app.screen.table.rows_by_key.values()] == ["ready"]
                ),
            )
            row = next(iter(app.screen.table.rows_by_key.values()))
            assert row["machine"] == "pc01" and str(row["login"]) == "no"

            # the target vanishes behind ggnet's back (a tgtd restart): reconcile from the Targets screen
            daemon.delete_all_targets()
            await pilot.press("5")
            await wait_for(pilot, lambda: screen_name(app) == "TargetsScreen")
            await pilot.press("R")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen.query("#yes"))
            await pilot.press("y")
            await wait_for(pilot, lambda: screen_name(app) == "TextScreen")
            assert "target iqn.2024-01.lan.ggnet:pc01 (pc01): missing" in str(app.screen.body)
            await pilot.press("escape")
            await wait_for(
                pilot,
                lambda: (
                    screen_name(app) == "TargetsScreen"
                    and [str(r["state"]) for r in app.screen.table.rows_by_key.values()] == ["ok"]
                ),
            )

            await pilot.press("4")
            await wait_for(pilot, lambda: screen_name(app) == "SessionsScreen" and app.screen.table.rows_by_key)
            await pilot.press("x")
            await wait_for(pilot, lambda: screen_name(app) == "SessionsScreen" and not app.screen.table.rows_by_key)
    finally:
        engine.stop()
        await running
        await engine.close()
    assert await boots.current_boots(core, admin) == []
    assert "Target" not in daemon.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "target").stdout


async def test_audit_query_and_event_details(fast_settings):
    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:aa:00:01")
    await machines.update_machine(core, admin, "pc01", ip="10.0.0.21")
    app = make_app(core)
    async with app.run_test(size=(120, 40)) as pilot:
        await log_in(pilot, "root-admin")
        await wait_for(pilot, lambda: app.actor)
        await pilot.press("7")
        await wait_for(pilot, lambda: screen_name(app) == "AuditScreen" and app.screen.table.rows_by_key)
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, FormScreen) and app.screen.query("#save"))
        await fill(pilot, "#f-since", "yesterday")
        await pilot.press("enter")
        await wait_for(pilot, lambda: "YYYY-MM-DD" in field_error(app, "since"))
        await fill(pilot, "#f-since", "")
        await fill(pilot, "#f-action", "machine.update")
        await pilot.press("enter")
        await wait_for(
            pilot,
            lambda: (
                screen_name(app) == "AuditScreen"
                and [r["action"] for r in app.screen.table.rows_by_key.values()] == ["machine.update"]
            ),
        )
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen_name(app) == "TextScreen")
        body = str(app.screen.body)
        assert '"ip": null' in body and '"ip": "10.0.0.21"' in body


async def test_csv_import_previews_bad_rows_before_writing(fast_settings, tmp_path):
    from ggnet_tui.screens.modals import CsvImportScreen

    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    bad = tmp_path / "bad.csv"
    bad.write_text("name,mac,ip\npc01,52:54:00:aa:00:01,10.0.0.21\npc02,nonsense,\npc03,52:54:00:aa:00:03,10.0.0.21\n")
    good = tmp_path / "good.csv"
    good.write_text("name,mac\npc01,52:54:00:aa:00:01\npc02,52-54-00-aa-00-02\n")
    app = make_app(core)
    async with app.run_test(size=(80, 24)) as pilot:
        await log_in(pilot, "root-admin")
        await wait_for(pilot, lambda: app.actor)
        await _machines_screen(pilot, app)
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, CsvImportScreen) and app.screen.query("#path"))
        report = lambda: str(app.screen.query_one("#report", Static).render())  # noqa: E731
        await fill(pilot, "#path", str(bad))
        await pilot.press("enter")
        await wait_for(pilot, lambda: "2 bad row(s)" in report())
        assert "line 3" in report() and "line 4" in report()
        assert app.screen.query_one("#import").disabled
        assert await machines.list_machines(core, admin) == []
        await fill(pilot, "#path", str(good))
        await pilot.press("enter")
        await wait_for(pilot, lambda: "2 machine(s) ready" in report())
        await pilot.click("#import")
        await wait_for(
            pilot,
            lambda: screen_name(app) == "MachinesScreen" and sorted(app.screen.table.rows_by_key) == ["pc01", "pc02"],
        )
    assert [m.name for m in await machines.list_machines(core, admin)] == ["pc01", "pc02"]


async def test_image_activate_and_guarded_delete(fast_settings, tmp_path):
    from core.services import images

    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    await images.import_image(core, admin, random_disk(tmp_path / "a.raw", 1), name="win11")
    await images.import_image(core, admin, random_disk(tmp_path / "b.raw", 1), new_version_of="win11")
    await machines.add_machine(core, admin, name="pc01", mac="52:54:00:aa:00:01")
    await images.assign_image(core, admin, "pc01", "win11")
    app = make_app(core)
    shown: list[str] = []
    notify = app.notify
    app.notify = lambda message, **kw: (shown.append(message), notify(message, **kw))  # type: ignore[method-assign]
    async with app.run_test(size=(120, 40)) as pilot:
        await log_in(pilot, "root-admin")
        await wait_for(pilot, lambda: app.actor)
        await pilot.press("3")
        await wait_for(
            pilot, lambda: screen_name(app) == "ImagesScreen" and "ver:win11:2" in app.screen.table.rows_by_key
        )
        assert app.screen.table.order == ["img:win11", "ver:win11:1", "ver:win11:2"]
        await pilot.press("down")  # v1
        await pilot.press("v")
        await wait_for(pilot, lambda: str(app.screen.table.rows_by_key["ver:win11:1"]["active"]) == "active")
        await pilot.press("up")  # the image itself: assigned to pc01, so core refuses to delete it
        await pilot.press("ctrl+d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen.query("#yes"))
        await pilot.press("y")
        await wait_for(pilot, lambda: any("assigned to pc01" in m for m in shown))
    listed = await images.list_images(core, admin)
    assert [(i.name, i.active_version) for i in listed] == [("win11", 1)]
