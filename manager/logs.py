"""JSON log lines on stdout: the one place that configures logging.

Every record becomes one JSON object with `level`, `msg`, `timestamp` (RFC
3339, UTC, `Z`), `logger`, and the structured fields passed with `extra=`.
Library loggers (aiohttp, asyncpg) propagate to the root logger and so share
the same formatter.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
) | {"message", "asctime", "taskName"}


def _default(value: Any) -> Any:
    """Serialise what orjson does not know natively, such as UUIDs in Path form."""
    return str(value)


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        timestamp = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "timestamp": timestamp.isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            ),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            "logger": record.name,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=_default).decode()


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send every logger's records to stdout as JSON, replacing other handlers."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())

    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())

    # aiohttp's access log would repeat our own request line in another shape.
    logging.getLogger("aiohttp.access").disabled = True
    # pgserver narrates every pg_ctl call at INFO; our own start line says
    # what matters.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    logging.captureWarnings(True)
