"""JSON log lines on stdout: the one place that configures logging.

Every record becomes one JSON object with `level`, `msg`, `timestamp` (RFC
3339, UTC, `Z`), `logger`, and the structured fields passed with `extra=`.
Library loggers (aiohttp, asyncpg) propagate to the root logger and so share
the same formatter.
"""

from __future__ import annotations

import asyncio
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

    # The formatted second of the last record: a busy API logs many lines a
    # second, and formatting the date is the dearest part of a line.
    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": self._timestamp(record.created),
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

    def _timestamp(self, created: float) -> str:
        second = int(created)
        cached_second, prefix = self._second
        if second != cached_second:
            prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = (second, prefix)
        milliseconds = int((created - second) * 1000)
        return f"{prefix}.{milliseconds:03d}Z"


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each line at once, and flushes once per turn of the event loop.

    A busy API writes many lines in one turn; flushing after each would cost
    a system call per line, a fifth of a fast request. Within the event loop
    the flush is deferred to the end of the turn; anywhere else (start-up,
    worker threads, exit) every line is flushed at once.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._flush_pending = False

    def flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            super().flush()
            return
        if not self._flush_pending:
            self._flush_pending = True
            loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_pending = False
        super().flush()


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send every logger's records to stdout as JSON, replacing other handlers."""
    handler = LineHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())

    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())

    # The lines carry no thread or process fields, so records need not look
    # them up: that lookup is a measurable share of a fast API request.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Nor the caller's file and line: the logging HOWTO's documented switch
    # for skipping the stack walk that finds them.
    logging._srcfile = None

    # aiohttp's access log would repeat our own request line in another shape.
    logging.getLogger("aiohttp.access").disabled = True
    # pgserver narrates every pg_ctl call at INFO; our own start line says
    # what matters.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    logging.captureWarnings(True)
