"""POST (and GET) /query: graphql-server's aiohttp view, fitted to the Manager.

graphql-server handles the HTTP side of GraphQL (methods, content types,
GraphiQL); this subclass adds what it leaves to us: who is calling, the
body size limit, cached parsing and validation with our limits, and error
answers that carry a code and never internals. Every refusal is JSON in
GraphQL's shape, whatever stage it happens at.
"""

from __future__ import annotations

import logging
from inspect import isawaitable
from types import CoroutineType
from typing import Any

import orjson
from aiohttp import web
from graphql import (
    ExecutionContext,
    ExecutionResult,
    FieldNode,
    GraphQLObjectType,
    GraphQLSchema,
    OperationType,
    Undefined,
    execute,
)
from graphql.pyutils import Path
from graphql_server.aiohttp.views import AiohttpHTTPRequestAdapter, GraphQLView
from graphql_server.exceptions import InvalidOperationTypeError
from graphql_server.http import GraphQLHTTPResponse, GraphQLRequestData
from graphql_server.http.async_base_view import AsyncHTTPRequestAdapter
from graphql_server.http.exceptions import HTTPException

from manager.api.auth import Authenticator, Principal
from manager.api.context import RequestContext
from manager.api.documents import DocumentCache
from manager.api.errors import (
    BAD_REQUEST,
    DATABASE_UNAVAILABLE,
    PAYLOAD_TOO_LARGE,
    SERVICE_UNAVAILABLE,
    UNAUTHENTICATED,
    AuthenticationError,
    ServiceUnavailableError,
    coded_error,
    error_body,
    format_error,
    is_database_unavailable,
)
from manager.api.loaders import Loaders
from manager.api.metrics import ApiMetrics
from manager.config import Settings
from manager.db.database import Database
from manager.web import REQUEST_ID

log = logging.getLogger(__name__)


def _is_coroutine(value: object) -> bool:
    """graphql-core's awaitable test, narrowed to what our resolvers return.

    Every resolver that waits is an `async def`, and graphql-core's own
    deferred results are coroutines too; the general test it uses by default
    is called for every field and showed up in profiles.
    """
    return type(value) is CoroutineType


class SerialMutations(ExecutionContext):
    """Starts each mutation field only once the one before it has finished.

    graphql-core 3.2 calls every mutation resolver up front and awaits the
    coroutines in order; when one fails on a non-null field, the ones after
    it are never awaited, and each leaves a "coroutine was never awaited"
    warning behind (found by the GraphQL fuzzing suite).
    """

    def execute_fields_serially(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        fields: dict[str, list[FieldNode]],
    ) -> Any:
        async def one_after_another() -> dict[str, Any]:
            results: dict[str, Any] = {}
            for response_name, field_nodes in fields.items():
                field_path = Path(path, response_name, parent_type.name)
                result = self.execute_field(
                    parent_type, source_value, field_nodes, field_path
                )
                if result is Undefined:
                    continue
                if self.is_awaitable(result):
                    result = await result
                results[response_name] = result
            return results

        return one_after_another()


class BoundedRequestAdapter(AiohttpHTTPRequestAdapter):
    """Reads the body through aiohttp's size-checked `read()`.

    graphql-server reads the raw stream, which would let a body of any size
    through; `read()` stops at the application's client_max_size.
    """

    async def get_body(self) -> bytes:  # type: ignore[override]
        return await self.request.read()


