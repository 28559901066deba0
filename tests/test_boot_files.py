"""iPXE boot scripts: golden renderings, injection refused, atomic writes, stale-script removal.
(The engine answers the per-machine scripts over HTTP: tests/test_engine.py, tests/e2e.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.boot import ipxe
from core.boot.ipxe import MachineScript, SanBoot, Why
from core.errors import Invalid

GOLDEN = Path(__file__).parent / "golden"


def assert_golden(name: str, text: str) -> None:
    """Compare with tests/golden/<name>; UPDATE_GOLDEN=1 rewrites the file (review the diff!)."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == text, f"differs from {path}; UPDATE_GOLDEN=1 to accept"


SECRET = "Q8xk2LmP0aZr7TbW"


def sanboot(**overrides: object) -> SanBoot:
    values: dict[str, object] = dict(
        address="10.0.2.2",
        port=3260,
        lun=1,
        target_iqn="iqn.2024-01.lan.ggnet:pc01",
        initiator_iqn="iqn.2024-01.lan.ggnet:client.pc01",
        chap_username="pc01",
        chap_secret=SECRET,
    )
    values.update(overrides)
    return SanBoot(**values)  # type: ignore[arg-type]


# --- rendering -------------------------------------------------------------------


URL = ipxe.boot_url("10.0.2.2", 8067)


def test_boot_script_golden() -> None:
    text = ipxe.render_boot_script(URL)
    assert_golden("boot.ipxe", text)
    assert text.startswith("#!ipxe\n")
    assert "chain --replace --autofree http://10.0.2.2:8067/boot/${mac:hexhyp} || goto retry" in text
    assert f"echo {ipxe.CHAIN_FAILED}: the boot server did not answer" in text
    assert "shell" not in text  # never hands the keyboard an iPXE shell


def test_boot_url_refuses_what_clients_cannot_reach() -> None:
    with pytest.raises(Invalid, match="boot_address"):
        ipxe.boot_url("0.0.0.0", 8067)
    with pytest.raises(Invalid, match="http_port"):
        ipxe.boot_url("10.0.2.2", 0)


def test_sanboot_script_golden() -> None:
    text = ipxe.render_machine_script(MachineScript("pc01", "52:54:00:aa:00:01", sanboot()))
    assert_golden("52-54-00-aa-00-01.ipxe", text)
    lines = text.splitlines()
    assert "set initiator-iqn iqn.2024-01.lan.ggnet:client.pc01" in lines
    assert "set username pc01" in lines and f"set password {SECRET}" in lines
    assert "sanboot iscsi:10.0.2.2::3260:1:iqn.2024-01.lan.ggnet:pc01 || goto failed" in lines
    assert "--no-describe" not in text  # the OS finds its disk through the iBFT


def test_secure_boot_starts_the_images_signed_loader() -> None:
    loader = "\\EFI\\ggnet-sb\\shimx64.efi"
    text = ipxe.render_machine_script(MachineScript("pc01", "52:54:00:aa:00:01", sanboot(efi_loader=loader)))
    assert f"sanboot --filename {loader} iscsi:10.0.2.2::3260:1:iqn.2024-01.lan.ggnet:pc01 || goto failed" in text


def test_lun_is_hexadecimal_and_protocol_empty() -> None:
    text = ipxe.render_machine_script(MachineScript("pc02", "52:54:00:aa:00:02", sanboot(lun=26, port=3261)))
    assert "sanboot iscsi:10.0.2.2::3261:1a:iqn.2024-01.lan.ggnet:pc01 || goto failed" in text
    assert "iscsi:10.0.2.2::3261:0:" in ipxe.render_machine_script(
        MachineScript("pc02", "52:54:00:aa:00:02", sanboot(lun=0, port=3261))
    )


def test_refusal_script_golden() -> None:
    text = ipxe.render_machine_script(MachineScript("pc01", "52:54:00:aa:00:01", why=Why.NO_IMAGE))
    assert_golden("52-54-00-aa-00-01.no-image.ipxe", text)
    assert "no image is assigned to pc01: assign one with ggnet machine set pc01 --image IMAGE" in text
    assert "sanboot" not in text and "password" not in text


@pytest.mark.parametrize(
    "why, detail, phrase",
    [
        (Why.DISABLED, "", "pc07 may not boot: it is disabled"),
        (Why.NO_IMAGE, "", "no image is assigned to pc07"),
        (Why.NO_VERSION, "image desk has no active version", "pc07 cannot boot: image desk has no active version"),
        (Why.NO_SPACE, "10 MiB free", "low on disk space, so new boots are refused: 10 MiB free"),
        (Why.FAILED, "tgtd does not answer", "could not prepare the disk of pc07: tgtd does not answer"),
    ],
)
def test_every_reason_is_explained(why: Why, detail: str, phrase: str) -> None:
    text = ipxe.render_machine_script(MachineScript("pc07", "52:54:00:aa:00:07", why=why, detail=detail))
    assert phrase in text
    assert f"echo {ipxe.NOT_BOOTING}:" in text
    assert text.rstrip().endswith("exit 1")


def test_an_unregistered_mac_is_told_how_to_register() -> None:
    text = ipxe.render_unregistered("52:54:00:aa:00:99")
    assert "the PC with MAC 52:54:00:aa:00:99 is not registered" in text
    assert "ggnet machine add NAME --mac 52:54:00:aa:00:99" in text


def test_a_reason_from_the_engine_cannot_inject() -> None:
    """A failure's sentence comes from a daemon's error text: no ${...}, no comment, no second line."""
    text = ipxe.render_machine_script(
        MachineScript("pc07", "52:54:00:aa:00:07", why=Why.FAILED, detail="boom ${password} #x\nsanboot evil || shell")
    )
    echoed = [line for line in text.splitlines() if line.startswith(f"echo {ipxe.NOT_BOOTING}")]
    assert len(echoed) == 1 and "${" not in echoed[0] and "#" not in echoed[0]
    assert not any(line.startswith("sanboot") for line in text.splitlines())


