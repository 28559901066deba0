"""LioBackend on kernel LIO in a VM (see lio_vm/): the drift table, several LUNs, CHAP changed in place
under a logged-in initiator, leftovers of interrupted runs, and delete under load.

One VM serves the whole module (its tests run in file order). Drift is made behind ggnet's back with
rtslib-fb and plain configfs calls inside the VM (the agent's ``exec``), the way targetcli or a person
would. Initiators are libiscsi's iscsi-inq / iscsi-perf / iscsi-readcapacity16 on the host, reaching
the VM's portal through QEMU's port forward.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.iscsi.base import InitiatorSession, LunIO, LunSpec, ObservedTarget, TargetSpec
from core.iscsi.diff import find_drift, target_diff
from core.iscsi.lio import backstore_name, hba_slots
from tests.e2e import libiscsi
from tests.e2e.lio_vm import LioVm, LioVmError, ensure_initramfs, ensure_kernel, missing_prerequisites
from tests.e2e.test_lio_boot import IN_CI

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TARGET = "iqn.2024-01.lan.ggnet:pc01"
INITIATOR = "iqn.2024-01.lan.ggnet.client:pc01"
SECRET = "pc01-chap-secret"
TPG = f"target/iscsi/{TARGET}/tpgt_1"
PRELUDE = f"""
fm = rtslib_fb.FabricModule("iscsi")
target = rtslib_fb.Target(fm, {TARGET!r}, mode="lookup")
tpg = rtslib_fb.TPG(target, 1, mode="lookup")
acl = rtslib_fb.NodeACL(tpg, {INITIATOR!r}, mode="lookup")
"""


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LioVm]:
    reason = missing_prerequisites() or libiscsi.unavailable()
    if reason:
        if IN_CI:
            pytest.fail(f"the kernel-LIO end-to-end test must run in CI: {reason}")
        pytest.skip(reason)
    try:
        ensure_initramfs(ensure_kernel())
    except (LioVmError, OSError) as exc:
        pytest.skip(f"cannot prepare the LIO VM's kernel: {exc}")
    with LioVm(tmp_path_factory.mktemp("liovm")) as machine:
        yield machine


def disk(vm: LioVm, name: str, mib: int) -> Path:
    path = vm.workdir / name  # the work directory is the VM's read-write 9p share
    if not path.exists():
        with open(path, "wb") as f:
            f.truncate(mib << 20)
    return path


def spec_for(vm: LioVm, **changes: object) -> TargetSpec:
    spec = TargetSpec(
        iqn=TARGET,
        luns=(LunSpec(0, disk(vm, "pc01.img", 8)), LunSpec(1, disk(vm, "game.img", 12))),
        initiator_iqn=INITIATOR,
        chap_username="pc01",
        chap_secret=SECRET,
        portal_host="0.0.0.0",
        portal_port=3260,
    )
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def as_json(spec: TargetSpec) -> dict[str, object]:
    data = dataclasses.asdict(spec)
    data["luns"] = [[lun.lun, str(lun.backing_file)] for lun in spec.luns]
    return data


def observe(vm: LioVm, iqn: str = TARGET) -> ObservedTarget | None:
    found = vm.call("observe", iqns=[iqn]).get(iqn)
    if found is None:
        return None
    found["luns"] = {int(k): v for k, v in found["luns"].items()}
    found["io"] = {int(k): LunIO(**v) for k, v in found["io"].items()}
    found["sessions"] = [InitiatorSession(**s) for s in found["sessions"]]
    return ObservedTarget(**found)


def backstores(vm: LioVm) -> list[str]:
    names = []
    for hba in vm.call("ls", path="target/core"):
        if hba.startswith("fileio_"):
            names += [n for n in vm.call("ls", path=f"target/core/{hba}") if n not in ("hba_info", "hba_mode")]
    return sorted(names)


def login(vm: LioVm, lun: int, secret: str = SECRET, initiator: str = INITIATOR) -> subprocess.CompletedProcess[str]:
    return libiscsi.inquiry("127.0.0.1", vm.port, TARGET, lun, initiator, "pc01", secret)


def capacity(vm: LioVm, lun: int) -> int:
    done = subprocess.run(["iscsi-readcapacity16", "-i", INITIATOR, libiscsi.url("127.0.0.1", vm.port, TARGET, lun)],
                          env=libiscsi._env("pc01", SECRET), capture_output=True, text=True, timeout=60,
                          check=True)  # fmt: skip
    return int(next(line for line in done.stdout.splitlines() if "Total size" in line).split(":")[1])


def test_several_luns_each_serve_their_own_file(vm: LioVm) -> None:
    spec = spec_for(vm)
    assert vm.call("apply", spec=as_json(spec)) == ["missing"]
    assert vm.call("apply", spec=as_json(spec)) == []
    observed = observe(vm)
    assert observed is not None and target_diff(observed, spec) == []
    assert observed.luns == {0: str(spec.luns[0].backing_file), 1: str(spec.luns[1].backing_file)}
    assert vm.call("read", path=f"{TPG}/attrib/generate_node_acls").strip() == "0"  # never demo mode
    assert vm.call("read", path=f"{TPG}/attrib/authentication").strip() == "1"
    acl_entries = vm.call("ls", path=f"{TPG}/acls/{INITIATOR}")
    assert [e for e in acl_entries if e.startswith("lun_")] == ["lun_0", "lun_1"]  # each mapped as itself
    assert backstores(vm) == [backstore_name(TARGET, 0), backstore_name(TARGET, 1)]
    # a real initiator sees each LUN with its own file's size
    assert (capacity(vm, 0), capacity(vm, 1)) == (8 << 20, 12 << 20)
    assert login(vm, 0).returncode == 0
    assert login(vm, 0, secret="not-the-secret-1").returncode != 0
    assert login(vm, 0, initiator="iqn.2024-01.lan.ggnet.client:pc02").returncode != 0


# each field of the vocabulary changed behind ggnet's back, inside the VM
DRIFT = {
    "portal removed": ("portal", f"os.rmdir(CONFIGFS / {TPG + '/np/0.0.0.0:3260'!r})"),
    "game LUN removed": ("lun", "rtslib_fb.LUN(tpg, 1).delete()"),
    "backing file swapped": ("backing_file", """
