"""What a pass saw and did, in words an operator can act on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Drift:
    kind: str  # target, stray-target, stray-account, missing-writeback, stray-writeback, orphan-temporary, boot-file
    subject: str  # an IQN or a file name
    machine: str | None
    fields: tuple[str, ...] = ()  # for a target: what differs (portal, lun, backing_file, acl, chap_user, ...)
    repair: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "machine": self.machine,
            "fields": list(self.fields),
            "repair": self.repair,
        }

    def describe(self) -> str:
        what = f"{self.kind} {self.subject}"
        if self.fields:
            what += f" ({', '.join(self.fields)})"
        return f"{what}: {self.repair}" if self.repair else what


@dataclass
class PassReport:
    dry_run: bool
    drift: list[Drift] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    boots_prepared: int = 0
    boots_ended: int = 0
    writebacks_removed: int = 0
    duration_ms: int = 0
    backend: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "drift": [d.to_json() for d in self.drift],
            "repaired": self.repaired,
            "errors": self.errors,
            "boots_prepared": self.boots_prepared,
            "boots_ended": self.boots_ended,
            "writebacks_removed": self.writebacks_removed,
            "duration_ms": self.duration_ms,
            "backend": self.backend,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PassReport:
        report = cls(dry_run=bool(data.get("dry_run")))
        report.drift = [
            Drift(d["kind"], d["subject"], d.get("machine"), tuple(d.get("fields") or ()), d.get("repair") or "")
            for d in data.get("drift") or []
        ]
        report.repaired = list(data.get("repaired") or [])
        report.errors = list(data.get("errors") or [])
        for key in ("boots_prepared", "boots_ended", "writebacks_removed", "duration_ms"):
            setattr(report, key, int(data.get(key) or 0))
        report.backend = data.get("backend")
        return report
