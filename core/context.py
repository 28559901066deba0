"""What every service call needs: settings, the database, and (lazily) the target stack."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import Settings
from .db import Database
from .events import EventBus

if TYPE_CHECKING:
    from .iscsi.base import BackendHealth, TargetBackend


@dataclass
class Core:
    settings: Settings
    db: Database
    extras: dict[str, Any] = field(default_factory=dict)
    events: EventBus = field(default_factory=EventBus)  # live events of this process (engine, audit feed)
    _backend: TargetBackend | None = None
    _backend_health: BackendHealth | None = None

    @classmethod
    def open(cls, settings: Settings) -> Core:
        return cls(settings=settings, db=Database(settings.database_url))

    async def close(self) -> None:
        await self.db.dispose()

    def use_backend(self, backend: TargetBackend | None, health: BackendHealth | None = None) -> None:
        """Pin the target backend (tests, or after the operator chose one)."""
        self._backend = backend
        self._backend_health = health

    async def target_backend(self, refresh: bool = False) -> tuple[TargetBackend | None, BackendHealth]:
        """The configured target stack and its health; selected once, then cached."""
        from .iscsi.base import BackendHealth
        from .iscsi.select import select_backend

        if self._backend is not None and not refresh:
            return self._backend, self._backend_health or await self._backend.health()
        if self._backend_health is None or refresh:
            self._backend, self._backend_health = await select_backend(self.settings)
        return self._backend, self._backend_health or BackendHealth(False, "no iSCSI target stack")
