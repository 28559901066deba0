"""Desired state (the database) against actual state (the target stack, writeback files).

Pure comparison only; ``core.services.targets.reconcile`` applies the repairs. ggnet owns
exactly the targets whose IQN starts with ``<IQN base>:`` and the writeback files it names
``machine-<id>.raw``; everything else is never touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .iscsi.base import ActualTarget, TargetSpec

WRITEBACK_NAME = re.compile(r"^machine-\d+\.raw$")


@dataclass(frozen=True)
class DesiredTarget:
    machine: str
    session_id: int
    spec: TargetSpec
    source_image: Path  # to recreate a lost writeback from


@dataclass(frozen=True)
class Drift:
    kind: str  # missing-target, wrong-target, stray-target, missing-writeback, stray-writeback
    subject: str  # an IQN or a file path
    machine: str | None
    repair: str  # what reconcile does about it, in words

    def to_json(self) -> dict[str, str | None]:
        return {"kind": self.kind, "subject": self.subject, "machine": self.machine, "repair": self.repair}


def owns(iqn: str, iqn_base: str) -> bool:
    return iqn.lower().startswith(iqn_base.lower() + ":")


def _matches(actual: ActualTarget, spec: TargetSpec) -> bool:
    acls = {a.lower() for a in actual.acls}
    backing_ok = actual.backing_file is None or Path(actual.backing_file) == spec.backing_file
    return spec.initiator_iqn.lower() in acls and len(acls) == 1 and backing_ok


def compare_targets(desired: list[DesiredTarget], actual: list[ActualTarget], iqn_base: str) -> list[Drift]:
    drift: list[Drift] = []
    actual_by_iqn = {t.iqn.lower(): t for t in actual}
    wanted = {d.spec.iqn.lower() for d in desired}
    for item in desired:
        found = actual_by_iqn.get(item.spec.iqn.lower())
        if found is None:
            drift.append(Drift("missing-target", item.spec.iqn, item.machine, "create the target"))
        elif not _matches(found, item.spec):
            drift.append(
                Drift(
                    "wrong-target", item.spec.iqn, item.machine, "recreate the target with the machine's disk and ACL"
                )
            )
    for target in actual:
        if owns(target.iqn, iqn_base) and target.iqn.lower() not in wanted:
            drift.append(Drift("stray-target", target.iqn, None, "delete the target (no session wants it)"))
    return drift


def compare_writebacks(desired: list[DesiredTarget], kept: set[Path], writeback_dir: Path) -> list[Drift]:
    """Missing writebacks of running sessions, and ggnet-named files no session owns."""
    drift: list[Drift] = []
    for item in desired:
        if not item.spec.backing_file.exists():
            drift.append(
                Drift(
                    "missing-writeback",
                    str(item.spec.backing_file),
                    item.machine,
                    "recreate the writeback from the image version",
                )
            )
    in_use = {d.spec.backing_file for d in desired} | kept
    if writeback_dir.is_dir():
        for path in sorted(writeback_dir.iterdir()):
            if WRITEBACK_NAME.match(path.name) and path not in in_use:
                drift.append(Drift("stray-writeback", str(path), None, "delete the file (no session owns it)"))
    return drift
