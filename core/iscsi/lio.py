"""Kernel LIO: read straight from configfs, changed with rtslib-fb objects opened by path.

One target per machine: target ``spec.iqn`` → TPG 1 → LUN n on a FileIO backstore per LUN, one NodeACL
for the machine's initiator with a MappedLUN per LUN (mapped n → TPG LUN n) and its own CHAP
credentials, one network portal, authentication on, demo mode (``generate_node_acls``) never: it
would let every initiator see every disk.

Why not rtslib's listings: ``RTSRoot().targets`` and ``.storage_objects`` build an object (with stats
and realpaths) for every target and backstore, and ``StorageObject.delete`` walks every target's LUNs
to find the ones attached; in the TCG VM the 300th target cost 10× the 1st. So:

- ``observe`` reads ``/sys/kernel/config/target`` itself: per target a handful of small files
  (``tpgt_1/{enable,attrib/*}``, ``lun/lun_N`` → backstore symlink, ``acls/<initiator>/{auth/*,lun_N,
  info}``, ``np/<ip:port>``, the backstore's ``udev_path``, LUN statistics). ``observe(None)`` lists
  ``iscsi/`` once and reads each target; ``observe([iqn])`` reads that target's directory only.
- Writes go through rtslib objects looked up or created by path (``Target(fm, iqn)``, ``TPG(t, 1)``,
  ``NodeACL``, ``LUN``, ``MappedLUN``, ``NetworkPortal``, ``FileIOStorageObject(name, index=i)``);
  CHAP is changed in place on the ACL, a LUN's file by a new backstore under the same LUN.
- Each backstore lives in its own HBA directory ``core/fileio_<i>``, as rtslib makes them. ggnet picks
  ``i`` from a hash of the backstore's name in a window of 8 slots high in the index space (rtslib and
  targetcli count up from 0), so a backstore is found by name with at most 8 ``stat`` calls —
  also the leftover of an interrupted run — instead of a walk over every HBA. It is removed with two
  ``rmdir`` (what rtslib's delete does underneath, minus the walk).

rtslib is synchronous: every write runs in a worker thread under one process-wide lock. Reads take no
lock (each configfs file is read atomically; a read racing a write sees either side).
"""

from __future__ import annotations

import asyncio
import os
import threading
import zlib
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

from ..errors import BackendUnavailable, NotFound
from ..log import get_logger
from .base import (
    BackendHealth,
    InitiatorSession,
    LunIO,
    ObservedTarget,
    TargetSpec,
    check_spec,
    portal_text,
)
from .diff import FIELDS, target_diff

CONFIGFS = Path("/sys/kernel/config/target")
TPG_TAG = 1
FIRST_LUN = 0
HBA_SLOTS = 8  # the window of HBA indexes a backstore may live in
_HBA_BASE = 1 << 19  # ggnet's indexes: 524288..1048575 (rtslib allows up to 1048575)

# one lock for every rtslib write in this process, whichever LioBackend instance makes it
_RTSLIB_LOCK = threading.Lock()

T = TypeVar("T")


# --------------------------------------------------------------------------- naming (pure)


def backstore_name(target_iqn: str, lun: int) -> str:
    """The FileIO backstore of a target's LUN: named after both (IQNs hold no '/', space or '_')."""
    return f"{target_iqn.strip().lower()}-lun{lun}"


def _ours(backstore: str, target_iqn: str) -> bool:
    """Made by ggnet for this target (the first version named its one backstore after the IQN)."""
    iqn = target_iqn.strip().lower()
    return backstore == iqn or backstore.startswith(f"{iqn}-lun")


def hba_slots(name: str) -> list[int]:
    """The HBA indexes backstore ``name`` may use, in the order they are tried."""
    start = zlib.crc32(name.encode())
    return [_HBA_BASE + (start + k) % _HBA_BASE for k in range(HBA_SLOTS)]


# --------------------------------------------------------------------------- reading configfs (no rtslib)


