"""`ggnet doctor` on a healthy setup (real tgtd, real migrated database) and on broken ones,
and the systemd unit that runs `ggnet serve`."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from core.boot import ipxe
from core.boot.dnsmasq import SIGNED_IPXE_URL
from core.config import Settings
from core.context import Core
from core.doctor import authenticode_signed, check_boot_files, check_database, failed, run_checks
from core.log import configure_logging
from core.services import machines
from tests.cli import ggnet_env, run_ggnet
from tests.conftest import make_database_url, make_user
from tests.e2e.tgtd import TgtDaemon, tgtd_daemon  # noqa: F401 - the fixture

UNIT = Path(__file__).parent.parent / "core" / "systemd" / "ggnet.service"


def by_name(checks: list) -> dict[str, object]:  # type: ignore[type-arg]
    return {c.name: c for c in checks}


async def healthy_site(tmp_path: Path, template_root: Path) -> dict[str, str]:
    """Settings (as GGNET_* variables) of a site that is ready: migrated database, TFTP root with
    boot.ipxe and the iPXE binaries, a boot address."""
    url, _ = await make_database_url("sqlite", tmp_path, template_root)
    data = tmp_path / "data"
    tftp = tmp_path / "tftp"
    data.mkdir()
    tftp.mkdir()
    (tftp / "boot.ipxe").write_text(ipxe.render_boot_script(ipxe.boot_url("10.0.2.2", 8067)))
    for name in ("undionly.kpxe", "ipxe.efi", "snponly.efi"):
        (tftp / name).write_bytes(b"placeholder")  # the doctor checks that they are there, not what they are
    return {
        "GGNET_DATA_DIR": str(data),
        "GGNET_DATABASE_URL": url,
        "GGNET_TFTP_ROOT": str(tftp),
        "GGNET_BOOT_ADDRESS": "10.0.2.2",
        "GGNET_LOG_FILE": str(tmp_path / "ggnet.log"),
    }


def settings_from(env: dict[str, str]) -> Settings:
    return Settings(**{k.removeprefix("GGNET_").lower(): v for k, v in env.items()})  # type: ignore[arg-type]


async def test_healthy_site_passes(tmp_path: Path, template_root: Path, tgtd_daemon: TgtDaemon) -> None:  # noqa: F811
    site = await healthy_site(tmp_path, template_root)
    site.update(GGNET_TARGET_BACKEND="tgt", GGNET_TGT_CONTROL_PORT=str(tgtd_daemon.control_port))
    configure_logging(tmp_path / "ggnet.log")
    checks = await run_checks(settings_from(site))
    statuses = {c.name: c.status for c in checks}
    assert not failed(checks), [c for c in checks if c.status == "fail"]
    for name in (
        "qemu-img",
        "tgtd",
        "target stack",
        "data directory",
        "tftp root",
        "boot files",  # no machines yet: nothing is needed
        "boot address",
        "database",
        "schema",
    ):
        assert statuses[name] == "ok", by_name(checks)[name]
    assert statuses["reflink"] in ("ok", "warn")  # depends on the file system tmp is on

    result = run_ggnet(["doctor", "--json"], {**ggnet_env(tmp_path), **site})
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert {c["name"] for c in report["checks"]} >= set(statuses)


async def test_broken_site_fails_and_says_how_to_fix(tmp_path: Path, template_root: Path) -> None:
    site = await healthy_site(tmp_path, template_root)
    shutil.rmtree(site["GGNET_TFTP_ROOT"])
    # nothing listens on port 1: the database is unreachable (and its password must not be printed)
    site["GGNET_DATABASE_URL"] = "postgresql+asyncpg://ggnet:Sup3rSecretPw@127.0.0.1:1/ggnet"
    result = run_ggnet(["doctor"], {**ggnet_env(tmp_path), **site})
    assert result.returncode == 1, result.stdout + result.stderr
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line[:4] in ("ok  ", "WARN", "FAIL")}
    assert lines["tftp"].startswith("FAIL") and "does not exist: run ggnet boot render" in lines["tftp"]
    assert (
        lines["database"].startswith("FAIL")
        and "cannot open postgresql+asyncpg://ggnet:***@127.0.0.1:1" in lines["database"]
    )
    assert "Sup3rSecretPw" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr and result.stderr == ""


async def test_missing_sqlite_database_is_reported_not_created(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    settings = Settings(data_dir=data, log_file=tmp_path / "ggnet.log", boot_address="10.0.2.2")
    configure_logging(settings.log_file)
    checks = by_name(await run_checks(settings))
    assert checks["database"].status == "fail" and "run ggnet init" in checks["database"].detail  # type: ignore[attr-defined]
    assert not (data / "ggnet.db").exists()


async def test_empty_database_and_missing_boot_address(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "empty.db"
    sqlite3.connect(db).close()
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{db}", log_file=tmp_path / "ggnet.log")
    configure_logging(settings.log_file)
    checks = by_name(await run_checks(settings))
    assert checks["database"].status == "ok"  # type: ignore[attr-defined]
    assert checks["schema"].status == "fail" and "run ggnet init" in checks["schema"].detail  # type: ignore[attr-defined]
    assert checks["boot address"].status == "fail" and "GGNET_BOOT_ADDRESS" in checks["boot address"].detail  # type: ignore[attr-defined]


def test_serve_unit_is_valid_and_runs_after_the_target_service(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for needed in (
        "ExecStart=ggnet serve",
        "Restart=on-failure",
        "After=network-online.target rtslib-fb-targetctl.service target.service tgt.service",
        "Wants=network-online.target rtslib-fb-targetctl.service target.service tgt.service",
        "WantedBy=multi-user.target",
    ):
        assert needed in text, needed
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("optional: systemd-analyze is not installed")
    # systemd checks that ExecStart exists: point it at the ggnet installed beside this Python
    unit = tmp_path / "ggnet.service"
    unit.write_text(text.replace("ExecStart=ggnet ", f"ExecStart={Path(sys.executable).parent / 'ggnet'} "))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "ggnet.service" not in result.stderr, result.stderr


def _xfs_unavailable() -> str | None:
    import os

    if os.geteuid() != 0:
        return "mounting a loop XFS needs root"
    if shutil.which("mkfs.xfs") is None:
        return "mkfs.xfs is not installed (Debian package xfsprogs)"
    return None


async def test_data_dir_on_xfs_with_reflink(tmp_path: Path) -> None:
    """A real XFS (reflink=1) in a loop-mounted file: the doctor names the file system and finds reflink."""
    from core.doctor import check_data_dir

    why = _xfs_unavailable()
    if why:
        pytest.skip(why)
    image, mount = tmp_path / "xfs.img", tmp_path / "mnt"
    mount.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(320 << 20)  # the smallest size mkfs.xfs accepts, sparse
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True, timeout=60)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True, timeout=60)
    try:
        checks = by_name(await check_data_dir(Settings(data_dir=mount, log_file=tmp_path / "ggnet.log")))
        assert checks["data directory"].detail.endswith(" on xfs")  # type: ignore[attr-defined]
        assert checks["reflink"].status == "ok"  # type: ignore[attr-defined]
        assert checks["free space"].status == "fail"  # a 320 MiB file system is too small for images
        assert sorted(p.name for p in mount.iterdir()) == []  # the probe left nothing behind
    finally:
        subprocess.run(["umount", str(mount)], check=True, timeout=60)


def efi_image(signed: bool) -> bytes:
    """The head of a PE32+ (EFI) image: DOS stub, PE signature, optional header with 16 data directories;
    a signed image's certificate table (directory 4) is not empty."""
    head = bytearray(1024)
    head[:2] = b"MZ"
    struct.pack_into("<I", head, 0x3C, 0x80)
    head[0x80:0x84] = b"PE\0\0"
    optional = 0x80 + 24
    struct.pack_into("<HI", head, optional, 0x20B, 0)
    struct.pack_into("<I", head, optional + 108, 16)
    if signed:
        struct.pack_into("<II", head, optional + 112 + 4 * 8, 4096, 2048)
    return bytes(head)


