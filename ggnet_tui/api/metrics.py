"""`GET /metrics` in Prometheus' text format (prometheus_client).

Counters and histograms are fed by this process: the engine's live events (boots, passes) and
the boot endpoint's timing. Fleet figures (machines by status, writeback bytes, free space,
login failures of every console and CLI) are read from the database at each scrape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from core.context import Core
from core.engine import disks
from core.models import AuditEvent, Machine, MachineObservation, MachineStatus, Outcome, Writeback, WritebackState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BOOT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PASS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

disable_created_metrics()  # the *_created series only double the output; Prometheus does not need them


@dataclass
class FleetSnapshot:
    machines_by_status: dict[str, int] = field(default_factory=dict)
    writeback_bytes: dict[str, int] = field(default_factory=dict)  # per machine
    writeback_total: int = 0
    free_bytes: int | None = None
    reserved_bytes: int = 0
    login_failures: int = 0


class _FleetCollector(Collector):
    def __init__(self) -> None:
        self.snapshot = FleetSnapshot()

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot
        machines = GaugeMetricFamily("ggnet_machines", "Machines by the status the engine last saw", labels=["status"])
        for status in MachineStatus:
            machines.add_metric([status.value], snap.machines_by_status.get(status.value, 0))
        yield machines
        per_machine = GaugeMetricFamily(
            "ggnet_writeback_bytes", "Bytes allocated on disk by each machine's writebacks", labels=["machine"]
        )
        for name, size in sorted(snap.writeback_bytes.items()):
            per_machine.add_metric([name], size)
        yield per_machine
        yield GaugeMetricFamily(
            "ggnet_writeback_bytes_total",
            "Bytes allocated by every writeback of this server",
            value=snap.writeback_total,
        )
        if snap.free_bytes is not None:
            yield GaugeMetricFamily("ggnet_free_bytes", "Free space in the data directory", value=snap.free_bytes)
        yield GaugeMetricFamily(
            "ggnet_reserved_bytes", "Below this much free space new boots are refused", value=snap.reserved_bytes
        )
        yield CounterMetricFamily(
            "ggnet_login_failures",
            "Failed or refused logins (every console, CLI and the API)",
            value=snap.login_failures,
        )


class Metrics:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.registry = CollectorRegistry(auto_describe=True)
        self.boots = Counter("ggnet_boots", "Boot requests answered, by outcome", ["outcome"], registry=self.registry)
        self.boot_failures = Counter("ggnet_boot_failures", "Boots that could not be prepared", registry=self.registry)
        self.boot_seconds = Histogram(
            "ggnet_boot_request_seconds", "Time from a PC's boot request to its answer", buckets=BOOT_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.pass_seconds = Histogram(
            "ggnet_engine_pass_seconds", "Duration of the engine's passes", buckets=PASS_BUCKETS, registry=self.registry
        )
        self.drift_repaired = Counter(
            "ggnet_engine_drift_repaired", "Differences the engine found and repaired", registry=self.registry
        )
        self.pass_errors = Counter("ggnet_engine_pass_errors", "Errors reported by passes", registry=self.registry)
        self._fleet = _FleetCollector()
        self.registry.register(self._fleet)
        self._failures_seen_id = 0
        self._failures = 0
        self._scrape = asyncio.Lock()  # the incremental count must not be read twice at once
        for outcome in ("ready", "failed", "refused", "unregistered"):
            self.boots.labels(outcome)
        core.events.listen(self._on_event)

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind in ("boot.ready", "boot.failed", "boot.refused", "boot.unregistered"):
            self.boots.labels(kind.split(".", 1)[1]).inc()
            if kind == "boot.failed":
                self.boot_failures.inc()
        elif kind == "engine.pass" and not event.get("dry_run"):
            self.pass_seconds.observe(float(event.get("duration_ms") or 0) / 1000.0)
            self.drift_repaired.inc(int(event.get("repaired") or 0))
            self.pass_errors.inc(len(event.get("errors") or []))

    async def _read_fleet(self) -> FleetSnapshot:
        settings = self.core.settings
        snap = FleetSnapshot(reserved_bytes=settings.reserved_bytes, free_bytes=disks.free_bytes(settings))
        async with self.core.db.session() as session:
            rows = await session.execute(
                select(MachineObservation.status, func.count(Machine.id))
                .select_from(Machine)
                .outerjoin(MachineObservation, MachineObservation.machine_id == Machine.id)
                .group_by(MachineObservation.status)
            )
            for status, count in rows.all():
                key = status or MachineStatus.OFF.value
                snap.machines_by_status[key] = snap.machines_by_status.get(key, 0) + int(count)
            sizes = await session.execute(
                select(Machine.name, MachineObservation.writeback_bytes)
                .join(MachineObservation, MachineObservation.machine_id == Machine.id)
                .where(MachineObservation.writeback_bytes.is_not(None))
            )
            snap.writeback_bytes = {name: int(size) for name, size in sizes.all()}
            total = await session.execute(
                select(func.coalesce(func.sum(Writeback.allocated_bytes), 0)).where(
                    Writeback.server == settings.server_name, Writeback.state != WritebackState.DISCARD.value
                )
            )
            snap.writeback_total = int(total.scalar_one())
            # counted incrementally: only audit rows newer than the last scrape are read
            newest = await session.execute(
                select(func.count(), func.max(AuditEvent.id)).where(
                    AuditEvent.id > self._failures_seen_id,
                    AuditEvent.action == "auth.login",
                    AuditEvent.outcome != Outcome.OK.value,
                )
            )
            count, top = newest.one()
            if top is not None:
                self._failures += int(count)
                self._failures_seen_id = int(top)
            snap.login_failures = self._failures
        return snap

    async def render(self) -> bytes:
        async with self._scrape:
            self._fleet.snapshot = await self._read_fleet()
            return generate_latest(self.registry)
