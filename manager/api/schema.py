"""The executable schema: schema.graphql with resolvers, scalars and enums.

The SDL file is the public contract; this module only gives it behaviour.
Fields written in camelCase that have no resolver of their own read the
snake_case attribute of the same name from the store's dataclasses (or the
key itself from a dict). Enum values are the lower-case words the database
stores, so resolvers pass them through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

from graphql import (
    GraphQLEnumType,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    assert_valid_schema,
    build_schema,
)

from manager.api.mutations import MUTATION_RESOLVERS
from manager.api.resolvers import QUERY_RESOLVERS, TYPE_RESOLVERS
from manager.api.scalars import attach_scalars

SCHEMA_FILE = "schema.graphql"


def schema_text() -> str:
    """The SDL shipped in the package."""
    return (resources.files("manager.api") / SCHEMA_FILE).read_text()


@cache
def api_schema() -> GraphQLSchema:
    """The schema, built once per process: building it is not cheap."""
    schema = build_schema(schema_text())
    date_time, json = schema.type_map["DateTime"], schema.type_map["JSON"]
    assert isinstance(date_time, GraphQLScalarType)
    assert isinstance(json, GraphQLScalarType)
    attach_scalars(date_time, json)

    for graphql_type in schema.type_map.values():
        if graphql_type.name.startswith("__"):
            continue
        if isinstance(graphql_type, GraphQLEnumType):
            for name, value in graphql_type.values.items():
                value.value = name.lower()
        if isinstance(graphql_type, GraphQLObjectType):
            _bind_fields(graphql_type)

    assert_valid_schema(schema)
    return schema


def _bind_fields(graphql_type: GraphQLObjectType) -> None:
    roots: dict[str, dict[str, Callable[..., Any]]] = {
        "Query": QUERY_RESOLVERS,
        "Mutation": MUTATION_RESOLVERS,
    }
    own = roots.get(graphql_type.name) or TYPE_RESOLVERS.get(graphql_type.name, {})
    for name, field in graphql_type.fields.items():
        if name in own:
            field.resolve = own[name]
        elif graphql_type.name in ("Query", "Mutation"):
            raise LookupError(f"no resolver for {graphql_type.name}.{name}")
        elif name != _snake_case(name):
            field.resolve = _attribute(name, _snake_case(name))


def _snake_case(name: str) -> str:
    return "".join(f"_{char.lower()}" if char.isupper() else char for char in name)


def _attribute(key: str, attribute: str) -> Callable[..., Any]:
    def resolve(source: Any, info: Any) -> Any:
        if isinstance(source, dict):
            return source.get(key)
        return getattr(source, attribute)

    return resolve
