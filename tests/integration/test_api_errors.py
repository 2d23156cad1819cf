"""Errors and limits: every refusal is JSON with a code and no internals."""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from manager.api.app import build_app
from manager.db.database import Database
from manager.db.pool import DatabaseTarget
from manager.logs import JsonFormatter
from tests.support.api import (
    CREATE_APPLICATION,
    CREATE_PROJECT,
    CREATE_TRIGGER,
    ApiClient,
    api_settings,
    create_tree,
    serve_api,
)
from tests.support.ports import free_port


@pytest.fixture
async def api(database: DatabaseTarget) -> AsyncIterator[ApiClient]:
    settings = api_settings(PFY_API_MAX_DEPTH="4", PFY_API_MAX_ALIASES="5")
    async with serve_api(database, settings) as client:
        yield client


async def test_bad_schedule_names_the_field(api: ApiClient) -> None:
    ids = await create_tree(api)
    error = await api.error(
        CREATE_TRIGGER,
        {
            "input": {
                "applicationId": ids["application"],
                "name": "broken",
                "schedule": "* * *",
            }
        },
    )
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "schedule"}
    assert error["message"] == "schedule: expected 5 or 6 fields, got 3"

    zone = await api.error(
        CREATE_TRIGGER,
        {
            "input": {
                "applicationId": ids["application"],
                "name": "zoned",
                "schedule": "* * * * *",
                "timezone": "Mars/Olympus",
            }
        },
    )
    assert zone["extensions"]["field"] == "timezone"
    assert "Mars/Olympus" in zone["message"]


async def test_duplicate_names_are_bad_input(api: ApiClient) -> None:
    ids = await create_tree(api)
    project = await api.error(CREATE_PROJECT, {"name": "project"})
    assert project["extensions"] == {"code": "BAD_USER_INPUT", "field": "name"}
    assert "already exists" in project["message"]

    trigger = await api.error(
        CREATE_TRIGGER,
        {
            "input": {
                "applicationId": ids["application"],
                "name": "nightly",
                "schedule": "0 1 * * *",
            }
        },
    )
    assert trigger["extensions"] == {"code": "BAD_USER_INPUT", "field": "name"}


async def test_unknown_and_malformed_ids(api: ApiClient) -> None:
    missing = "7d1f2a3b-0000-4000-8000-000000000000"
    for field in ("project", "tenant", "application", "trigger"):
        error = await api.error(
            f'{{ {field}(id: "{missing}") {{ id }} }}',
        )
        assert error["extensions"] == {"code": "NOT_FOUND"}
        assert error["message"] == f"{field} {missing} does not exist"
        assert error["path"] == [field]

    malformed = await api.error('{ trigger(id: "nope") { id } }')
    assert malformed["extensions"] == {"code": "BAD_USER_INPUT", "field": "id"}

    runs = await api.error(
        f'mutation {{ runTrigger(id: "{missing}") {{ id }} }}',
    )
    assert runs["extensions"]["code"] == "NOT_FOUND"


async def test_metadata_backend_url_is_refused(api: ApiClient) -> None:
    ids = await create_tree(api)
    error = await api.error(
        CREATE_APPLICATION,
        {
            "tenantId": ids["tenant"],
            "name": "sneaky",
            "backendUrl": "http://169.254.169.254/latest/meta-data",
        },
    )
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "backendUrl"}
    assert error["message"].startswith("backendUrl: ")


async def test_page_size_limit(api: ApiClient) -> None:
    ids = await create_tree(api)
    query = (
        "query ($id: ID!, $first: Int) "
        "{ triggerRuns(triggerId: $id, first: $first) { totalCount } }"
    )
    error = await api.error(query, {"id": ids["trigger"], "first": 501})
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "first"}
    assert error["message"] == "first: must be from 0 to 500"
    assert await api.data(query, {"id": ids["trigger"], "first": 500})


async def test_depth_limit_counts_through_fragments(api: ApiClient) -> None:
    allowed = "{ projects { tenants { applications { id } } } }"
    assert await api.data(allowed) == {"projects": []}

    deep = """
    { projects { ...P } }
    fragment P on Project { tenants { ...T } }
    fragment T on Tenant { applications { ...A } }
    fragment A on Application { triggers { id } }
    """
    error = await api.error(deep)
    assert error["extensions"] == {
        "code": "GRAPHQL_VALIDATION_FAILED",
        "limit": "max_depth",
    }
    assert error["message"] == "query is nested deeper than 4 levels"


async def test_alias_limit_counts_through_fragments(api: ApiClient) -> None:
    fine = "{ a: projects { id } b: projects { id } }"
    assert (await api.data(fine)) == {"a": [], "b": []}

    spread = """
    { projects { ...Names } again: projects { ...Names } }
    fragment Names on Project { first: name second: name third: id }
    """
    error = await api.error(spread)
    assert error["extensions"]["limit"] == "max_aliases"
    assert error["message"] == "query uses 7 aliases, more than the 5 allowed"


