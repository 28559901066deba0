"""Fixtures for end-to-end tests: a private tgtd (see tgtd.py)."""

from tests.e2e.tgtd import tgtd_daemon

__all__ = ["tgtd_daemon"]
