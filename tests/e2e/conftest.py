"""Fixtures for end-to-end tests: a private tgtd (see tgtd.py), the OS-phase disk (see osphase/),
ggnet serve inside the LIO VM (see lio_vm/serve.py)."""

from tests.e2e.lio_vm.serve import _lio_ggnet_vm, lio_ggnet
from tests.e2e.osphase import osphase_disk
from tests.e2e.tgtd import tgtd_daemon

__all__ = ["_lio_ggnet_vm", "lio_ggnet", "osphase_disk", "tgtd_daemon"]