def test_hostname_boot_address_is_allowed() -> None:
    text = ipxe.render_machine_script(MachineScript("pc01", "52:54:00:aa:00:01", sanboot(address="boot.lan")))
    assert "sanboot iscsi:boot.lan::3260:1:" in text


# --- injection -----------------------------------------------------------------------

INJECTIONS = [
    ("name", dict(name="pc01\nshell")),
    ("name", dict(name="pc01 || shell")),
    ("name", dict(name="PC01")),  # not in stored form
    ("mac", dict(mac="52:54:00:aa:00:01\nshell")),
    ("target_iqn", dict(boot=sanboot(target_iqn="iqn.2024-01.lan.ggnet:pc01 || shell"))),
    ("target_iqn", dict(boot=sanboot(target_iqn="iqn.2024-01.lan.ggnet:pc01\nshell"))),
    ("target_iqn", dict(boot=sanboot(target_iqn="iqn.2024-01.lan.ggnet:${net0/ip}"))),
    ("initiator_iqn", dict(boot=sanboot(initiator_iqn="iqn.2024-01.lan.ggnet:x #comment"))),
    ("chap_username", dict(boot=sanboot(chap_username="pc01 ; shell"))),
    ("chap_username", dict(boot=sanboot(chap_username="${password}"))),
    ("chap_secret", dict(boot=sanboot(chap_secret="abc${x}def"))),
    ("chap_secret", dict(boot=sanboot(chap_secret="abc def"))),
    ("chap_secret", dict(boot=sanboot(chap_secret="abcdef\nshell"))),
    ("chap_secret", dict(boot=sanboot(chap_secret=""))),
    ("boot_address", dict(boot=sanboot(address="10.0.2.2 || shell"))),
    ("boot_address", dict(boot=sanboot(address="0.0.0.0"))),
    ("port", dict(boot=sanboot(port=0))),
    ("lun", dict(boot=sanboot(lun=-1))),
    ("efi_loader", dict(boot=sanboot(efi_loader="\\EFI\\x.efi || shell"))),
    ("efi_loader", dict(boot=sanboot(efi_loader="${x}"))),
]


@pytest.mark.parametrize("field, change", INJECTIONS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(INJECTIONS)])
def test_unsafe_values_are_refused(field: str, change: dict[str, object]) -> None:
    values: dict[str, object] = dict(name="pc01", mac="52:54:00:aa:00:01", boot=sanboot())
    values.update(change)
    with pytest.raises(Invalid) as refused:
        ipxe.render_machine_script(MachineScript(**values))  # type: ignore[arg-type]
    assert any(field in key for key in refused.value.errors), refused.value.errors
    assert "abc" not in refused.value.message  # a secret is never quoted back


# --- writing ---------------------------------------------------------------------------


def listing(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_sync_writes_world_readable_files_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    files = ipxe.tftp_files(URL)
    first = ipxe.sync_tftp_root(root, files)
    assert sorted(first.written) == sorted(files)
    assert listing(root) == sorted([*files, ".ggnet.lock"])
    for name, text in files.items():
        assert (root / name).read_text() == text
        assert (root / name).stat().st_mode & 0o777 == 0o644  # TFTP servers serve world-readable files
    inode = (root / "boot.ipxe").stat().st_ino
    again = ipxe.sync_tftp_root(root, files)
    assert again.changed == 0 and again.unchanged == len(files)
    assert (root / "boot.ipxe").stat().st_ino == inode  # unchanged files are not rewritten


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    """A real write failure: the file-size limit (RLIMIT_FSIZE) stops the write half-way with EFBIG."""
    target = tmp_path / "52-54-00-aa-00-01.ipxe"
    target.write_text("old content\n")
    program = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from core.boot.ipxe import write_atomic\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    write_atomic(Path(sys.argv[1]), 'x' * 100000)\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program, str(target)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    assert result.stdout.strip() == "27", result.stderr  # EFBIG
    assert target.read_text() == "old content\n"
    assert listing(tmp_path) == [target.name]


def test_stale_scripts_removed_only_when_ggnet_wrote_them(tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    root.mkdir()
    # per-machine scripts ggnet wrote before the engine answered them over HTTP (with the older marker)
    for mac in ("52-54-00-aa-00-01", "52-54-00-aa-00-09"):
        (root / f"{mac}.ipxe").write_text(f"#!ipxe\n{ipxe.MARKER} (rewritten on every session start and stop)\n")
    operators_own = root / "52-54-00-bb-00-01.ipxe"  # hand-written for a machine ggnet does not know
    operators_own.write_text("#!ipxe\nsanboot iscsi:10.0.0.1::3260:0:iqn.2000-01.com.example:disk\n")
    other = root / "notes.txt"
    other.write_text(ipxe.MARKER + "\n")
    linked = root / "52-54-00-cc-00-01.ipxe"
    linked.symlink_to(root / "52-54-00-aa-00-09.ipxe")
    crashed = root / ".ggnet-abc123.tmp"  # a temporary file left by a crashed run
    crashed.write_text("half")

    result = ipxe.sync_tftp_root(root, ipxe.tftp_files(URL))

    assert result.removed == ["52-54-00-aa-00-01.ipxe", "52-54-00-aa-00-09.ipxe"]
    assert not (root / "52-54-00-aa-00-09.ipxe").exists()
    assert operators_own.exists() and other.exists() and linked.is_symlink()
    assert not crashed.exists()