rtslib_fb.LUN(tpg, 0).delete()
so = rtslib_fb.FileIOStorageObject("someone-elses", dev=WORK + "/other.img", size=4 << 20, index=7)
rtslib_fb.MappedLUN(acl, 0, rtslib_fb.LUN(tpg, 0, storage_object=so))
"""),
    "initiator replaced": ("acl", """
acl.delete()
other = rtslib_fb.NodeACL(tpg, "iqn.2024-01.lan.ggnet.client:intruder", mode="create")
other.chap_userid, other.chap_password = "pc01", SECRET
rtslib_fb.MappedLUN(other, 0, 0)
rtslib_fb.MappedLUN(other, 1, 1)
"""),
    "user renamed": ("chap_user", "acl.chap_userid = 'renamed'"),
    "user unset": ("chap_user", "acl.chap_userid = ''"),
    "secret replaced": ("chap_secret", "acl.chap_password = 'someone-elses-1'"),
    "disabled": ("enabled", "tpg.enable = False"),
    "authentication off": ("enabled", "tpg.set_attribute('authentication', '0')"),
    "demo mode": ("enabled", "tpg.set_attribute('generate_node_acls', '1')"),
}  # fmt: skip


@pytest.mark.parametrize("change", list(DRIFT))
def test_drift_behind_ggnets_back_is_found_and_repaired_in_place(vm: LioVm, change: str) -> None:
    spec = spec_for(vm)
    vm.call("apply", spec=as_json(spec))
    assert target_diff(observe(vm), spec) == []
    # a mark only the same TPG keeps: a target deleted and recreated would be back at the default (2)
    vm.call("exec", code=f"{PRELUDE}\ntpg.set_attribute('netif_timeout', '7')")
    field, code = DRIFT[change]
    disk(vm, "other.img", 4)
    vm.call("exec", code=f"WORK = {str(vm.workdir)!r}\nSECRET = {SECRET!r}\n{PRELUDE}\n{code}")

    assert target_diff(observe(vm), spec) == [field]
    assert vm.call("apply", spec=as_json(spec)) == [field]
    after = observe(vm)
    assert after is not None and target_diff(after, spec) == [] and after.enabled
    assert vm.call("read", path=f"{TPG}/attrib/netif_timeout").strip() == "7"  # in place
    assert vm.call("ls", path=f"{TPG}/acls") == [INITIATOR] and vm.call("ls", path=f"{TPG}/np") == ["0.0.0.0:3260"]
    assert login(vm, 1).returncode == 0
    if "someone-elses" in backstores(vm):  # not ggnet's to delete; its owner's
        vm.call("exec", code="rtslib_fb.FileIOStorageObject('someone-elses', index=7).delete()")
    assert backstores(vm) == [backstore_name(TARGET, 0), backstore_name(TARGET, 1)]


def test_chap_changes_in_place_under_a_reading_session(vm: LioVm, tmp_path: Path) -> None:
    spec = spec_for(vm)
    vm.call("apply", spec=as_json(spec))
    reader = libiscsi.Reader(tmp_path / "perf.log", "127.0.0.1", vm.port, TARGET, 1, INITIATOR, "pc01", SECRET,
                             in_flight=2)  # fmt: skip
    with reader:
        reader.wait_reading(timeout=60)
        before = observe(vm)
        assert before is not None and before.sessions and before.sessions[0].initiator_iqn == INITIATOR
        next_boot = dataclasses.replace(spec, chap_secret="next-boot-secret")
        assert vm.call("apply", spec=as_json(next_boot)) == ["chap_secret"]
        assert vm.call("read", path=f"{TPG}/acls/{INITIATOR}/auth/password").strip() == "next-boot-secret"
        assert login(vm, 0, secret=SECRET).returncode != 0  # the old secret no longer logs in
        assert login(vm, 0, secret="next-boot-secret").returncode == 0
        time.sleep(1.5)  # iscsi-perf reports once a second
        after = observe(vm)
        assert reader.running() and "Read16 failed" not in reader.output(), reader.output()[-500:]
    assert after is not None and after.sessions == before.sessions  # the same session, still logged in
    assert after.io[1].read_bytes >= before.io[1].read_bytes
    vm.call("apply", spec=as_json(spec))


def test_leftovers_of_interrupted_runs_are_completed_or_removed(vm: LioVm) -> None:
    spec = spec_for(vm)
    vm.call("delete", iqn=TARGET)
    assert backstores(vm) == []
    # an apply killed after it made the game disk's backstore and the bare target, before anything else
    slot = hba_slots(backstore_name(TARGET, 1))[0]
    vm.call(
        "exec",
        code=f"""
