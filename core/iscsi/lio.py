"""Kernel LIO, driven with rtslib-fb.

One target per machine: target ``spec.iqn`` → TPG 1 → LUN 0 on a FileIO backstore (the machine's raw
writeback, named after the target so it can be found and removed), one NodeACL for the machine's
initiator with a MappedLUN and its own CHAP credentials, a network portal, then ``enable``. Never
demo mode (``generate_node_acls``): it would let every initiator see every disk.

rtslib-fb is synchronous and walks configfs; two walks interleaving can see half-built objects. So
every rtslib call runs in a worker thread (never on the event loop) under one process-wide lock.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import BackendUnavailable, NotFound
from ..log import get_logger
from .base import ActualTarget, BackendHealth, InitiatorSession, TargetSpec

TPG_TAG = 1
LUN = 0

# one lock for every rtslib call in this process, whichever LioBackend instance makes it
_RTSLIB_LOCK = threading.Lock()

T = TypeVar("T")


# --- pure helpers (unit-tested without a kernel) ----------------------------------------------


def backstore_name(target_iqn: str) -> str:
    """The FileIO backstore's name for a target: the IQN itself (IQNs hold no '/', space or '_')."""
    return target_iqn.strip().lower()


def session_from_rtslib(initiator_iqn: str, session: Mapping[str, Any] | None) -> InitiatorSession | None:
    """An ``InitiatorSession`` from rtslib's ``NodeACL.session`` dict, or None unless logged in.

    rtslib parses the ACL's configfs ``info`` file into
    ``{"state": "LOGGED_IN", "type": "Normal", "id": 1, "alias": ..., "parent_nodeacl": <NodeACL>,
    "connections": [{"cid": 0, "cstate": "LOGGED_IN", "address": "10.0.2.2", "transport": "TCP"}]}``
    (keys appear only when their line was present).
    """
    if not session or session.get("state") != "LOGGED_IN":
        return None
    connections = [c for c in session.get("connections") or [] if isinstance(c, Mapping)]
    live = [c for c in connections if c.get("cstate") == "LOGGED_IN" and c.get("address")]
    any_address = [c for c in connections if c.get("address")]
    chosen = (live or any_address or [None])[0]
    address = str(chosen["address"]) if chosen else None
    return InitiatorSession(initiator_iqn=initiator_iqn, address=address)


@dataclass
class ObservedAcl:
    chap_userid: str
    chap_password: str
    mapped_luns: list[int] = field(default_factory=list)


@dataclass
class ObservedTarget:
    """What configfs holds for one target, as far as ``TargetSpec`` describes it."""

    tpg_tags: list[int]
    enabled: bool
    authentication: str | None
    generate_node_acls: str | None
    lun_files: dict[int, str | None]  # LUN number → backing file (None: not FileIO)
    acls: dict[str, ObservedAcl]  # initiator IQN (lower case) → ACL
    portals: list[str]  # "ip:port"


def differences(observed: ObservedTarget, spec: TargetSpec) -> list[str]:
    """What keeps an existing target from being the one ``spec`` asks for (empty: identical).

    Names only, never values: the caller logs them and CHAP secrets must stay out of logs.
    """
    diffs: list[str] = []
    if observed.tpg_tags != [TPG_TAG]:
        diffs.append("tpg")
    if not observed.enabled:
        diffs.append("enable")
    if observed.authentication != "1":
        diffs.append("authentication")
    if observed.generate_node_acls != "0":
        diffs.append("generate_node_acls")
    if (
        set(observed.lun_files) != {LUN}
        or observed.lun_files[LUN] is None
        or (os.path.normpath(observed.lun_files[LUN] or "") != os.path.normpath(str(spec.backing_file)))
    ):
        diffs.append("backing_file")
    acl = observed.acls.get(spec.initiator_iqn.lower())
    if set(observed.acls) != {spec.initiator_iqn.lower()} or acl is None:
        diffs.append("acl")
    else:
        if acl.mapped_luns != [LUN]:
            diffs.append("mapped_lun")
        if acl.chap_userid != spec.chap_username or acl.chap_password != spec.chap_secret:
            diffs.append("chap")
    if observed.portals != [f"{spec.portal_host}:{spec.portal_port}"]:
        diffs.append("portal")
    return diffs


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


