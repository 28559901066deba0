"""Liveness of client PCs: concurrent probes (ARP table, then ICMP through the system ``ping``)
combined with the boot state and the iSCSI logins the engine recorded (the console never walks
the target stack itself).

The console polls ``Monitor.poll`` in a background worker and never waits on it. Tests replace
the PC probe (``Monitor(core, probe=...)``): pinging PCs that do not exist cannot be reached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import select

from .context import Core
from .models import CURRENT_BOOT_STATES, Boot, BootState, Machine, MachineObservation, utcnow

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

    async def _rows(self) -> list[tuple[Host, str | None, bool | None, str | None]]:
        """Each machine with its current boot's state and the login the engine last saw."""
        current = [s.value for s in CURRENT_BOOT_STATES]
        async with self.core.db.session() as session:
            query = (
                select(
                    Machine.name,
                    Machine.ip,
                    Machine.mac,
                    Boot.state,
                    MachineObservation.logged_in,
                    MachineObservation.client_address,
                )
                .outerjoin(Boot, (Boot.machine_id == Machine.id) & Boot.state.in_(current))
                .outerjoin(MachineObservation, MachineObservation.machine_id == Machine.id)
            )
            return [
                (Host(n, ip, mac), state, logged_in, address)
                for n, ip, mac, state, logged_in, address in (await session.execute(query)).all()
            ]

    async def poll(self) -> dict[str, MachineStatus]:
        async with self._lock:  # one poll at a time, whoever asks
            rows = await self._rows()
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
