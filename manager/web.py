"""HTTP pieces that the API and the executor's metrics server both serve.

`/health` and the per-request log line live here so that neither the API nor
the executor has to import the other.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from manager import __version__
from manager.db.database import Database

log = logging.getLogger("manager.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Told of every request once it is answered: request, status, seconds.
RequestObserver = Callable[[web.Request, int, float], None]

DATABASE_KEY = web.AppKey("database", Database)
MODE_KEY = web.AppKey("mode", str)

# Request ids: random per process, then counted, so that they are unique
# across replicas without asking the kernel for randomness on every request.
_REQUEST_ID_PREFIX = secrets.token_hex(5) + "-"
_request_numbers = itertools.count(1)

# An application that counts its requests (the API's metrics) puts its
# observer here; the log middleware calls it, which costs less than a
# middleware of its own.
OBSERVER_KEY: web.AppKey[RequestObserver] = web.AppKey("request_observer")

# Where log_requests keeps the request's id, and the header that returns it.
REQUEST_ID = web.RequestKey("request_id", str)
REQUEST_ID_HEADER = "X-Request-Id"


async def health(request: web.Request) -> web.Response:
    """200 when the database answers within a second, else 503."""
    database = request.app[DATABASE_KEY]
    connected = await database.is_reachable()
    body = {
        "status": "healthy" if connected else "unhealthy",
        "database": "connected" if connected else "disconnected",
        "version": __version__,
        "mode": request.app[MODE_KEY],
    }
    return web.json_response(body, status=200 if connected else 503)


@web.middleware
async def log_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One log line per request: method, path, status, duration_ms, request_id.

    The request id is also sent back in X-Request-Id and quoted in error
    answers, so a client's report leads straight to the log line. The app's
    request observer, if it has one, is told of the request too.
    """
    started = time.perf_counter()
    status = 500
    request_id = f"{_REQUEST_ID_PREFIX}{next(_request_numbers):x}"
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        elapsed = time.perf_counter() - started
        log.info(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
                "request_id": request_id,
            },
        )
        observer = request.app.get(OBSERVER_KEY)
        if observer is not None:
            observer(request, status, elapsed)