rtslib_fb.FileIOStorageObject({backstore_name(TARGET, 1)!r}, dev={str(spec.luns[1].backing_file)!r},
                              size=12 << 20, index={slot})
target = rtslib_fb.Target(rtslib_fb.FabricModule("iscsi"), {TARGET!r}, mode="create")
rtslib_fb.TPG(target, 1, mode="create")
""",
    )
    half = observe(vm)
    assert half is not None and not half.enabled
    assert find_drift_names(vm, spec) == ["portal", "lun", "acl", "chap_user", "enabled"]
    assert vm.call("apply", spec=as_json(spec)) == ["portal", "lun", "acl", "chap_user", "enabled"]
    assert target_diff(observe(vm), spec) == []
    assert backstores(vm) == [backstore_name(TARGET, 0), backstore_name(TARGET, 1)]  # the leftover replaced
    # a delete killed after the target went, before its backstores did: the next delete finds them by name
    vm.call("exec", code=f"rtslib_fb.Target(rtslib_fb.FabricModule('iscsi'), {TARGET!r}, mode='lookup').delete()")
    assert observe(vm) is None and len(backstores(vm)) == 2
    vm.call("delete", iqn=TARGET)
    assert backstores(vm) == []


def find_drift_names(vm: LioVm, spec: TargetSpec) -> list[str]:
    import asyncio

    class NoProbe:  # LIO shows the secret: find_drift never asks the backend
        async def verify_chap(self, spec: TargetSpec) -> bool | None:
            raise AssertionError("LIO needs no login probe")

    return asyncio.run(find_drift(NoProbe(), spec, observe(vm)))  # type: ignore[arg-type]


KILL_LOOP = """
import json, os, pathlib
from core.iscsi import lio
from core.iscsi.base import LunSpec, TargetSpec
from core.iscsi.diff import target_diff

class Killed(BaseException):  # the process died here: nothing may catch it
    pass

def spec(data):
    data = dict(data)
    data["luns"] = tuple(LunSpec(n, pathlib.Path(p)) for n, p in data["luns"])
    return TargetSpec(**data)

