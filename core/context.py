"""What every service call needs: settings, the database, and (lazily) the target stack."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import files
from .config import Settings
from .db import Database, sqlite_file
from .errors import Invalid, UnsafePath
from .events import EventBus
from .storage import IMAGES_DIR, WRITEBACK_DIR

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
        return cls(settings=settings, db=Database(settings.database_url, settings.db_busy_seconds))

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


# subdirectories of the data directory that hold disks
PRIVATE_SUBDIRS = (IMAGES_DIR, WRITEBACK_DIR)


def prepare_data_dir(settings: Settings) -> list[str]:
    """At start: create the data directory with its mode, or bring an existing install's modes
    into line (see core.files), and keep or release the disk reserve. Returns one sentence per
    change worth logging (modes tightened, reserve released); Invalid naming the data directory
    when it cannot be made or used."""
    try:
        return _prepare_data_dir(settings)
    except OSError as exc:
        raise Invalid("data_dir", files.os_error_sentence(exc)) from None
    except UnsafePath as exc:
        raise Invalid("data_dir", exc.message) from None


def _prepare_data_dir(settings: Settings) -> list[str]:
    data = Path(settings.data_dir)
    inside = settings.tftp_root is not None and _is_inside(Path(settings.tftp_root), data)
    # dnsmasq (as its own user) must pass through to a TFTP root inside the data directory
    notes = [files.make_dir(data, 0o711 if inside else files.PRIVATE_DIR)]
    for name in PRIVATE_SUBDIRS:
        if (data / name).is_dir():
            notes.append(files.private_dir(data / name))
    database = sqlite_file(settings.database_url)
    if database is not None:
        notes += [files.tighten(Path(f"{database}{suffix}")) for suffix in ("", "-wal", "-shm")]
    notes.append(files.tighten(data / "ggnet.key"))
    notes.append(files.keep_reserve(data))
    return [note for note in notes if note]


def _is_inside(path: Path, directory: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(directory))