# --- rtslib access -----------------------------------------------------------------------------


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
    lun = LUN

    async def _run(self, what: str, fn: Callable[..., T], *args: Any) -> T:
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

    async def create_target(self, spec: TargetSpec) -> None:
        await self._run(f"create target {spec.iqn}", self._create, spec)

    async def delete_target(self, iqn: str) -> None:
        await self._run(f"delete target {iqn}", self._delete, iqn)

    async def list_targets(self) -> list[ActualTarget]:
        return await self._run("list targets", self._list)

    # the rest runs in a worker thread, under _RTSLIB_LOCK

    def _iscsi_targets(self) -> list[Any]:
        rtslib = _rtslib()
        root = rtslib.RTSRoot()
        return [t for t in root.targets if t.fabric_module.name == "iscsi"]

    def _find(self, iqn: str) -> Any | None:
        wanted = iqn.strip().lower()
        return next((t for t in self._iscsi_targets() if t.wwn.lower() == wanted), None)

    def _create(self, spec: TargetSpec) -> None:
        rtslib = _rtslib()
        log = get_logger().bind(target=spec.iqn)
        try:  # before anything changes
            size = os.stat(spec.backing_file).st_size
        except FileNotFoundError:
            raise NotFound(f"writeback {spec.backing_file} does not exist; cannot serve target {spec.iqn}") from None
        existing = self._find(spec.iqn)
        if existing is not None:
            diffs = differences(self._observe(existing), spec)
            if not diffs:
                log.info("lio target already as wanted")
                return
            log.info("lio target differs; replacing it", differences=diffs)
            self._delete_target(existing)
        self._delete_backstore(backstore_name(spec.iqn))  # a leftover of an interrupted run
        storage = rtslib.FileIOStorageObject(
            backstore_name(spec.iqn), dev=str(spec.backing_file), size=size, write_back=False
        )
        target = None
        try:
            target = rtslib.Target(rtslib.FabricModule("iscsi"), spec.iqn, mode="create")
            tpg = rtslib.TPG(target, TPG_TAG, mode="create")
            tpg.set_attribute("generate_node_acls", "0")
            tpg.set_attribute("authentication", "1")
            lun = rtslib.LUN(tpg, LUN, storage)
            acl = rtslib.NodeACL(tpg, spec.initiator_iqn, mode="create")
            acl.chap_userid = spec.chap_username
            acl.chap_password = spec.chap_secret
            rtslib.MappedLUN(acl, LUN, lun, write_protect=False)
            rtslib.NetworkPortal(tpg, spec.portal_host, spec.portal_port, mode="create")
            tpg.enable = True
        except BaseException:
            # leave nothing half-built behind
            if target is not None:
                self._delete_target(target)
            self._delete_backstore(backstore_name(spec.iqn))
            raise
        log.info(
            "lio target created",
            backing_file=str(spec.backing_file),
            initiator=spec.initiator_iqn,
            portal=f"{spec.portal_host}:{spec.portal_port}",
        )

    def _delete(self, iqn: str) -> None:
        target = self._find(iqn)
        if target is not None:
            self._delete_target(target)
        self._delete_backstore(backstore_name(iqn))
        get_logger().info("lio target deleted", target=iqn, existed=target is not None)

    def _delete_target(self, target: Any) -> None:
        """Children first: ACLs (with their mapped LUNs), LUNs, portals, TPGs, the target, its backstores."""
        _, not_in_cfs = _rtslib_errors(_rtslib())
        backstores = []
        for tpg in list(target.tpgs):
            tpg.enable = False  # closes the sessions before their ACLs go
            for acl in list(tpg.node_acls):
                for mapped in list(acl.mapped_luns):
                    mapped.delete()
                acl.delete()
            for lun in list(tpg.luns):
                try:
                    backstores.append(lun.storage_object)
                except not_in_cfs:
                    pass
                lun.delete()
            for portal in list(tpg.network_portals):
                portal.delete()
            tpg.delete()
        target.delete()
        for storage in backstores:
            # only ours: a backstore named after this target (someone else's may serve other targets)
            if storage.name == backstore_name(target.wwn):
                self._delete_backstore(storage.name)

    def _delete_backstore(self, name: str) -> None:
        rtslib = _rtslib()
        _, not_in_cfs = _rtslib_errors(rtslib)
        for storage in list(rtslib.RTSRoot().storage_objects):
            if storage.plugin == "fileio" and storage.name == name:
                try:
                    storage.delete()
                except not_in_cfs:
                    pass  # gone meanwhile

    def _observe(self, target: Any) -> ObservedTarget:
        tpgs = list(target.tpgs)
        tpg = next((t for t in tpgs if t.tag == TPG_TAG), tpgs[0] if tpgs else None)
        if tpg is None:
            return ObservedTarget([], False, None, None, {}, {}, [])
        acls = {
            acl.node_wwn.lower(): ObservedAcl(
                chap_userid=acl.chap_userid or "",
                chap_password=acl.chap_password or "",
                mapped_luns=sorted(m.mapped_lun for m in acl.mapped_luns),
            )
            for acl in tpg.node_acls
        }
        return ObservedTarget(
            tpg_tags=sorted(t.tag for t in tpgs),
            enabled=bool(tpg.enable),
            authentication=tpg.get_attribute("authentication"),
            generate_node_acls=tpg.get_attribute("generate_node_acls"),
            lun_files={lun.lun: self._lun_file(lun) for lun in tpg.luns},
            acls=acls,
            portals=sorted(f"{p.ip_address}:{p.port}" for p in tpg.network_portals),
        )

    def _lun_file(self, lun: Any) -> str | None:
        _, not_in_cfs = _rtslib_errors(_rtslib())
        try:
            storage = lun.storage_object
        except not_in_cfs:
            return None
        if storage.plugin != "fileio":
            return None
        return storage.udev_path or None

    def _list(self) -> list[ActualTarget]:
        result = []
        for target in self._iscsi_targets():
            actual = ActualTarget(iqn=target.wwn, lun=None, backing_file=None)
            luns: dict[int, str | None] = {}
            for tpg in target.tpgs:
                for lun in tpg.luns:
                    luns.setdefault(lun.lun, self._lun_file(lun))
                for acl in tpg.node_acls:
                    actual.acls.append(acl.node_wwn)
                    session = session_from_rtslib(acl.node_wwn, acl.session)
                    if session is not None:
                        actual.sessions.append(session)
                actual.portals.extend(f"{p.ip_address}:{p.port}" for p in tpg.network_portals)
            if luns:
                actual.lun = LUN if LUN in luns else min(luns)
                actual.backing_file = luns[actual.lun]
            result.append(actual)
        return result
