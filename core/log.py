"""structlog to a JSON-lines file. The terminal belongs to the TUI, so nothing is printed."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog

# keys whose values never reach the log, whatever the caller passes
_SECRET_KEY = re.compile(r"pass(word)?|secret|chap|token|hash", re.IGNORECASE)
REDACTED = "***"

_log_stream: TextIO | None = None


def redact(value: Any, key: str = "") -> Any:
    if key and _SECRET_KEY.search(key):
        return REDACTED if value not in (None, "") else value
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def _redact_processor(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: redact(v, k) for k, v in event_dict.items()}


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {"level": record.levelname.lower(), "logger": record.name, "event": record.getMessage()},
            default=str,
        )


def configure_logging(log_file: Path | None, level: str = "INFO") -> None:
    """Send structlog (and stdlib logging) to ``log_file`` as JSON lines; nowhere if None."""
    global _log_stream
    if _log_stream is not None and _log_stream not in (sys.stdout, sys.stderr):
        _log_stream.close()
    if log_file is None:
        _log_stream = open("/dev/null", "a")  # noqa: SIM115 - lives as long as the process logs
    else:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            _log_stream = open(log_file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as exc:
            from .errors import Invalid

            _log_stream = None
            raise Invalid("log_file", f"cannot write {log_file}: {exc.strerror}") from None
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            structlog.processors.JSONRenderer(default=str),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.WriteLoggerFactory(file=_log_stream),
        cache_logger_on_first_use=False,
    )
    # libraries that use stdlib logging (alembic, asyncio) go to the same file, never the terminal
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(_log_stream)
    handler.setFormatter(_JsonFormatter())
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


def get_logger(name: str = "ggnet") -> Any:
    # structlog's default prints to the terminal (with local variables in tracebacks,
    # which may hold secrets): until configure_logging names a file, log nowhere
    if _log_stream is None:
        configure_logging(None)
    return structlog.get_logger(name)
