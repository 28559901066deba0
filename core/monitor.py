"""Liveness of client PCs: concurrent probes (ARP table, then ICMP through the system ``ping``)
combined with the boot state and the iSCSI logins the engine recorded (read through
``machines.liveness`` as the console's user; the console never walks the target stack itself);
and the throughput of a machine's disk from the engine's successive byte counts.

The console polls ``Monitor.poll`` in a background worker and never waits on it. Tests replace
the PC probe (``Monitor(core, probe=...)``): pinging PCs that do not exist cannot be reached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .context import Core
from .enums import BootState
from .models import utcnow

if TYPE_CHECKING:
    from .auth import Actor

OFFLINE, ONLINE, BOOTING, BOOTED = "offline", "online", "booting", "booted"
PING_TIMEOUT_SECONDS = 1
PARALLEL_PINGS = 64
ARP_TABLE = Path("/proc/net/arp")


@dataclass(frozen=True)
class Host:
    name: str
    ip: str | None
    mac: str


@dataclass(frozen=True)
class MachineStatus:
    state: str  # offline, online, booting, booted
    reachable: bool
    logged_in: bool | None  # None when the target stack could not be asked
    client_address: str | None
    seen_at: datetime | None  # last time this console saw the PC answer


class PcProbe(Protocol):
    async def __call__(self, hosts: list[Host]) -> set[str]:
        """Names of the hosts that answer now."""


def arp_macs(path: Path = ARP_TABLE) -> set[str]:
    """MACs of complete neighbour entries (flags 0x2) in the kernel's ARP table."""
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return set()
    macs = set()
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "0x2" and fields[3] != "00:00:00:00:00:00":
            macs.add(fields[3].lower())
    return macs


async def ping(ip: str, timeout: float = PING_TIMEOUT_SECONDS) -> bool:
    """One ICMP echo through the system ping (an argument list, never a shell)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "ping",
            "-n",
            "-q",
            "-c",
            "1",
            "-W",
            str(int(max(1, timeout))),
            ip,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return False
    try:
        return await asyncio.wait_for(proc.wait(), timeout + 1) == 0
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False


class SystemProbe:
    """ARP first (free, and catches PCs that drop ICMP), then ping the rest that have an IP."""

    def __init__(self, arp_table: Path = ARP_TABLE, parallel: int = PARALLEL_PINGS) -> None:
        self.arp_table = arp_table
        self.parallel = parallel

    async def __call__(self, hosts: list[Host]) -> set[str]:
        known = arp_macs(self.arp_table)
        alive = {h.name for h in hosts if h.mac.lower() in known}
        limit = asyncio.Semaphore(self.parallel)

        async def one(host: Host) -> None:
            async with limit:
                if await ping(host.ip or ""):
                    alive.add(host.name)

        await asyncio.gather(*(one(h) for h in hosts if h.name not in alive and h.ip))
        return alive


def decide(reachable: bool, logged_in: bool, session_state: str | None) -> str:
    if logged_in:
        return BOOTED
    preparing = (BootState.REQUESTED.value, BootState.PREPARING.value)
    if session_state in preparing or (session_state == BootState.READY.value and reachable):
        return BOOTING
    return ONLINE if reachable else OFFLINE


class Monitor:
    """Holds the latest status of every machine; ``poll`` refreshes it."""

    def __init__(self, core: Core, probe: PcProbe | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.core = core
        self.probe: PcProbe = probe or SystemProbe()
        self.clock = clock
        self.statuses: dict[str, MachineStatus] = {}
        self.polled_at: datetime | None = None
        self._lock = asyncio.Lock()

    async def _rows(self, actor: Actor) -> list[tuple[Host, str | None, bool | None, str | None]]:
        """Each machine with its current boot's state and the login the engine last saw."""
        from .services.machines import liveness

        return [
            (Host(r.name, r.ip, r.mac), r.boot_state, r.logged_in, r.client_address)
            for r in await liveness(self.core, actor)
        ]

    async def poll(self, actor: Actor) -> dict[str, MachineStatus]:
        """Probe every machine, reading what the engine saw as ``actor`` (who must be allowed to read)."""
        async with self._lock:  # one poll at a time, whoever asks
            rows = await self._rows(actor)
            reachable = await self.probe([h for h, *_ in rows])
            now = self.clock()
            statuses = {}
            for host, state, observed_login, address in rows:
                logged_in = bool(observed_login) and state is not None
                up = host.name in reachable
                previous = self.statuses.get(host.name)
                seen = now if (up or logged_in) else (previous.seen_at if previous else None)
                statuses[host.name] = MachineStatus(
                    state=decide(up, logged_in, state),
                    reachable=up,
                    logged_in=None if observed_login is None else logged_in,
                    client_address=address if logged_in else None,
                    seen_at=seen,
                )
            self.statuses = statuses
            self.polled_at = now
            return statuses


class Throughput:
    """Bytes per second read and written through a machine's target, from the engine's counters.

    The engine records the counters when they change (at most every GGNET_OBSERVE_SECONDS), with
    the time it saw them: a rate is the difference between two records over the time between them.
    Counters that were not recorded again for ``idle_after`` seconds have not moved: the rate is 0.
    A counter that went down belongs to a new target (a new boot): no rate until the next record."""

    def __init__(self, idle_after: float) -> None:
        self.idle_after = idle_after
        self._last: tuple[int, int, datetime] | None = None
        self.read_per_second: float | None = None
        self.written_per_second: float | None = None

    def update(self, read: int | None, written: int | None, observed_at: datetime | None, now: datetime) -> None:
        if read is None or written is None or observed_at is None:
            self._last, self.read_per_second, self.written_per_second = None, None, None
            return
        last, self._last = self._last, (read, written, observed_at)
        if last is not None and observed_at > last[2]:
            seconds = (observed_at - last[2]).total_seconds()
            if read >= last[0] and written >= last[1]:
                self.read_per_second = (read - last[0]) / seconds
                self.written_per_second = (written - last[1]) / seconds
            else:
                self.read_per_second = self.written_per_second = None
        elif (now - observed_at).total_seconds() >= self.idle_after:
            self.read_per_second = self.written_per_second = 0.0
