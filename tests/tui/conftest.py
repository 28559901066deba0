import pytest

from core.config import Settings
from core.models import Role
from core.services import machines
from tests.conftest import make_user
from tests.tui.helpers import random_disk


@pytest.fixture
def fast_settings(sqlite_core):
    """Short refresh and check intervals so the flows run quickly (behaviour, not timing, is asserted)."""
    settings: Settings = sqlite_core.settings
    settings.refresh_seconds = 0.2
    return sqlite_core


@pytest.fixture
async def tgtd_site(fast_settings, tmp_path):
    """A private tgtd, an image 'disk' and machine pc01 assigned to it; yields (core, admin, daemon)."""
    from core.services import images
    from tests.e2e.tgtd import start_private_tgtd, unavailable

    if unavailable():
        pytest.skip(unavailable())
    core = fast_settings
    admin = await make_user(core, "root-admin", Role.ADMIN)
    daemon = start_private_tgtd(tmp_path)
    try:
        core.settings.portal = f"127.0.0.1:{daemon.portal_port}"
        core.settings.tgt_control_port = daemon.control_port
        core.settings.writeback_driver = "copy"
        await images.import_image(core, admin, random_disk(tmp_path / "disk.raw", 4), name="disk")
        await machines.add_machine(core, admin, name="pc01", mac="52:54:00:aa:00:01")
        await images.assign_image(core, admin, "pc01", "disk")
        yield core, admin, daemon
    finally:
        daemon.stop()
