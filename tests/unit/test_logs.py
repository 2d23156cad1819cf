"""JSON log lines: one object per line with level, msg, timestamp and fields."""

from __future__ import annotations

import io
import logging
import re

import orjson
import pytest

from manager.logs import configure_logging

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def stream() -> io.StringIO:
    buffer = io.StringIO()
    configure_logging("debug", buffer)
    return buffer


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_line_has_level_message_timestamp_and_fields(stream: io.StringIO) -> None:
    logging.getLogger("manager.test").info(
        "callback failed", extra={"app": "a1", "attempt": 2}
    )
    [line] = lines(stream)
    assert line["level"] == "info"
    assert line["msg"] == "callback failed"
    assert RFC3339_UTC.match(str(line["timestamp"]))
    assert line["app"] == "a1"
    assert line["attempt"] == 2
    assert line["logger"] == "manager.test"


def test_library_loggers_share_the_formatter(stream: io.StringIO) -> None:
    logging.getLogger("asyncpg.pool").warning("connection lost")
    logging.getLogger("aiohttp.server").error("boom")
    parsed = lines(stream)
    assert [line["logger"] for line in parsed] == ["asyncpg.pool", "aiohttp.server"]
    assert [line["level"] for line in parsed] == ["warning", "error"]


def test_exception_is_one_line_of_json(stream: io.StringIO) -> None:
    try:
        raise RuntimeError("broken")
    except RuntimeError:
        logging.getLogger("manager.test").exception("it failed")
    [line] = lines(stream)
    assert "RuntimeError: broken" in str(line["exception"])
    assert len(stream.getvalue().splitlines()) == 1


def test_level_filters(stream: io.StringIO) -> None:
    configure_logging("warning", stream)
    logging.getLogger("manager.test").info("hidden")
    logging.getLogger("manager.test").warning("shown")
    assert [line["msg"] for line in lines(stream)] == ["shown"]


def test_values_orjson_cannot_encode_become_text(stream: io.StringIO) -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd value"

    logging.getLogger("manager.test").info("x", extra={"thing": Odd()})
    assert lines(stream)[0]["thing"] == "odd value"
