"""Build the OS-phase test disks from Debian packages, reproducibly, without mounting anything.

The **system disk** (``build_osphase_disk``) boots three ways and then runs a tiny diskless Linux:

    GPT, protective MBR with syslinux's gptmbr.bin
    p1 "GGNET-ESP"  FAT16 ESP, LegacyBIOSBootable
       /ldlinux.sys, /syslinux.cfg       BIOS: SeaBIOS -> iPXE int13 -> gptmbr -> syslinux
       /EFI/BOOT/BOOTX64.EFI             UEFI: an unsigned GRUB (grub-mkimage, config in a memdisk)
       /EFI/ggnet-sb/shimx64.efi         Secure Boot: Debian's Microsoft-signed shim, which loads
       /EFI/ggnet-sb/grubx64.efi           Debian's signed GRUB, which reads grub.cfg beside it and
       /EFI/ggnet-sb/grub.cfg              boots Debian's signed kernel (through shim's verifier)
       /vmlinuz, /initrd.img             Debian's kernel; busybox + iscsistart + modules (guest/initramfs-init.sh)
    p2 "ggnet-root" ext4 labelled ggnet-root: busybox and guest/root-init.sh as /sbin/init

The **game disk** (``build_game_disk``) is a whole-disk ext4 labelled ``ggnet-game`` holding
``/ggnet-game.txt`` (``GGNET-GAME-CONTENT <content>``); served as a second LUN, the OS finds it.

Both operating-system scripts append one line per boot to ``/ggnet-boots.txt`` on the disk they
visit; ``boots_on_disk`` reads those lines back from a disk file on the host (debugfs).

Reproducible byte for byte for the same packages and host tools: fixed timestamps
(SOURCE_DATE_EPOCH for mtools and syslinux, E2FSPROGS_FAKE_TIME for mke2fs, pinned ctimes),
fixed UUIDs, labels and hash seeds, sorted archives. Packages come from ``tests/e2e/debs.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.e2e import debs
from tests.e2e.debs import DebError, run

HERE = Path(__file__).resolve().parent
GUEST = HERE / "guest"
EPOCH = 1_700_000_000  # every timestamp in the images
SECTOR = 512
ESP_START = 2048  # sectors
ESP_SECTORS = 48 * 2048  # 48 MiB
GPT_BACKUP_SECTORS = 40  # left free at the end for the backup GPT
ROOT_LABEL = "ggnet-root"
GAME_LABEL = "ggnet-game"
BOOTS_FILE = "/ggnet-boots.txt"
GAME_CONTENT_FILE = "/ggnet-game.txt"
# what iPXE is told under Secure Boot: sanboot --filename <this> iscsi:...
SECURE_BOOT_LOADER = r"\EFI\ggnet-sb\shimx64.efi"
BUSYBOX = Path("/bin/busybox")
GPTMBR = Path("/usr/lib/syslinux/mbr/gptmbr.bin")
INITRAMFS_MODULES = ("e1000", "iscsi_ibft", "sd_mod", "iscsi_tcp", "crc32c_generic", "ext4")
ROOT_APPLETS = ("awk", "cat", "cut", "findfs", "grep", "mkdir", "mount", "mountpoint", "poweroff",
                "sync", "tail", "umount", "wc")  # fmt: skip
GRUB_MODULES = ("normal", "echo", "search", "search_fs_file", "part_gpt", "part_msdos", "fat", "ext2",
                "linux", "test", "halt", "sleep", "configfile", "memdisk", "tar")  # fmt: skip
ISCSI_PACKAGES = ("open-iscsi", "libopeniscsiusr", "libisns0")
EFI_PACKAGES = ("grub-efi-amd64-bin", "grub-efi-amd64-signed", "shim-signed")
# host programs the build runs, with their Debian packages (scripts/test.sh installs them)
HOST_TOOLS = {
    "sfdisk": "fdisk", "mkfs.fat": "dosfstools", "mcopy": "mtools", "mmd": "mtools", "syslinux": "syslinux",
    "grub-mkimage": "grub-common", "mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs", "cpio": "cpio",
    "depmod": "kmod", "modprobe": "kmod", "ldd": "libc-bin",
}  # fmt: skip


def missing_prerequisites() -> str | None:
    """None when the disks can be built here, else the Debian packages that are missing."""
    missing = {pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None and not _sbin(tool)}
    missing |= set(debs.missing_tools())
    if not GPTMBR.is_file():
        missing.add("syslinux-common")
    if not BUSYBOX.is_file() or b"ld-linux" in BUSYBOX.read_bytes()[:8192]:
        missing.add("busybox-static")  # a dynamic busybox cannot run in the initramfs
    return f"missing to build the OS-phase disk: {', '.join(sorted(missing))}" if missing else None


def _sbin(tool: str) -> str | None:
    return next((p for p in (f"/usr/sbin/{tool}", f"/sbin/{tool}") if os.access(p, os.X_OK)), None)


def _tool(name: str) -> str:
    return shutil.which(name) or _sbin(name) or name


def _env() -> dict[str, str]:
    return {"SOURCE_DATE_EPOCH": str(EPOCH), "E2FSPROGS_FAKE_TIME": str(EPOCH), "MTOOLS_SKIP_CHECK": "1",
            "LC_ALL": "C"}  # fmt: skip


def _tool_run(*args: str | int | Path, cwd: Path | None = None, stdin: bytes | None = None) -> bytes:
    """Run a host tool with the fixed-time environment; its stdout, or DebError with its stderr."""
    argv = [_tool(str(args[0])), *map(str, args[1:])]
    done = subprocess.run(argv, check=False, cwd=cwd, input=stdin, capture_output=True, timeout=300,
                          env={**os.environ, **_env()})  # fmt: skip
    if done.returncode != 0:
        raise DebError(f"{' '.join(argv)} failed: {(done.stderr or done.stdout).decode(errors='replace').strip()}")
    return done.stdout


def _pin_times(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)


@dataclass(frozen=True)
class Kernel:
    package: str  # e.g. linux-image-6.1.0-57-amd64
    version: str  # e.g. 6.1.0-57-amd64
    root: Path  # the unpacked package, with modules.dep

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"


def kernel() -> Kernel:
    package = debs.kernel_package()
    version = package.removeprefix("linux-image-")
    root = debs.unpack(package)
    if not (root / "lib" / "modules" / version / "modules.dep").is_file():
        with debs.cache_lock():  # the package ships no modules.dep; make it once, in the cache
            if not (root / "lib" / "modules" / version / "modules.dep").is_file():
                run(["depmod", "-b", str(root), version])
    return Kernel(package, version, root)


@dataclass(frozen=True)
class OsPhaseDisk:
    path: Path  # the built image; give each client a copy (its writeback)
    kernel_package: str
    esp_offset: int  # bytes
    root_offset: int  # bytes
    sha256: str


def build_osphase_disk(out: str | os.PathLike[str], size_mib: int = 128) -> OsPhaseDisk:
    """Build the hybrid BIOS/UEFI/Secure Boot system disk at ``out`` (a sparse raw file)."""
    out = Path(out).resolve()
    k = kernel()
    iscsi = [debs.unpack(p) for p in ISCSI_PACKAGES]
    grub_bin, grub_signed, shim = (debs.unpack(p) for p in EFI_PACKAGES)
    root_start = ESP_START + ESP_SECTORS
    root_sectors = size_mib * 2048 - root_start - GPT_BACKUP_SECTORS
    if root_sectors < 16 * 2048:
        raise ValueError("size_mib is too small: the root file system needs at least 16 MiB after the 48 MiB ESP")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.build-") as tmp:
        work = Path(tmp)
        initrd = _initramfs(work, k, iscsi)
        rootfs = _rootfs(work, k)
        esp = _esp_files(work, k, initrd, grub_bin, grub_signed, shim)

        image = work / "disk.img"
        with open(image, "wb") as f:
            f.truncate(size_mib << 20)
        _tool_run("sfdisk", "-q", image, stdin=(
            "label: gpt\nlabel-id: 67676E00-0000-4000-8000-0000000000D0\nfirst-lba: 2048\n"
            f"start={ESP_START}, size={ESP_SECTORS}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, "
            "uuid=67676E00-0000-4000-8000-0000000000E1, name=GGNET-ESP, attrs=LegacyBIOSBootable\n"
            f"start={root_start}, size={root_sectors}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, "
            f"uuid=67676E00-0000-4000-8000-0000000000E2, name={ROOT_LABEL}\n"
        ).encode())  # fmt: skip
        with open(image, "r+b") as f:  # boot code only: the partition table stays
            f.write(GPTMBR.read_bytes()[:440])

        esp_offset = ESP_START * SECTOR
        _tool_run("mkfs.fat", "-F", "16", "-n", "GGBOOT", "-i", "67676e01", "--invariant", "--offset", ESP_START,
                  "-h", ESP_START, image, ESP_SECTORS // 2)  # fmt: skip
        fat = f"{image}@@{esp_offset}"
        for directory in sorted({d for p in esp for d in p.parents if d != Path("/")}):
            _tool_run("mmd", "-i", fat, f"::{directory}")
        for dest, source in sorted(esp.items()):
            _tool_run("mcopy", "-m", "-i", fat, source, f"::{dest}")
        _tool_run("syslinux", "--offset", esp_offset, "--install", image)

        root_offset = root_start * SECTOR
        _tool_run("mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-U", "67676e00-0000-4000-8000-000000000002",
                  "-E", f"offset={root_offset},root_owner=0:0,hash_seed=67676e00-0000-4000-8000-000000000003",
                  "-d", rootfs, image, f"{root_sectors // 2}k")  # fmt: skip
        _pin_ctimes(image, root_offset, rootfs)
        image.rename(out)
    return OsPhaseDisk(out, k.package, esp_offset, root_offset, _sha256(out))


def build_game_disk(out: str | os.PathLike[str], content: str, size_mib: int = 32) -> Path:
    """A game disk: whole-disk ext4 labelled ggnet-game whose /ggnet-game.txt names ``content``."""
    if not content or not content.isascii() or any(c.isspace() for c in content):
        raise ValueError("content must be a short ASCII word (it is printed on the guest's console)")
    out = Path(out).resolve()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.build-") as tmp:
        files = Path(tmp) / "files"
        files.mkdir()
        (files / GAME_CONTENT_FILE.lstrip("/")).write_text(f"GGNET-GAME-CONTENT {content}\n")
        _pin_times(files)
        image = Path(tmp) / "game.img"
        _tool_run("mkfs.ext4", "-q", "-F", "-L", GAME_LABEL, "-U", "67676e00-0000-4000-8000-000000000004",
                  "-E", "root_owner=0:0,hash_seed=67676e00-0000-4000-8000-000000000005",
                  "-d", files, image, f"{size_mib}M")  # fmt: skip
        _pin_ctimes(image, 0, files)
        image.rename(out)
    return out


def writeback(image: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """A client's own copy of ``image`` at ``path`` (a reflink clone where the file system can, holes kept)."""
    run(["cp", "--reflink=auto", "--sparse=always", str(image), str(path)])
    return Path(path)


