"""The operating-system phase of a diskless boot, end to end: a Linux client whose OS logs in
again from the iBFT and runs from its iSCSI disk, on BIOS, UEFI and Secure Boot.

- ``disk.py``    builds the system disk (BIOS + UEFI + Secure Boot, from Debian packages) and game
                 disks, and reads back on the host what the guest wrote (``boots_on_disk``);
- ``client.py``  the guest's serial markers, ``os_client`` (a ``ClientSpec`` for
                 tests/e2e/qemu_client.py) and ``OsReport`` (the serial text parsed into facts);
- ``site.py``    a boot server for such clients: ``ggnet serve`` with the disk as its system image,
                 machines registered through the CLI (on tgtd; test_osphase_lio.py runs LIO in its VM);
- ``guest/``     the initramfs's /init, the root file system's /sbin/init, GRUB's configuration.

A test registers machines and boots their clients through ``ggnet serve``::

    disk = osphase_disk                                   # session fixture: built once per run
    site = OsSite(tmp_path, tgt_env(tmp_path, tgtd_daemon))
    site.setup(disk, games={"games": build_game_disk(tmp_path / "g.img", "gamesv1")})
    site.serve.start()
    site.add(Pc("pc01", "uefi", game="games"))
    result = await run_client(site.client("pc01", "first"))
    report = OsReport.parse(result.com1_text)
    assert result.ok and report.root_mounted and report.root.previous == "fresh"
    assert boots_on_disk(site.luns()["pc01"][1], disk.root_offset) == [report.boot_id]
    result.milestones["root mounted"]                     # seconds from QEMU's start

Under Secure Boot the script must start Debian's signed shim: the system image's EFI loader is
``disk.SECURE_BOOT_LOADER`` (``ggnet image set osdisk --efi-loader '\\EFI\\ggnet-sb\\shimx64.efi'``);
the disk's default loader (``\\EFI\\BOOT\\BOOTX64.EFI``) is unsigned and refused.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.debs import DebError
from tests.e2e.osphase.disk import OsPhaseDisk, build_osphase_disk, missing_prerequisites


@pytest.fixture(scope="session")
def osphase_disk(tmp_path_factory: pytest.TempPathFactory) -> OsPhaseDisk:
    """The OS-phase system disk, built once per test run (Debian packages cached between runs)."""
    why = missing_prerequisites()
    if why:
        pytest.skip(why)
    started = time.monotonic()
    try:
        disk = build_osphase_disk(Path(tmp_path_factory.mktemp("osphase")) / "system.img")
    except (DebError, OSError) as exc:
        pytest.skip(f"cannot build the OS-phase disk: {exc}")
    print(
        f"\nOS-phase disk built in {time.monotonic() - started:.1f} s ({disk.kernel_package}, sha256 {disk.sha256[:16]})"
    )
    return disk