OLD, NEW = spec(json.loads(OLD_JSON)), spec(json.loads(NEW_JSON))
WRITES = [(pathlib.Path, "write_text"), (pathlib.Path, "mkdir"), (pathlib.Path, "rmdir"), (pathlib.Path, "unlink"),
          (os, "symlink")]
originals = {(owner, name): getattr(owner, name) for owner, name in WRITES}

def dying_after(limit, count):
    for (owner, name), original in originals.items():
        def wrapper(*args, _original=original, **kwargs):
            if str(args[0]).startswith("/sys/kernel/config"):
                count[0] += 1
                if count[0] >= limit:
                    raise Killed()
            return _original(*args, **kwargs)
        setattr(owner, name, wrapper)

def heal():
    for (owner, name), original in originals.items():
        setattr(owner, name, original)

def backstores():
    core = "/sys/kernel/config/target/core"
    return sorted(n for h in os.listdir(core) if h.startswith("fileio_") for n in os.listdir(f"{core}/{h}")
                  if n not in ("hba_info", "hba_mode"))

def never_open_wider(target):
    tpg = f"/sys/kernel/config/target/iscsi/{target}/tpgt_1"
    if lio._read(tpg + "/enable") == "1":
        assert lio._read(tpg + "/attrib/authentication") == "1", "enabled without authentication"
        assert lio._read(tpg + "/attrib/generate_node_acls") == "0", "enabled in demo mode"
        assert set(lio._dirs(tpg + "/acls")) <= {NEW.initiator_iqn}, "a foreign initiator admitted"

backend = lio.LioBackend()
report = []
for start in ("nothing", "old"):
    count = [0]
    backend._delete(NEW.iqn)
    if start == "old":
        backend._apply(OLD)
    dying_after(10 ** 9, count)
    backend._apply(NEW)
    backend._delete(NEW.iqn)
    heal()
    steps = count[0]
    for kill_at in range(1, steps + 1):
        if start == "old":
            backend._apply(OLD)
        dying_after(kill_at, [0])
        try:
            backend._apply(NEW)
            backend._delete(NEW.iqn)
            raise AssertionError("not killed")
        except Killed:
            pass
        finally:
            heal()
        never_open_wider(NEW.iqn)
        if lio.read_target(lio.CONFIGFS, NEW.iqn) is not None:  # the next process completes it
            backend._apply(NEW)
            assert target_diff(lio.read_target(lio.CONFIGFS, NEW.iqn), NEW) == [], kill_at
            assert backstores() == [lio.backstore_name(NEW.iqn, 0), lio.backstore_name(NEW.iqn, 1)], kill_at
        backend._delete(NEW.iqn)
        assert backstores() == [] and lio.read_target(lio.CONFIGFS, NEW.iqn) is None, (start, kill_at)
        assert not [h for h in os.listdir("/sys/kernel/config/target/core") if h.startswith("fileio_")], kill_at
    report.append((start, steps))
result = report
"""


def test_an_apply_or_delete_killed_at_any_configfs_write_is_completed_by_the_next(vm: LioVm) -> None:
    old = spec_for(vm, luns=(LunSpec(0, disk(vm, "old.img", 8)),), chap_secret="old-boot-secret")
    new = spec_for(vm)
    code = f"OLD_JSON = {json.dumps(as_json(old))!r}\nNEW_JSON = {json.dumps(as_json(new))!r}\n{KILL_LOOP}"
    report = vm.call("exec", code=code, timeout=600)
    print(f"\nkilled at each of {report} configfs writes (from nothing / from the previous boot's target)")
    assert all(steps > 20 for _, steps in report)


def test_delete_while_an_initiator_reads(vm: LioVm, tmp_path: Path) -> None:
    spec = spec_for(vm)
    vm.call("apply", spec=as_json(spec))
    with libiscsi.Reader(tmp_path / "perf.log", "127.0.0.1", vm.port, TARGET, 0, INITIATOR, "pc01", SECRET) as reader:
        reader.wait_reading(timeout=60)
        assert observe(vm).sessions  # type: ignore[union-attr]
        vm.call("delete", iqn=TARGET)
        assert observe(vm) is None and backstores(vm) == []
    assert TARGET not in vm.call("ls", path="target/iscsi")
    print(f"\nLIO VM timings: {json.dumps(vm.timings)}")