def test_authenticode_signed_reads_the_certificate_table(tmp_path: Path) -> None:
    for name, data, signed in (
        ("signed.efi", efi_image(signed=True), True),
        ("unsigned.efi", efi_image(signed=False), False),
        ("script.ipxe", b"#!ipxe\nexit\n", False),
        ("empty.efi", b"", False),
    ):
        (tmp_path / name).write_bytes(data)
        assert authenticode_signed(tmp_path / name) is signed, name
    assert authenticode_signed(tmp_path / "missing.efi") is False


async def test_boot_files_follow_the_boot_modes_of_registered_machines(sqlite_core: Core, tmp_path: Path) -> None:
    tftp = tmp_path / "tftp"
    tftp.mkdir()
    sqlite_core.settings.tftp_root = tftp
    admin = await make_user(sqlite_core, "root-admin", "admin")

    async def boot_files() -> dict[str, object]:
        _, modes = await check_database(sqlite_core.settings)
        return by_name(check_boot_files(sqlite_core.settings, modes))

    checks = await boot_files()
    assert list(checks) == ["boot files"] and checks["boot files"].status == "ok"  # type: ignore[attr-defined]

    # a BIOS machine: undionly.kpxe is needed, and only that
    await machines.add_machine(sqlite_core, admin, name="pc01", mac="52:54:00:00:d0:01", boot_mode="bios")
    checks = await boot_files()
    assert list(checks) == ["boot files (bios)"]
    bios = checks["boot files (bios)"]
    assert bios.status == "fail" and "lacks undionly.kpxe" in bios.detail and "/usr/lib/ipxe/" in bios.detail  # type: ignore[attr-defined]
    (tftp / "undionly.kpxe").write_bytes(b"placeholder")
    assert (await boot_files())["boot files (bios)"].status == "ok"  # type: ignore[attr-defined]

    # a UEFI machine: Debian's (unsigned) ipxe.efi or snponly.efi will do
    await machines.add_machine(sqlite_core, admin, name="pc02", mac="52:54:00:00:d0:02", boot_mode="uefi")
    uefi = (await boot_files())["boot files (uefi)"]
    assert uefi.status == "fail" and "neither ipxe.efi nor snponly.efi" in uefi.detail  # type: ignore[attr-defined]
    (tftp / "snponly.efi").write_bytes(efi_image(signed=False))
    assert (await boot_files())["boot files (uefi)"].status == "ok"  # type: ignore[attr-defined]

    # a Secure Boot machine: iPXE's signed shim and the signed iPXE it loads, from iPXE's signed release
    await machines.add_machine(sqlite_core, admin, name="pc03", mac="52:54:00:00:d0:03", boot_mode="uefi-secure")
    secure = (await boot_files())["boot files (uefi-secure)"]
    assert secure.status == "fail" and SIGNED_IPXE_URL in secure.detail  # type: ignore[attr-defined]
    (tftp / "snponly-shim.efi").write_bytes(efi_image(signed=True))
    secure = (await boot_files())["boot files (uefi-secure)"]
    assert secure.status == "fail" and "snponly.efi is not signed" in secure.detail  # type: ignore[attr-defined]
    (tftp / "snponly.efi").write_bytes(efi_image(signed=True))  # the signed build also boots plain UEFI
    checks = await boot_files()
    assert [c.status for c in checks.values()] == ["ok", "ok", "ok"], checks  # type: ignore[attr-defined]
    assert "snponly-shim.efi and snponly.efi" in checks["boot files (uefi-secure)"].detail  # type: ignore[attr-defined]


def test_boot_files_when_the_database_cannot_tell(tmp_path: Path) -> None:
    """Every boot mode is checked, and the sentence says why."""
    (tmp_path / "tftp").mkdir()
    (tmp_path / "tftp" / "undionly.kpxe").write_bytes(b"placeholder")
    settings = Settings(data_dir=tmp_path, tftp_root=tmp_path / "tftp", log_file=tmp_path / "ggnet.log")
    checks = by_name(check_boot_files(settings, None))
    assert list(checks) == ["boot files (bios)", "boot files (uefi)", "boot files (uefi-secure)"]
    assert checks["boot files (bios)"].status == "ok"  # type: ignore[attr-defined]
    assert "the database could not say which boot modes are in use" in checks["boot files (uefi)"].detail  # type: ignore[attr-defined]