class QueryView(GraphQLView):
    """The /query endpoint."""

    request_adapter_class = BoundedRequestAdapter

    def __init__(
        self,
        schema: GraphQLSchema,
        settings: Settings,
        database: Database,
        authenticator: Authenticator,
        metrics: ApiMetrics,
    ) -> None:
        super().__init__(
            schema=schema,
            graphql_ide="graphiql" if settings.api.graphiql else None,
            allow_queries_via_get=True,
            keep_alive=False,
            subscription_protocols=(),
        )
        self.settings = settings
        self.database = database
        self.authenticator = authenticator
        self.metrics = metrics
        self.documents = DocumentCache(schema, settings.api)

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self.run(request=request)
        except AuthenticationError as error:
            log.info(
                "authentication refused",
                extra={"request_id": request.get(REQUEST_ID), "reason": str(error)},
            )
            return self._refusal(401, str(error), UNAUTHENTICATED)
        except ServiceUnavailableError as error:
            return self._refusal(503, str(error), SERVICE_UNAVAILABLE)
        except web.HTTPRequestEntityTooLarge:
            limit = self.settings.api.max_body_bytes
            message = f"request body is larger than the {limit} bytes allowed"
            return self._refusal(413, message, PAYLOAD_TOO_LARGE)
        except HTTPException as error:
            if error.status_code == 200:
                return web.Response(status=200)
            return self._refusal(error.status_code, error.reason, BAD_REQUEST)
        except Exception as error:
            if not is_database_unavailable(error):
                raise
            log.warning(
                "database unavailable",
                extra={
                    "request_id": request.get(REQUEST_ID),
                    "error": type(error).__name__,
                },
            )
            return self._refusal(503, DATABASE_UNAVAILABLE, SERVICE_UNAVAILABLE)

    def _refusal(self, status: int, message: str, code: str) -> web.Response:
        self.metrics.count_error(code)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return web.Response(
            body=orjson.dumps(error_body(message, code)),
            status=status,
            content_type="application/json",
            headers=headers,
        )

    def is_websocket_request(  # type: ignore[override]
        self, request: web.Request
    ) -> bool:
        # No subscriptions: skip building a WebSocketResponse per request.
        return False

    async def get_context(  # type: ignore[override]
        self, request: web.Request, response: web.Response
    ) -> RequestContext:
        principal = await self._principal(request)
        pool = self.database.pool
        return RequestContext(
            settings=self.settings,
            db=pool,
            principal=principal,
            loaders=Loaders(pool),
            request_id=request.get(REQUEST_ID, ""),
        )

    async def _principal(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization")
        wants_ide = (
            header is None
            and self.graphql_ide is not None
            and request.method == "GET"
            and "text/html" in request.headers.get("Accept", "")
        )
        if wants_ide:
            # The GraphiQL page itself holds no data; its queries authenticate.
            return Principal(kind="anonymous", subject="")
        if request.content_length is not None and (
            request.content_length > self.settings.api.max_body_bytes
        ):
            # Refuse before spending a database lookup on the credentials.
            raise web.HTTPRequestEntityTooLarge(
                max_size=self.settings.api.max_body_bytes,
                actual_size=request.content_length,
            )
        return await self.authenticator.authenticate(header)

    async def parse_http_body(  # type: ignore[override]
        self, request: AsyncHTTPRequestAdapter, context: RequestContext
    ) -> GraphQLRequestData:
        """A plain JSON POST directly; anything else as graphql-server does it.

        graphql-server parses Content-Type and Accept with the email package
        on every request, which costs more than executing a cached query.
        """
        headers = request.headers
        content_type = headers.get("Content-Type", "")
        plain = (
            request.method == "POST"
            and content_type.split(";", 1)[0].strip() == "application/json"
            and "graphql-response" not in headers.get("Accept", "")
            and "multipart" not in headers.get("Accept", "")
        )
        if not plain:
            parse = super().parse_http_body
            return await parse(request, context)  # type: ignore[arg-type]
        data = self.parse_json(await request.get_body())
        if not isinstance(data, dict):
            raise HTTPException(400, "the request body must be a JSON object")
        return GraphQLRequestData(
            query=data.get("query"),
            document=None,
            variables=data.get("variables"),
            operation_name=data.get("operationName"),
            extensions=data.get("extensions"),
            protocol="http",
        )

    def decode_json(self, data: str | bytes) -> object:
        return orjson.loads(data)

    def encode_json(self, data: object) -> str:
        return orjson.dumps(data).decode()

    async def execute_operation(  # type: ignore[override]
        self,
        request_adapter: AsyncHTTPRequestAdapter,
        request_data: GraphQLRequestData,
        context: RequestContext,
        root_value: Any,
        allowed_operation_types: set[OperationType],
    ) -> ExecutionResult:
        query = request_data.query
        if not isinstance(query, str) or not query.strip():
            message = "no GraphQL query found in the request"
            return ExecutionResult(None, [coded_error(message, BAD_REQUEST)])

        prepared = self.documents.prepare(query)
        if prepared.document is None:
            return ExecutionResult(None, prepared.errors)

        name = request_data.operation_name
        if name is None and len(prepared.operations) > 1:
            message = "operationName is required: the document has several"
            return ExecutionResult(None, [coded_error(message, BAD_REQUEST)])
        operation = (
            prepared.operations.get(name)
            if name is not None
            else next(iter(prepared.operations.values()), None)
        )
        if operation is None:
            message = f"no operation named {name!r} in the document"
            return ExecutionResult(None, [coded_error(message, BAD_REQUEST)])
        if operation not in allowed_operation_types:
            raise InvalidOperationTypeError(operation, allowed_operation_types)

        result = execute(
            self.schema,
            prepared.document,
            context_value=context,
            variable_values=request_data.variables,
            operation_name=name,
            is_awaitable=_is_coroutine,
            hide_suggestions=not self.settings.api.introspection,
            execution_context_class=SerialMutations,
        )
        if isawaitable(result):
            result = await result
        return result

    async def process_result(  # type: ignore[override]
        self, request: web.Request, result: ExecutionResult, strict: bool = False
    ) -> GraphQLHTTPResponse:
        answer: GraphQLHTTPResponse = {}
        if not (strict and result.data is None):
            answer["data"] = result.data
        if result.errors:
            request_id = request.get(REQUEST_ID, "")
            errors: list[object] = []
            for error in result.errors:
                formatted = format_error(error, request_id)
                self.metrics.count_error(formatted["extensions"]["code"])
                errors.append(formatted)
            answer["errors"] = errors
        return answer

    def create_response(  # type: ignore[override]
        self,
        response_data: GraphQLHTTPResponse,
        sub_response: web.Response,
        is_strict: bool,
    ) -> web.Response:
        # graphql-server marks strict-protocol validation failures this way.
        status = getattr(sub_response, "status_code", None) or sub_response.status
        return web.Response(
            body=orjson.dumps(response_data),
            status=status,
            content_type=(
                "application/graphql-response+json" if is_strict else "application/json"
            ),
        )
