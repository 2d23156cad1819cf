"""The schema's custom scalars: DateTime (RFC 3339, UTC) and JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from graphql import GraphQLScalarType, ValueNode, value_from_ast_untyped
from graphql.language import StringValueNode


def serialize_datetime(value: Any) -> str:
    """An aware datetime as RFC 3339 in UTC with a `Z`."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise TypeError("DateTime needs an aware datetime")
    text = value.astimezone(UTC).isoformat()
    return text.removesuffix("+00:00") + "Z"


def parse_datetime(value: Any) -> datetime:
    """An RFC 3339 string with an offset, as an aware datetime in UTC."""
    if not isinstance(value, str):
        raise ValueError("DateTime: expected an RFC 3339 string")
    try:
        instant = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"DateTime: {value!r} is not RFC 3339, such as 2025-01-31T08:00:00Z"
        ) from None
    if instant.tzinfo is None:
        raise ValueError("DateTime: an offset or Z is required")
    return instant.astimezone(UTC)


def _parse_datetime_literal(
    node: ValueNode, variables: dict[str, Any] | None = None
) -> datetime:
    if not isinstance(node, StringValueNode):
        raise ValueError("DateTime: expected an RFC 3339 string")
    return parse_datetime(node.value)


def _json_value(value: Any) -> Any:
    return value


def _parse_json_literal(
    node: ValueNode, variables: dict[str, Any] | None = None
) -> Any:
    return value_from_ast_untyped(node, variables)


def attach_scalars(date_time: GraphQLScalarType, json: GraphQLScalarType) -> None:
    """Give the SDL's scalar types their behaviour."""
    date_time.serialize = serialize_datetime  # type: ignore[method-assign]
    date_time.parse_value = parse_datetime  # type: ignore[method-assign]
    date_time.parse_literal = _parse_datetime_literal  # type: ignore[method-assign]
    json.serialize = _json_value  # type: ignore[method-assign]
    json.parse_value = _json_value  # type: ignore[method-assign]
    json.parse_literal = _parse_json_literal  # type: ignore[method-assign]
