"""What a client sees when something goes wrong, and what the log records.

Every error in a GraphQL answer carries `extensions.code`. Errors the
Manager raises on purpose keep their message, which names the field that is
wrong; anything unexpected becomes INTERNAL with a request id, and only the
log line (with its traceback) says what happened. No SQL, stack trace or
class name reaches the client.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from graphql import GraphQLError, GraphQLSyntaxError

from manager.errors import (
    ConflictError,
    DatabaseError,
    InvalidInputError,
    ManagerError,
    NotFoundError,
)

log = logging.getLogger(__name__)

BAD_USER_INPUT = "BAD_USER_INPUT"
NOT_FOUND = "NOT_FOUND"
UNAUTHENTICATED = "UNAUTHENTICATED"
FORBIDDEN = "FORBIDDEN"
INTERNAL = "INTERNAL"
SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
BAD_REQUEST = "BAD_REQUEST"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"

DATABASE_UNAVAILABLE = "database unavailable"
INTERNAL_MESSAGE = "internal error; quote the request id when reporting it"


class AuthenticationError(ManagerError):
    """The request carries no credentials, or ones that do not check out."""


class PermissionDeniedError(ManagerError):
    """The caller may see the object but not do this to it."""


class ServiceUnavailableError(ManagerError):
    """Something the API depends on (the identity provider) does not answer."""


# Driver and network failures that mean "the database is not there right
# now", as opposed to a bug in a query.
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    DatabaseError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)


def is_database_unavailable(error: BaseException) -> bool:
    return isinstance(error, _UNAVAILABLE)


def error_body(message: str, code: str, **extensions: Any) -> dict[str, Any]:
    """A GraphQL-shaped answer with one error and no data."""
    error = {"message": message, "extensions": {"code": code, **extensions}}
    return {"errors": [error]}


def coded_error(message: str, code: str, **extensions: Any) -> GraphQLError:
    """A GraphQL error raised before execution, already carrying its code."""
    return GraphQLError(message, extensions={"code": code, **extensions})


def format_error(error: GraphQLError, request_id: str) -> dict[str, Any]:
    """The client's view of one error; unexpected ones are logged here."""
    message, extensions = _classify(error, request_id)
    formatted: dict[str, Any] = {"message": message}
    if error.locations:
        formatted["locations"] = [location.formatted for location in error.locations]
    if error.path is not None:
        formatted["path"] = error.path
    formatted["extensions"] = extensions
    return formatted


def _classify(error: GraphQLError, request_id: str) -> tuple[str, dict[str, Any]]:
    original = error.original_error
    if error.extensions and "code" in error.extensions:
        return error.message, dict(error.extensions)
    if isinstance(original, InvalidInputError | ConflictError):
        return str(original), {"code": BAD_USER_INPUT, "field": original.field}
    if isinstance(original, NotFoundError):
        return str(original), {"code": NOT_FOUND}
    if isinstance(original, PermissionDeniedError):
        return str(original), {"code": FORBIDDEN}
    if isinstance(original, AuthenticationError):
        return str(original), {"code": UNAUTHENTICATED}
    if isinstance(original, ServiceUnavailableError):
        return str(original), {"code": SERVICE_UNAVAILABLE}
    if original is not None and is_database_unavailable(original):
        log.warning(
            "database unavailable",
            extra={"request_id": request_id, "error": type(original).__name__},
        )
        return DATABASE_UNAVAILABLE, {
            "code": SERVICE_UNAVAILABLE,
            "requestId": request_id,
        }
    if isinstance(error, GraphQLSyntaxError):
        return error.message, {"code": PARSE_FAILED}
    if error.path is None and not _is_unexpected(original):
        # Raised before any resolver ran: variables that do not match their
        # types. graphql-core's message names the variable and the problem.
        return error.message, {"code": BAD_USER_INPUT}

    log.error(
        "request failed",
        exc_info=(type(original), original, original.__traceback__)
        if original is not None
        else None,
        extra={
            "request_id": request_id,
            "graphql_path": ".".join(str(part) for part in error.path or ()),
            "error": error.message if original is None else type(original).__name__,
        },
    )
    return INTERNAL_MESSAGE, {"code": INTERNAL, "requestId": request_id}


def _is_unexpected(original: BaseException | None) -> bool:
    # Variable coercion wraps the scalar's own ValueError or TypeError, and
    # GraphQLErrors; anything else before execution is a bug of ours.
    return original is not None and not isinstance(
        original, ValueError | TypeError | GraphQLError
    )
