"""Query limits and scalars, without a server: depth, aliases, DateTime, JSON."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from graphql import OperationDefinitionNode, get_introspection_query, parse

from manager.api.documents import DocumentCache, Measure
from manager.api.scalars import parse_datetime, serialize_datetime
from manager.api.schema import api_schema
from tests.support.api import api_settings


def measured(query: str, limit: int = 12) -> tuple[int, int]:
    document = parse(query)
    measure = Measure(document, limit)
    [operation] = [
        node
        for node in document.definitions
        if isinstance(node, OperationDefinitionNode)
    ]
    return (
        measure.depth(operation.selection_set, limit),
        measure.aliases(operation.selection_set),
    )


def test_depth_counts_fields_not_fragments() -> None:
    assert measured("{ a }") == (1, 0)
    assert measured("{ a { b { c } } d }") == (3, 0)
    assert measured("{ ... on Query { a { ... on A { b } } } }") == (2, 0)
    spread = "{ a { ...F } } fragment F on A { b { c } }"
    assert measured(spread) == (3, 0)


def test_depth_stops_counting_past_the_limit() -> None:
    deep = "{ a " + "{ a " * 150 + "}" * 151
    depth, _ = measured(deep, limit=5)
    assert depth == 6


def test_aliases_count_every_spread_of_a_fragment() -> None:
    query = """
    { a { ...F } b: a { ...F } }
    fragment F on A { x: id y: id ...G }
    fragment G on A { z: id }
    """
    assert measured(query)[1] == 1 + 2 * 3


def test_fragment_fan_out_is_measured_quickly() -> None:
    # Ten fragments each spreading the next twice: 2**10 expansions.
    fragments = "".join(
        f"fragment F{level} on A {{ a: id ...F{level + 1} b: a {{ ...F{level + 1} }} }}"
        for level in range(10)
    )
    query = "{ ...F0 }" + fragments + "fragment F10 on A { id }"
    started = time.perf_counter()
    depth, aliases = measured(query, limit=100)
    assert time.perf_counter() - started < 0.1
    assert depth == 11
    assert aliases == 2 * (2**10 - 1)


def test_fragment_cycles_do_not_hang() -> None:
    query = "{ ...A } fragment A on Q { x ...B } fragment B on Q { y ...A }"
    assert measured(query) == (1, 0)


def test_introspection_has_its_own_depth_bound() -> None:
    documents = DocumentCache(api_schema(), api_settings().api)
    prepared = documents.prepare(get_introspection_query(descriptions=True))
    assert prepared.errors == []

    nested = "{ __schema { types { " + "ofType { " * 25 + "name" + " }" * 28
    refused = documents.prepare(nested)
    assert refused.errors[0].extensions == {
        "code": "GRAPHQL_VALIDATION_FAILED",
        "limit": "max_depth",
    }


def test_documents_are_prepared_once() -> None:
    documents = DocumentCache(api_schema(), api_settings().api)
    first = documents.prepare("{ projects { id } }")
    assert documents.prepare("{ projects { id } }") is first


def test_datetime_is_rfc3339_in_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert serialize_datetime(datetime(2025, 1, 31, 10, 0, tzinfo=plus_two)) == (
        "2025-01-31T08:00:00Z"
    )
    assert parse_datetime("2025-01-31T10:00:00+02:00") == datetime(
        2025, 1, 31, 8, 0, tzinfo=UTC
    )
    assert parse_datetime("2025-01-31T08:00:00z").tzinfo == UTC
    for bad in ("2025-01-31T08:00:00", "yesterday", 12):
        with pytest.raises(ValueError):
            parse_datetime(bad)
    with pytest.raises(TypeError):
        serialize_datetime(datetime(2025, 1, 31))
