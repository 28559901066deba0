"""What every service call needs: settings and the database (and, later, the target stack)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .db import Database


@dataclass
class Core:
    settings: Settings
    db: Database
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: Settings) -> "Core":
        return cls(settings=settings, db=Database(settings.database_url))

    async def close(self) -> None:
        await self.db.dispose()