async def test_body_size_limit(api: ApiClient) -> None:
    padding = " " * (1024 * 1024 + 1)
    response = await api.http.post(
        "/query",
        data=io.BytesIO(orjson.dumps({"query": "{ projects { id } }" + padding})),
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 413
    body = await response.json()
    assert body["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
    assert "1048576 bytes" in body["errors"][0]["message"]

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the size is only known while reading.
        yield b'{"query": "{ projects { id } }", "x": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    chunked = await api.http.post(
        "/query", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert chunked.status == 413
    assert (await chunked.json())["errors"][0]["extensions"]["code"] == (
        "PAYLOAD_TOO_LARGE"
    )


async def test_malformed_requests_answer_json(api: ApiClient) -> None:
    syntax = await api.error("{ projects { id }")
    assert syntax["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"

    unknown = await api.error("{ projects { secretField } }")
    assert unknown["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"

    variables = await api.error(
        "query ($id: ID!) { trigger(id: $id) { id } }", {"id": None}
    )
    assert variables["extensions"]["code"] == "BAD_USER_INPUT"

    for body, content_type in (
        (b"{not json", "application/json"),
        (b"query=1", "text/plain"),
    ):
        response = await api.http.post(
            "/query", data=body, headers={"Content-Type": content_type}
        )
        assert response.status == 400
        answer = await response.json()
        assert answer["errors"][0]["extensions"]["code"] == "BAD_REQUEST"

    mutation_by_get = await api.http.get(
        "/query",
        params={"query": 'mutation { createProject(input: {name: "x"}) { id } }'},
    )
    assert mutation_by_get.status in (400, 405)
    assert (await mutation_by_get.json())["errors"][0]["message"]


async def test_introspection_can_be_switched_off(database: DatabaseTarget) -> None:
    settings = api_settings(PFY_API_INTROSPECTION="false")
    async with serve_api(database, settings) as api:
        answer = await api.post("{ __schema { types { name } } }")
        error = answer["errors"][0]
        assert answer["data"] is None
        assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        assert "introspection" in error["message"].lower()

        # Nor do suggestions give field names away.
        typo = await api.error("{ projets { id } }")
        assert "Did you mean" not in typo["message"]

    async with serve_api(database) as api:
        types = await api.data("{ __schema { types { name } } }")
        assert {"name": "Trigger"} in types["__schema"]["types"]


async def test_unexpected_failure_is_internal_with_request_id(
    api: ApiClient, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    ids = await create_tree(api)
    # A schema the code does not expect: every read of triggers now fails.
    await pool.execute("ALTER TABLE triggers RENAME COLUMN payload TO payload_old")

    caplog.set_level(logging.INFO)
    response = await api.http.post(
        "/query",
        json={"query": f'{{ trigger(id: "{ids["trigger"]}") {{ id payload }} }}'},
    )
    answer = await response.json()
    [error] = answer["errors"]
    assert error["extensions"]["code"] == "INTERNAL"
    request_id = error["extensions"]["requestId"]
    assert request_id == response.headers["X-Request-Id"]
    text = orjson.dumps(answer).decode().lower()
    for leak in ("select", "payload_old", "traceback", "undefinedcolumn", "asyncpg"):
        assert leak not in text

    [logged] = [
        record for record in caplog.records if record.getMessage() == "request failed"
    ]
    assert logged.levelname == "ERROR"
    assert logged.request_id == request_id
    assert logged.exc_info is not None


async def test_database_down_is_a_clear_error(postgres: object) -> None:
    nowhere = DatabaseTarget(
        host="127.0.0.1",
        port=free_port(),
        user="manager",
        password="",
        database="manager",
        connect_timeout=1.0,
    )
    pool = await asyncpg.create_pool(
        **nowhere.connect_arguments(), min_size=0, max_size=2
    )
    assert pool is not None
    app = build_app(api_settings(), Database(nowhere, pool))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        response = await client.post("/query", json={"query": "{ projects { id } }"})
        answer = await response.json()
        health = await client.get("/health")
    await pool.close()

    assert response.status == 200
    [error] = answer["errors"]
    assert error["message"] == "database unavailable"
    assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE"
    assert health.status == 503


async def test_no_secret_reaches_a_log_line(
    api: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ids = await create_tree(api)
    created = await api.data(
        """
        mutation ($tenant: ID!) {
          createApiToken(input: {tenantId: $tenant, name: "ci", role: EDITOR}) { token }
        }
        """,
        {"tenant": ids["tenant"]},
    )
    token = created["createApiToken"]["token"]
    await api.data("{ me { kind } }", token=token)
    await api.post("{ me { kind } }", token="pfy_not-a-real-token")
    await api.post("{ me { kind } }", token="eyJhbGciOiJub25lIn0.e30.bogus-signature")

    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert any('"msg":"request"' in line for line in lines)
    for line in lines:
        for secret in (ids["secret"], token, "pfy_not-a-real-token", "bogus-signature"):
            assert secret not in line
        assert "authorization" not in line.lower()


async def test_metrics_are_valid_prometheus_text(api: ApiClient) -> None:
    await api.data("{ projects { id } }")
    await api.post("{ nothing }")
    await api.http.get("/health")
    await api.http.get("/no-such-page")

    response = await api.http.get("/metrics")
    text = await response.text()
    assert response.status == 200
    assert 'pfy_api_requests_total{method="POST",route="/query",status="200"}' in text
    assert 'route="unmatched"' in text
    assert "pfy_api_request_duration_seconds_bucket" in text
    assert 'pfy_api_db_pool_connections{state="max"} 5' in text
    assert 'pfy_api_graphql_errors_total{code="GRAPHQL_VALIDATION_FAILED"}' in text

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    checker = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await checker.communicate(text.encode())
    assert checker.returncode == 0, output.decode()
