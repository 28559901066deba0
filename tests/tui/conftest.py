import pytest

from core.config import Settings


@pytest.fixture
def fast_settings(sqlite_core):
    """Short refresh and check intervals so the flows run quickly (behaviour, not timing, is asserted)."""
    settings: Settings = sqlite_core.settings
    settings.refresh_seconds = 0.2
    return sqlite_core
