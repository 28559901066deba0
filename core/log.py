"""structlog to a JSON-lines file. The terminal belongs to the TUI, so nothing is printed.

The file is created 0600 (it names users, machines and addresses), never through a symlink at its
name, and an existing one that others could read is tightened (and the log says so). When logrotate
renames it away, the next line goes to a new file, created 0600 (like logging.WatchedFileHandler).
A line that cannot be written (the disk is full) is dropped: logging never stops a command.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TextIO, cast

from .errors import GgnetError, Invalid
from .files import open_private, private_dir
from .validation import shown


def _import_structlog() -> ModuleType:
    """structlog without rich. structlog imports rich, whenever it is installed (Textual brings it),
    for its development console renderer and pretty tracebacks; ggnet writes JSON lines only, and
    rich (with pygments) would add a tenth of a second to every CLI command. So rich is hidden
    while structlog loads (unless something already loaded it: then it costs nothing). This leans
    on how structlog imports rich (``try: import rich except ImportError``); tests/test_architecture.py
    fails loudly if a command line command loads rich again."""
    if "structlog" in sys.modules:
        return sys.modules["structlog"]
    hide = "rich" not in sys.modules
    if hide:
        sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` raise ImportError
    try:
        import structlog
    finally:
        if hide and sys.modules.get("rich", ...) is None:
            del sys.modules["rich"]
    return structlog


# modules log through get_logger and bind_context below, never `import structlog` themselves
if TYPE_CHECKING:
    import structlog

_structlog_module: ModuleType | None = None


def _structlog() -> ModuleType:
    """structlog, set up for the log stream. It loads at the first log line or bound value, not with
    this module: a command that logs nothing (``ggnet machine list`` after ``ggnet login``) does
    without it, 10 ms."""
    global _structlog_module
    if _log_stream is None:
        configure_logging(None)
    if _structlog_module is None:
        module = _import_structlog()
        _configure_structlog(module)
        _structlog_module = module
    return _structlog_module


# keys whose values never reach the log, whatever the caller passes
_SECRET_KEY = re.compile(r"pass(word)?|secret|chap|token|hash", re.IGNORECASE)
REDACTED = "***"


class WatchedLogFile:
    """A log file opened for appending that follows rotation: before each line it checks that the
    name still leads to the open file, and reopens (creating it 0600) when it does not."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.notes: list[str] = []
        self._fd = self._open()

    def _open(self) -> int:
        if not self.path.parent.is_dir():
            private_dir(self.path.parent)
        fd, note = open_private(self.path, os.O_WRONLY | os.O_APPEND)
        if note:
            self.notes.append(note)
        return fd

    def _rotated(self) -> bool:
        try:
            on_disk = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return True
        mine = os.fstat(self._fd)
        return (on_disk.st_dev, on_disk.st_ino) != (mine.st_dev, mine.st_ino)

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "backslashreplace")
        with self._lock:
            try:
                if self._fd < 0 or self._rotated():
                    self._reopen()
                os.write(self._fd, data)
            except Exception:
                pass  # full disk, removed directory, ...: drop the line, never stop the command
        return len(text)

    def _reopen(self) -> None:
        old, self._fd = self._fd, -1
        if old >= 0:
            os.close(old)
        self._fd = self._open()

    def flush(self) -> None:
        pass  # every write goes straight to the file

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class _Nowhere:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


_log_stream: WatchedLogFile | _Nowhere | None = None
_log_level = "INFO"


def redact(value: Any, key: str = "") -> Any:
    if key and _SECRET_KEY.search(key):
        return REDACTED if value not in (None, "") else value
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def _redact_processor(_logger: Any, _name: str, event_dict: structlog.typing.EventDict) -> structlog.typing.EventDict:
    return {k: redact(v, k) for k, v in event_dict.items()}


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {"level": record.levelname.lower(), "logger": record.name, "event": record.getMessage()},
            default=str,
        )


def configure_logging(log_file: Path | None, level: str = "INFO") -> None:
    """Send structlog (and stdlib logging) to ``log_file`` as JSON lines; nowhere if None."""
    global _log_stream, _log_level
    _log_level = level
    if _log_stream is not None:
        _log_stream.close()
    if log_file is None:
        _log_stream = _Nowhere()
    else:
        try:
            _log_stream = WatchedLogFile(log_file)
        except GgnetError as exc:
            _log_stream = None
            raise Invalid("log_file", exc.message) from None
        except OSError as exc:
            _log_stream = None
            reason = (exc.strerror or str(exc)).lower()
            raise Invalid("log_file", f"cannot write {shown(str(log_file), 300)}: {reason}") from None
    if _structlog_module is not None:  # else _structlog() sets it up when it loads
        _configure_structlog(_structlog_module)
    # libraries that use stdlib logging (alembic, asyncio) go to the same file, never the terminal
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(_log_stream)
    handler.setFormatter(_JsonFormatter())
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    if isinstance(_log_stream, WatchedLogFile):
        for note in _log_stream.notes:
            get_logger().warning("file mode tightened", detail=note)
        _log_stream.notes.clear()


def _configure_structlog(structlog: ModuleType) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            structlog.processors.JSONRenderer(default=str),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(_log_level)),
        logger_factory=structlog.WriteLoggerFactory(file=cast(TextIO, _log_stream)),  # write/flush is all it uses
        cache_logger_on_first_use=False,
    )


def bind_context(**values: Any) -> None:
    """Add ``values`` to every log line of this task (actor, operation ...)."""
    _structlog().contextvars.bind_contextvars(**values)


def unbind_context(*keys: str) -> None:
    _structlog().contextvars.unbind_contextvars(*keys)


def get_logger(name: str = "ggnet") -> Any:
    # structlog's default prints to the terminal (with local variables in tracebacks, which may
    # hold secrets): until configure_logging names a file, _structlog() sets it to log nowhere
    return _structlog().get_logger(name)
