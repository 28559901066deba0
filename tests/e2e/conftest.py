"""Fixtures for end-to-end tests: a private tgtd (see tgtd.py), the OS-phase disk (see osphase/)."""

from tests.e2e.osphase import osphase_disk
from tests.e2e.tgtd import tgtd_daemon

__all__ = ["osphase_disk", "tgtd_daemon"]
