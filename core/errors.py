"""Typed domain errors. Each carries one sentence an operator can act on.

The CLI prints ``error: <sentence>`` and exits 1; the TUI shows the sentence. A refusal that the
operator resolves with another action carries that action as a ``Fix``: core's sentence names no
command line and no key, and each interface adds its own words for it (the CLI a command, the
console its key), so neither has to guess from the other's.
"""

from __future__ import annotations

from dataclasses import dataclass

# what a Fix may name: the operator actions that resolve a refusal
FIX_ACTIONS = frozenset(
    {
        "session.stop",  # take the machine offline
        "force",  # the same action again, knowingly cutting a logged-in client off
        "machine.enable",  # allow the machine to boot
        "machine.assign",  # give the machines another image, or none
        "machine.unpin",  # unpin the version
        "maintenance.start",
        "maintenance.finish",  # apply or discard the maintenance writeback
        "maintenance.discard",
        "image.new_version",  # import as a new version of the existing image
        "image.activate",  # activate another version
        "image.delete",  # delete the whole image
    }
)


@dataclass(frozen=True)
class Fix:
    """The operator action that resolves a refusal, with what it acts on."""

    action: str  # one of FIX_ACTIONS
    machine: str | None = None
    image: str | None = None
    version: int | None = None

    def __post_init__(self) -> None:
        if self.action not in FIX_ACTIONS:
            raise ValueError(f"unknown fix action {self.action!r}")


class GgnetError(Exception):
    """Base of every expected failure."""

    def __init__(self, message: str, fix: Fix | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message


class NotFound(GgnetError):
    pass


class Conflict(GgnetError):
    pass


class Invalid(GgnetError):
    """Bad input. ``errors`` maps each field to the rule it broke."""

    def __init__(self, errors: dict[str, str] | str, rule: str | None = None) -> None:
        if isinstance(errors, str):
            errors = {errors: rule or "is invalid"}
        self.errors = dict(errors)
        super().__init__("; ".join(f"{field}: {rule}" for field, rule in self.errors.items()))


class PermissionDenied(GgnetError):
    pass


class AuthenticationFailed(GgnetError):
    pass


class AccountLocked(AuthenticationFailed):
    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class StaleEdit(GgnetError):
    pass


class BackendUnavailable(GgnetError):
    pass


class SchemaTooNew(GgnetError):
    pass


class DatabaseBusy(BackendUnavailable):
    """Another process holds the database's write lock for longer than ggnet waits."""


class DatabaseReadOnly(BackendUnavailable):
    """The database can be read but not changed (file or file system read-only, read-only server)."""


class DiskFull(GgnetError):
    """A write failed because the file system is full: the disk's fault, not the input's."""


class UnsafePath(GgnetError):
    """A path that would leave its directory, or a file that is not what ggnet may open."""
