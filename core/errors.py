"""Typed domain errors. Each carries one sentence an operator can act on.

The CLI prints ``error: <sentence>`` and exits 1; the TUI shows the sentence.
"""

from __future__ import annotations


class GgnetError(Exception):
    """Base of every expected failure."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

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