def boots_on_disk(image: str | os.PathLike[str], offset: int = 0) -> list[str]:
    """The boot ids the guest wrote to the ext4 file system at byte ``offset`` of ``image``, oldest first.

    ``offset`` is ``OsPhaseDisk.root_offset`` for a system disk's writeback, 0 for a game disk.
    """
    done = subprocess.run([_tool("debugfs"), "-R", f"cat {BOOTS_FILE}", f"{image}?offset={offset}"],
                          check=False, capture_output=True, text=True, timeout=60)  # fmt: skip
    return [
        line.split()[0].removeprefix("boot_id=") for line in done.stdout.splitlines() if line.startswith("boot_id=")
    ]


# --- pieces ------------------------------------------------------------------------------------------


def _initramfs(work: Path, k: Kernel, iscsi: list[Path]) -> Path:
    root = work / "initramfs"
    for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "run", "newroot", "etc/iscsi", "lib64",
              "lib/x86_64-linux-gnu", f"lib/modules/{k.version}"):  # fmt: skip
        (root / d).mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    shutil.copy(GUEST / "initramfs-init.sh", root / "init")
    (root / "init").chmod(0o755)
    iscsistart = iscsi[0] / "sbin" / "iscsistart"
    shutil.copy(iscsistart, root / "sbin" / "iscsistart")
    # its libraries: the host's, except those only the unpacked packages have (libisns, libopeniscsiusr)
    libs = ":".join(str(p / "usr" / "lib" / "x86_64-linux-gnu") for p in iscsi)
    for line in run(["ldd", str(iscsistart)], env={"LD_LIBRARY_PATH": libs}).splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > parts.index("=>") + 1:
            shutil.copy(parts[parts.index("=>") + 1], root / "lib" / "x86_64-linux-gnu")
        elif parts and "ld-linux" in parts[0]:
            shutil.copy(parts[0], root / "lib64")
    modules = root / "lib" / "modules" / k.version
    for module in INITRAMFS_MODULES:
        out = run(["modprobe", "-d", str(k.root), "-S", k.version, "--show-depends", module])
        for line in out.splitlines():
            parts = line.split()
            if parts[:1] == ["insmod"]:
                rel = Path(parts[1]).relative_to(k.root / "lib" / "modules" / k.version)
                (modules / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(parts[1], modules / rel)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        shutil.copy(k.root / "lib" / "modules" / k.version / name, modules / name)
    run(["depmod", "-b", str(root), k.version])
    _pin_times(root)
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    cpio = _tool_run("cpio", "-o", "-H", "newc", "--quiet", "--reproducible", "--owner=0:0", cwd=root,
                     stdin="\n".join(names).encode())  # fmt: skip
    initrd = work / "initrd.img"
    initrd.write_bytes(gzip.compress(cpio, compresslevel=6, mtime=0))
    return initrd


def _rootfs(work: Path, k: Kernel) -> Path:
    root = work / "rootfs"
    for d in ("bin", "sbin", "proc", "sys", "dev", "etc", "run", "tmp"):
        (root / d).mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", *ROOT_APPLETS):
        (root / "bin" / applet).symlink_to("busybox")
    shutil.copy(GUEST / "root-init.sh", root / "sbin" / "init")
    (root / "sbin" / "init").chmod(0o755)
    (root / "etc" / "ggnet-osphase-id").write_text(f"kernel={k.package}\n")
    _pin_times(root)
    return root


def _esp_files(work: Path, k: Kernel, initrd: Path, grub_bin: Path, grub_signed: Path, shim: Path) -> dict[Path, Path]:
    """What goes on the ESP: {path on the ESP: file on the host}, every file with the fixed timestamp."""
    esp = work / "esp"
    esp.mkdir()
    (esp / "syslinux.cfg").write_text(
        "SERIAL 0 115200\nPROMPT 0\nTIMEOUT 0\nDEFAULT ggnet\nLABEL ggnet\n"
        "  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND console=ttyS0,115200 panic=-1\n"
    )
    (esp / "ggnet-osphase.esp").write_text("the ESP of the ggnet OS-phase test disk (GRUB searches for this file)\n")
    grub_cfg = GUEST / "grub.cfg"
    # the unsigned GRUB: its configuration in a memdisk (an embedded -c config cannot use `if`)
    memdisk = work / "memdisk"
    (memdisk / "boot" / "grub").mkdir(parents=True)
    shutil.copy(grub_cfg, memdisk / "boot" / "grub" / "grub.cfg")
    with tarfile.open(work / "memdisk.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted([memdisk / "boot", *(memdisk / "boot").rglob("*")]):
            info = tar.gettarinfo(path, str(path.relative_to(memdisk)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "", ""
            if path.is_file():
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    _tool_run("grub-mkimage", "-d", grub_bin / "usr" / "lib" / "grub" / "x86_64-efi", "-O", "x86_64-efi",
              "-o", esp / "BOOTX64.EFI", "-p", "(memdisk)/boot/grub", "-m", work / "memdisk.tar", *GRUB_MODULES)  # fmt: skip
    shutil.copy(shim / "usr" / "lib" / "shim" / "shimx64.efi.signed", esp / "shimx64.efi")
    shutil.copy(grub_signed / "usr" / "lib" / "grub" / "x86_64-efi-signed" / "grubx64.efi.signed", esp / "grubx64.efi")
    shutil.copy(k.vmlinuz, esp / "vmlinuz")
    shutil.copy(initrd, esp / "initrd.img")
    sb_cfg = esp / "grub.cfg"  # the signed GRUB reads grub.cfg from its own directory
    shutil.copy(grub_cfg, sb_cfg)
    _pin_times(esp)
    return {
        Path("/syslinux.cfg"): esp / "syslinux.cfg",
        Path("/ggnet-osphase.esp"): esp / "ggnet-osphase.esp",
        Path("/vmlinuz"): esp / "vmlinuz",
        Path("/initrd.img"): esp / "initrd.img",
        Path("/EFI/BOOT/BOOTX64.EFI"): esp / "BOOTX64.EFI",
        Path("/EFI/ggnet-sb/shimx64.efi"): esp / "shimx64.efi",
        Path("/EFI/ggnet-sb/grubx64.efi"): esp / "grubx64.efi",
        Path("/EFI/ggnet-sb/grub.cfg"): sb_cfg,
    }


def _pin_ctimes(image: Path, offset: int, source: Path) -> None:
    """mke2fs -d stamps each inode's ctime with the build's clock: set them to EPOCH (for reproducibility)."""
    paths = ["/", "/lost+found", *sorted("/" + str(p.relative_to(source)) for p in source.rglob("*"))]
    script = image.parent / f".{image.name}.ctime.debugfs"
    script.write_text("".join(f"set_inode_field {p} ctime @{EPOCH}\n" for p in paths))
    try:
        _tool_run("debugfs", "-w", "-f", script, f"{image}?offset={offset}")
    finally:
        script.unlink()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
