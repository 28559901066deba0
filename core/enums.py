"""The names ggnet's data and permissions are spelled with: roles, permissions, boot modes,
writeback policies, states. Standard library only, so the console imports them at start-up
(before SQLAlchemy is loaded) instead of copying their values as literals."""

from __future__ import annotations

import enum


class StrEnum(str, enum.Enum):
    def __str__(self) -> str:
        return str(self.value)


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"


class BootMode(StrEnum):
    BIOS = "bios"
    UEFI = "uefi"
    UEFI_SECURE = "uefi-secure"


class ImageKind(StrEnum):
    SYSTEM = "system"
    GAME = "game"


class WritebackPolicy(StrEnum):
    """What a machine's disk is at each boot."""

    FRESH = "fresh"  # a new clone of the version it should boot, at every boot (the default)
    KEEP = "keep"  # the same writeback across boots (its changes stay)
    MAINTENANCE = "maintenance"  # kept across boots, and may be applied as the image's next version


class BootState(StrEnum):
    """One boot of a machine, as the engine carries it out."""

    REQUESTED = "requested"  # recorded (a PC asked for its script, or an operator prepared it); not yet worked on
    PREPARING = "preparing"  # the engine is making its writebacks and target
    READY = "ready"  # served: the machine's target has this boot's disks and CHAP secret
    ENDING = "ending"  # superseded by a newer boot, taken offline or idle: the engine removes what it no longer needs
    ENDED = "ended"
    FAILED = "failed"  # could not be prepared (``error`` says why); the engine removes what it had made
    REFUSED = "refused"  # answered with a sentence (not allowed to boot, no image, disk space); nothing was made


# at most one of these per machine (a partial unique index): the boot the machine is on, or about to be on
CURRENT_BOOT_STATES = (BootState.REQUESTED, BootState.PREPARING, BootState.READY)
# boots whose writebacks and target the engine still has to act on
OPEN_BOOT_STATES = (*CURRENT_BOOT_STATES, BootState.ENDING)


class MachineStatus(StrEnum):
    """What the engine last saw of a machine."""

    OFF = "off"
    BOOTING = "booting"  # its boot is being prepared, or is ready and its client has not logged in yet
    BOOTED = "booted"  # its client is logged in to its target
    FAILED = "failed"  # its last boot could not be prepared or was refused


class Disk(StrEnum):
    SYSTEM = "system"
    GAME = "game"


class WritebackState(StrEnum):
    CREATING = "creating"  # being cloned; the file is absent or a temporary
    READY = "ready"
    DISCARD = "discard"  # the engine removes it once no target serves it


class EngineRequestKind(StrEnum):
    PASS = "pass"  # one pass now (``ggnet reconcile``), with its report as the result
    APPLY = "apply"  # a maintenance writeback becomes its image's next version


class EngineRequestState(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class TokenKind(StrEnum):
    CLI = "cli"  # ``ggnet login``: a short-lived token for one OS user's commands
    REFRESH = "refresh"  # the HTTP API's refresh token (rotated on each use)


class Outcome(StrEnum):
    OK = "ok"
    DENIED = "denied"
    FAILED = "failed"


class Permission(str, enum.Enum):
    READ = "read"  # everything but secrets
    READ_SECRETS = "read_secrets"  # CHAP secrets
    MANAGE_MACHINES = "manage_machines"
    MANAGE_IMAGES = "manage_images"
    MANAGE_SESSIONS = "manage_sessions"
    MANAGE_TARGETS = "manage_targets"
    WAKE_MACHINES = "wake_machines"
    MANAGE_USERS = "manage_users"
    MANAGE_SETTINGS = "manage_settings"