def _read(path: str) -> str | None:
    """A small configfs file's text (three system calls: no buffered file object), None if unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 65536).decode(errors="replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)


def _auth(path: str) -> str:
    value = _read(path) or ""
    return "" if value == "NULL" else value  # the kernel's word for "unset"


def _numbered(directory: str, prefix: str) -> dict[int, str]:
    """``lun_3`` → 3 for the entries of ``directory`` named ``<prefix><number>``."""
    found: dict[int, str] = {}
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                number = entry.name[len(prefix) :]
                if entry.name.startswith(prefix) and number.isdigit():
                    found[int(number)] = entry.path
    except OSError:
        pass
    return found


def _dirs(path: str) -> dict[str, str]:
    """Name → path of the subdirectories of ``path``."""
    try:
        with os.scandir(path) as entries:
            return {e.name: e.path for e in entries if e.is_dir(follow_symlinks=False)}
    except OSError:
        return {}


def _link_in(directory: str) -> str | None:
    """Where the one symlink inside a LUN or MappedLUN directory points (absolute), if any."""
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_symlink():
                    return os.path.normpath(os.path.join(directory, os.readlink(entry.path)))
    except OSError:
        pass
    return None


def backing_of(backstore: str | os.PathLike[str]) -> str | None:
    """The file a FileIO backstore serves (rtslib writes it to ``udev_path``; ``info`` has it too);
    None for other kinds (block, ramdisk, pscsi, user)."""
    backstore = os.fspath(backstore)
    if not os.path.basename(os.path.dirname(backstore)).startswith("fileio_"):
        return None
    path = _read(os.path.join(backstore, "udev_path"))
    if not path:
        info = (_read(os.path.join(backstore, "info")) or "").split()
        path = info[info.index("File:") + 1] if "File:" in info[:-1] else None
    return os.path.normpath(path) if path else None


def parse_acl_info(initiator: str, text: str | None) -> InitiatorSession | None:
    """An ``InitiatorSession`` from an ACL's configfs ``info`` file, or None unless logged in.

    Logged in, the kernel (6.1) writes ``Session State: TARG_SESS_STATE_LOGGED_IN`` and per connection
    ``CID: 0  Connection State: TARG_CONN_STATE_LOGGED_IN`` then ``   Address 10.0.2.2 TCP  StatSN: ...``."""
    if not text or "TARG_SESS_STATE_LOGGED_IN" not in text:
        return None
    addresses: list[tuple[bool, str]] = []  # (connection logged in, address)
    live = False
    for line in text.splitlines():
        words = line.split()
        if "Connection State:" in line:
            live = "TARG_CONN_STATE_LOGGED_IN" in line
        elif words[:1] == ["Address"] and len(words) > 1:
            addresses.append((live, words[1]))
    chosen = [a for ok, a in addresses if ok] or [a for _, a in addresses]
    return InitiatorSession(initiator, chosen[0] if chosen else None)


def read_target(root: str | os.PathLike[str], iqn: str) -> ObservedTarget | None:
    """One target as configfs holds it (``root`` is /sys/kernel/config/target), None if absent.

    LUNs are those the ACL maps, numbered as the initiator sees them (a TPG LUN no ACL maps is
    invisible without demo mode; with no ACL at all, the TPG's LUNs). ACLs and portals of every TPG
    count; ``enabled`` needs TPG 1 enabled with authentication on, demo mode off, and no other TPG.
    Plain ``os`` calls on strings: this runs for every target of every pass."""
    join = os.path.join
    name = iqn.strip().lower()
    target = join(root, "iscsi", name)
    tpgs = _numbered(target, "tpgt_")
    if not tpgs and not os.path.isdir(target):
        return None
    tpg = tpgs.get(TPG_TAG)
    acls: dict[str, str] = {}
    portals: list[str] = []
    for path in tpgs.values():
        acls.update(_dirs(join(path, "acls")))
        portals += _dirs(join(path, "np"))
    tpg_luns: dict[int, str | None] = {}
    lun_dirs = _numbered(join(tpg, "lun"), "lun_") if tpg else {}
    for number, lun_dir in lun_dirs.items():
        backstore = _link_in(lun_dir)
        tpg_luns[number] = backing_of(backstore) if backstore else None
    luns = tpg_luns if not acls else _mapped(acls.values(), lun_dirs, tpg_luns)
    enabled = (
        tpg is not None
        and len(tpgs) == 1
        and _read(join(tpg, "enable")) == "1"
        and _read(join(tpg, "attrib", "authentication")) == "1"
        and _read(join(tpg, "attrib", "generate_node_acls")) == "0"
    )
    names = sorted(acls)
    sessions = [s for acl in names if (s := parse_acl_info(acl, _read(join(acls[acl], "info"))))]
    io: dict[int, LunIO] = {}
    for number in luns:
        if number in lun_dirs:
            stats = join(lun_dirs[number], "statistics", "scsi_tgt_port")
            read, written = _read(join(stats, "read_mbytes")), _read(join(stats, "write_mbytes"))
            if read and written and read.isdigit() and written.isdigit():
                io[number] = LunIO(int(read) << 20, int(written) << 20)  # the kernel counts whole MiB
    return ObservedTarget(
        iqn=name,
        luns=luns,
        acls=names,
        chap_users=[user for acl in names if (user := _auth(join(acls[acl], "auth", "userid")))],
        chap_secret=_auth(join(acls[names[0]], "auth", "password")) if names else None,
        portals=sorted(portals),
        enabled=enabled,
        sessions=sessions,
        io=io,
    )


def _mapped(acls: Collection[str], lun_dirs: dict[int, str], tpg_luns: dict[int, str | None]) -> dict[int, str | None]:
    """The LUNs every ACL maps: n → the file of TPG LUN n, or None when n points anywhere else."""
    per_acl = [
        {n: _link_in(m) for n, m in _numbered(acl, "lun_").items()}  # mapped LUN → the TPG LUN it links
        for acl in acls
    ]
    common = set.intersection(*(set(m) for m in per_acl))
    return {n: tpg_luns.get(n) if all(m[n] == lun_dirs.get(n) for m in per_acl) else None for n in sorted(common)}


def read_targets(root: str | os.PathLike[str], iqns: Collection[str] | None) -> dict[str, ObservedTarget]:
    if iqns is None:  # every target directory (iscsi/ also holds discovery_auth, which is none)
        names = [n for n in _dirs(os.path.join(root, "iscsi")) if n.lower().startswith(("iqn.", "eui.", "naa."))]
    else:
        names = list(dict.fromkeys(i.strip().lower() for i in iqns))
    found = {name.lower(): read_target(root, name) for name in names}
    return {key: target for key, target in found.items() if target is not None}


def assess_health(mounts: str, target_core_loaded: bool, rtslib_error: str | None) -> BackendHealth:
    """Health from /proc/mounts, whether target_core_mod is loaded and whether rtslib-fb imports."""
    configfs = any(
        len(parts) >= 3 and parts[2] == "configfs" and parts[1] == "/sys/kernel/config"
        for parts in (line.split() for line in mounts.splitlines())
    )
    if not configfs:
        return BackendHealth(
            False,
            "no kernel LIO: configfs is not mounted at /sys/kernel/config "
            "(modprobe configfs; mount -t configfs none /sys/kernel/config)",
        )
    if not target_core_loaded:
        return BackendHealth(
            False,
            "no kernel LIO: the target_core_mod kernel module is not loaded "
            "(modprobe target_core_mod iscsi_target_mod)",
        )
    if rtslib_error:
        return BackendHealth(False, f"kernel LIO is present but rtslib-fb cannot be loaded: {rtslib_error}")
    return BackendHealth(True, "kernel LIO ready: configfs mounted and target_core_mod loaded")


# --------------------------------------------------------------------------- rtslib access


def _rtslib() -> Any:
    """rtslib_fb, imported on first use (its import opens libudev)."""
    try:
        import rtslib_fb
    except (ImportError, OSError) as exc:
        raise BackendUnavailable(f"rtslib-fb cannot be loaded: {exc}") from None
    return rtslib_fb


def _rtslib_errors(rtslib: Any) -> tuple[type[BaseException], type[BaseException]]:
    """(RTSLibError, the not-in-configfs error): 2.2 (PyPI) renamed RTSLibNotInCFS to RTSLibNotInCFSError."""
    not_in_cfs = getattr(rtslib, "RTSLibNotInCFSError", None) or rtslib.RTSLibNotInCFS
    return rtslib.RTSLibError, not_in_cfs


class LioBackend:
    name = "lio"
    first_lun = FIRST_LUN

    def __init__(self, root: Path = CONFIGFS) -> None:
        self.root = root
        self._fabric: Any = None

    async def _run(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread under the process-wide rtslib lock; its rtslib or OS errors
        become one sentence."""

        def locked() -> T:
            with _RTSLIB_LOCK:
                return fn(*args)

        rtslib = await asyncio.to_thread(_rtslib)  # the first import opens libudev: not on the loop
        rtslib_error, _ = _rtslib_errors(rtslib)
        try:
            return await asyncio.to_thread(locked)
        except (rtslib_error, OSError) as exc:
            get_logger().warning("lio call failed", action=what, error=str(exc))
            raise BackendUnavailable(f"LIO could not {what}: {exc}") from None

    # -- the protocol

    async def health(self) -> BackendHealth:
        def probe() -> BackendHealth:
            try:
                mounts = Path("/proc/mounts").read_text()
            except OSError as exc:
                return BackendHealth(False, f"no kernel LIO: cannot read /proc/mounts ({exc.strerror})")
            try:
                _rtslib()
                error = None
            except BackendUnavailable as exc:
                error = str(exc)
            return assess_health(mounts, Path("/sys/module/target_core_mod").is_dir(), error)

        return await asyncio.to_thread(probe)

    async def observe(self, iqns: Collection[str] | None = None) -> dict[str, ObservedTarget]:
        return await asyncio.to_thread(read_targets, self.root, iqns)

    async def verify_chap(self, spec: TargetSpec) -> bool | None:
        return None  # observe() reads the secret: target_diff compares it

    async def unbound_accounts(self, users: Collection[str]) -> list[str]:
        return []  # LIO keeps CHAP credentials in a target's ACL: nothing outlives its target

    async def delete_unbound_account(self, user: str, iqn: str) -> bool:
        return False

    async def apply(self, spec: TargetSpec, observed: ObservedTarget | None = None) -> list[str]:
        check_spec(spec)
        for lun in spec.luns:  # before anything changes
            if not Path(lun.backing_file).exists():
                raise NotFound(f"writeback {lun.backing_file} does not exist; cannot serve target {spec.iqn}")
        if observed is not None and not target_diff(observed, spec):
            return []  # the caller's fresh view says there is nothing to do
        return await self._run(f"apply target {spec.iqn}", self._apply, spec)

    async def delete(self, iqn: str) -> None:
        await self._run(f"delete target {iqn}", self._delete, iqn)

    # -- the rest runs in a worker thread, under _RTSLIB_LOCK

    def _fabric_module(self) -> Any:
        if self._fabric is None:
            self._fabric = _rtslib().FabricModule("iscsi")
        return self._fabric

    def _apply(self, spec: TargetSpec) -> list[str]:
        rtslib = _rtslib()
        observed = read_target(self.root, spec.iqn)  # fresh, under the lock
        diffs = target_diff(observed, spec)
        if not diffs:
            return []
        target = rtslib.Target(self._fabric_module(), spec.iqn, mode="any")
        try:
            self._converge(rtslib, target, spec)
        except BaseException:
            if observed is None:  # leave no half-built target (an interrupted run leaves one disabled)
                try:
                    self._delete(spec.iqn)
                except Exception as exc:  # the original error matters more
                    get_logger().warning("lio undo failed", target=spec.iqn, error=str(exc))
            raise
        changed = ["missing"] if observed is None else [f for f in FIELDS if f in diffs]
        get_logger().info("lio target applied", target=spec.iqn, changed=changed)
        return changed

    def _converge(self, rtslib: Any, target: Any, spec: TargetSpec) -> None:
        """Every step reads configfs and changes only what differs, tightest first: no state in between
        lets in anyone the end state would not."""
        join = os.path.join
        tpg = rtslib.TPG(target, TPG_TAG, mode="any")
        for tag in _numbered(target.path, "tpgt_"):
            if tag != TPG_TAG:  # another TPG would have its own ACLs and portals
                rtslib.TPG(target, tag, mode="lookup").delete()
        for name, value in (("generate_node_acls", "0"), ("authentication", "1")):
            if _read(join(tpg.path, "attrib", name)) != value:
                tpg.set_attribute(name, value)
        wanted_acl = spec.initiator_iqn.strip().lower()
        for acl_name in _dirs(join(tpg.path, "acls")):
            if acl_name.lower() != wanted_acl:
                rtslib.NodeACL(tpg, acl_name, mode="lookup").delete()
        acl = rtslib.NodeACL(tpg, wanted_acl, mode="any")  # a new ACL has no secret: closed until set
        # in place; the secret before the user, so no moment pairs the new user with the old secret
        if _auth(join(acl.path, "auth", "password")) != spec.chap_secret:
            acl.chap_password = spec.chap_secret
        if _auth(join(acl.path, "auth", "userid")) != spec.chap_username:
            acl.chap_userid = spec.chap_username
        self._converge_luns(rtslib, tpg, acl, spec)
        self._converge_portal(rtslib, tpg, spec)
        if _read(join(tpg.path, "enable")) != "1":
            tpg.enable = True

    def _converge_luns(self, rtslib: Any, tpg: Any, acl: Any, spec: TargetSpec) -> None:
        luns_dir = os.path.join(tpg.path, "lun")
        wanted = {lun.lun: os.path.normpath(lun.backing_file) for lun in spec.luns}
        for number, mapped_dir in _numbered(acl.path, "lun_").items():
            if _link_in(mapped_dir) is None:  # made, not yet linked, when a run was killed: rtslib chokes on it
                rtslib.MappedLUN(acl, number).delete()
        for number, lun_dir in _numbered(luns_dir, "lun_").items():
            backstore = _link_in(lun_dir)
            if wanted.get(number) is not None and backstore is not None and backing_of(backstore) == wanted[number]:
                continue
            rtslib.LUN(tpg, number).delete()  # and the MappedLUNs that point at it
            if backstore is not None and _ours(os.path.basename(backstore), spec.iqn):
                self._remove_backstore(Path(backstore))
        current = _numbered(luns_dir, "lun_")
        for number, path in sorted(wanted.items()):
            if number not in current:
                storage = self._new_backstore(rtslib, backstore_name(spec.iqn, number), path)
                rtslib.LUN(tpg, number, storage_object=storage)
                current[number] = os.path.join(luns_dir, f"lun_{number}")
        for number, mapped_dir in _numbered(acl.path, "lun_").items():
            if number not in wanted or _link_in(mapped_dir) != os.path.normpath(current.get(number, "")):
                rtslib.MappedLUN(acl, number).delete()
        mapped = _numbered(acl.path, "lun_")
        for number in sorted(wanted):
            if number not in mapped:
                rtslib.MappedLUN(acl, number, number, write_protect=False)

    def _converge_portal(self, rtslib: Any, tpg: Any, spec: TargetSpec) -> None:
        wanted = portal_text(spec.portal_host, spec.portal_port)
        for name in _dirs(os.path.join(tpg.path, "np")):
            if name != wanted:
                address, _, port = name.rpartition(":")
                rtslib.NetworkPortal(tpg, address, int(port), mode="lookup").delete()
        address, _, _ = wanted.rpartition(":")
        rtslib.NetworkPortal(tpg, address, spec.portal_port, mode="any")

    def _new_backstore(self, rtslib: Any, name: str, path: str) -> Any:
        """A FileIO backstore ``name`` serving ``path``, in the first free slot of its window (a leftover
        of an interrupted run under the same name is removed first: it may hold an older file open)."""
        core = self.root / "core"
        for index in hba_slots(name):
            leftover = core / f"fileio_{index}" / name
            if leftover.is_dir():
                self._remove_backstore(leftover)
        size = os.stat(path).st_size
        rtslib_error, _ = _rtslib_errors(rtslib)
        for index in hba_slots(name):
            hba = core / f"fileio_{index}"
            if _dirs(str(hba)):
                continue  # another backstore's (an HBA alone, a killed run's, rtslib reuses)
            try:
                return rtslib.FileIOStorageObject(name, dev=path, size=size, write_back=False, index=index)
            except rtslib_error as exc:
                if "exists" not in str(exc):
                    raise
        raise BackendUnavailable(f"LIO has no free backstore slot for {name} (HBA indexes {hba_slots(name)})")

    def _remove_backstore(self, backstore: Path) -> None:
        """``rmdir`` the backstore and its HBA (rtslib's StorageObject.delete first walks every target's
        LUNs; ggnet has removed this backstore's LUNs already)."""
        try:
            backstore.rmdir()
        except FileNotFoundError:
            pass
        try:
            backstore.parent.rmdir()
        except OSError:
            pass  # not empty: another backstore shares the HBA

    def _delete(self, iqn: str) -> None:
        rtslib = _rtslib()
        _, not_in_cfs = _rtslib_errors(rtslib)
        target_dir = os.path.join(self.root, "iscsi", iqn.strip().lower())
        backstores: list[str] = []
        existed = os.path.isdir(target_dir)
        if existed:
            for tpg_dir in _numbered(target_dir, "tpgt_").values():
                lun_dirs = _numbered(os.path.join(tpg_dir, "lun"), "lun_").values()
                backstores += [b for d in lun_dirs if (b := _link_in(d))]
            try:
                # rtslib deletes children first; each TPG is disabled first, which ends its sessions
                rtslib.Target(self._fabric_module(), iqn, mode="lookup").delete()
            except not_in_cfs:
                pass  # gone meanwhile
        for backstore in backstores:
            if _ours(os.path.basename(backstore), iqn):
                self._remove_backstore(Path(backstore))
        for number in range(4):  # leftovers of an interrupted apply (system and game disk on either stack)
            name = backstore_name(iqn, number)
            for index in hba_slots(name):
                hba = self.root / "core" / f"fileio_{index}"
                if (hba / name).is_dir():
                    self._remove_backstore(hba / name)
                elif hba.is_dir() and not _dirs(str(hba)):
                    hba.rmdir()  # made, still without a backstore, when a run was killed
        get_logger().info("lio target deleted", target=iqn, existed=existed)
