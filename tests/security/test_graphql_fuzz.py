"""GraphQL under hostile input, generated with Hypothesis: random documents
and bodies, invalid UTF-8, deep nesting and alias floods through fragments,
huge strings, SQL metacharacters in every string field and wrong types.

Every answer must be a clean refusal or a result: never a 500, never an
INTERNAL error, nothing of the implementation (stack traces, SQL, driver or
Python class names), and no request may take longer than its deadline.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manager.db.pool import DatabaseTarget
from tests.conftest import Figures
from tests.support.api import ApiClient, create_tree, serve_api

# The longest any one request may take before the API counts as hung.
REQUEST_DEADLINE = 10.0

FUZZ = settings(
    max_examples=120,
    deadline=None,  # REQUEST_DEADLINE bounds each request instead
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# Text that would show the implementation: tracebacks, SQL, driver and
# Python names. A marker the request itself contained may be echoed back
# (for example a name that says SELECT), so only new ones count.
LEAKS = (
    "Traceback",
    'File "',
    ".py",
    "asyncpg",
    "psycopg",
    "pg_catalog",
    "syntax error at or near",
    "SELECT ",
    "INSERT INTO",
    "DELETE FROM",
    "UPDATE ",
    " WHERE ",
    "duplicate key",
    "violates",
    "<class '",
    "Exception",
    "KeyError",
    "TypeError",
    "ValueError",
    "AttributeError",
    "IndexError",
    "RecursionError",
    "invalid literal for",
    "object has no attribute",
    "NoneType",
    "manager.",
)

# Strings that break naive SQL, JSON, URL or path handling.
HOSTILE_STRINGS = st.one_of(
    st.sampled_from(
        [
            "'",
            '"',
            "';--",
            "' OR '1'='1",
            "1; DROP TABLE projects; --",
            "Robert'); DROP TABLE tenants;--",
            "\\",
            "%",
            "_%_",
            "$1",
            "$$",
            "E'\\x00'",
            "\x00",
            "a\x00b",
            "\u202e",
            "🙂",
            "{}",
            "[]",
            "null",
            "../../etc/passwd",
            "/*",
            "*/",
            "\r\n",
            " ",
            "",
            "x" * 5000,
        ]
    ),
    st.text(max_size=300),
)

STRING_FIELDS = """
mutation ($s: String!, $id: ID!, $json: JSON) {
  a: createProject(input: {name: $s}) { id }
  b: createTenant(input: {projectId: $id, name: $s}) { id }
  c: createApplication(input: {tenantId: $id, name: $s, backendUrl: $s}) {
    signingSecret
  }
  d: createTrigger(input: {applicationId: $id, name: $s, schedule: $s,
                           timezone: $s, path: $s, payload: $json}) { id }
  e: updateTrigger(id: $id, input: {name: $s, schedule: $s, timezone: $s,
                                    path: $s, payload: $json}) { id }
  f: createApiToken(input: {tenantId: $id, name: $s}) { token }
  g: addTenantMember(input: {tenantId: $id, subject: $s, role: VIEWER}) { role }
}
"""

READS = """
query ($s: String!, $id: ID!) {
  project(id: $id) { id }
  trigger(id: $s) { id }
  triggerRuns(triggerId: $id, after: $s) { totalCount }
  schedulePreview(schedule: $s, timezone: $s)
}
"""


@pytest.fixture
async def api(database: DatabaseTarget) -> AsyncIterator[ApiClient]:
    async with serve_api(database) as client:
        yield client


@pytest.fixture
async def tree(api: ApiClient) -> dict[str, str]:
    return await create_tree(api)


class Answers:
    """Counts what the fuzzing saw, for the figures."""

    def __init__(self) -> None:
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self.slowest = 0.0


async def send(
    api: ApiClient,
    body: bytes,
    answers: Answers,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    """POST raw bytes to /query and check the answer is clean."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(REQUEST_DEADLINE):
        response = await api.http.post(
            # A stream: aiohttp warns about large bodies given as bytes.
            "/query",
            data=io.BytesIO(body),
            headers={"Content-Type": content_type},
        )
        text = await response.read()
    answers.requests += 1
    answers.statuses[response.status] = answers.statuses.get(response.status, 0) + 1
    answers.slowest = max(answers.slowest, loop.time() - started)

    assert response.status < 500, (response.status, text[:500])
    answer = orjson.loads(text)
    assert isinstance(answer, dict) and ("errors" in answer or "data" in answer)
    for error in answer.get("errors") or []:
        assert error["extensions"]["code"] != "INTERNAL", (body[:300], error)
    shown = text.decode()
    sent = body.decode("utf-8", "replace")
    for marker in LEAKS:
        if marker in shown and marker not in sent:
            raise AssertionError(f"{marker!r} leaked: {shown[:500]}")
    return response.status, answer


def encoded(value: Any) -> bytes:
    """JSON as a client might send it: the standard library's encoder takes
    integers of any size, NaN and lone surrogates (escaped), all hostile."""
    return json.dumps(value).encode()


def document(query: Any, variables: Any = None) -> bytes:
    return encoded({"query": query, "variables": variables})


def nested(depth: int) -> str:
    """projects { tenants { project { tenants { ... } } } }, `depth` deep."""
    fields = ["tenants", "project"]
    opened = "".join(f"{fields[level % 2]} {{ " for level in range(depth))
    return f"{{ projects {{ {opened}id {'} ' * depth}}} }}"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | HOSTILE_STRINGS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@pytest.fixture
def answers(figures: Figures) -> Any:
    seen = Answers()
    yield seen
    figures(
        requests=seen.requests,
        statuses={str(status): count for status, count in seen.statuses.items()},
        slowest_s=round(seen.slowest, 3),
    )


@FUZZ
@given(query=st.text(max_size=400), variables=JSON_VALUES)
async def test_random_documents(
    api: ApiClient, answers: Answers, figures: Figures, query: str, variables: Any
) -> None:
    figures("security: GraphQL fuzzing, random documents")
    await send(api, document(query, variables), answers)


@FUZZ
@given(body=st.binary(max_size=2000))
async def test_random_bytes_and_invalid_utf8(
    api: ApiClient, answers: Answers, figures: Figures, body: bytes
) -> None:
    figures("security: GraphQL fuzzing, raw bytes and invalid UTF-8")
    await send(api, body, answers)
    await send(api, b'{"query": "{ me { kind } }", "x": "' + body + b'"}', answers)
    await send(api, body, answers, content_type="application/graphql")


@FUZZ
@given(
    depth=st.integers(1, 400),
    spreads=st.integers(1, 300),
    aliases=st.integers(1, 300),
    cyclic=st.booleans(),
)
async def test_deep_nesting_and_alias_floods_through_fragments(
    api: ApiClient,
    answers: Answers,
    figures: Figures,
    depth: int,
    spreads: int,
    aliases: int,
    cyclic: bool,
) -> None:
    figures("security: GraphQL fuzzing, nesting and alias floods")
    await send(api, document(nested(depth)), answers)

    flood = " ".join(f"a{number}: projects {{ id }}" for number in range(aliases))
    spread = " ".join("...F" for _ in range(spreads))
    query = f"query {{ {spread} }} fragment F on Query {{ {flood} }}"
    await send(api, document(query), answers)

    # A chain of fragments, each nesting one level; optionally a cycle.
    chain = [
        f"fragment F{level} on Tenant {{ project {{ tenants {{ ...F{level + 1} }} }} }}"
        for level in range(min(depth, 60))
    ]
    last = "...F0" if cyclic else "id"
    chain.append(f"fragment F{min(depth, 60)} on Tenant {{ {last} }}")
    query = "{ projects { tenants { ...F0 } } } " + " ".join(chain)
    await send(api, document(query), answers)


@FUZZ
@given(size=st.integers(0, 3 * 1024 * 1024), field=st.sampled_from(["s", "q"]))
async def test_huge_strings_and_payloads(
    api: ApiClient,
    tree: dict[str, str],
    answers: Answers,
    figures: Figures,
    size: int,
    field: str,
) -> None:
    figures("security: GraphQL fuzzing, huge strings")
    huge = "x" * size
    if field == "s":
        body = document(STRING_FIELDS, {"s": huge, "id": tree["tenant"], "json": huge})
    else:
        body = document("{ me { kind } }" + " " * size)
    await send(api, body, answers)


@FUZZ
@given(
    text=HOSTILE_STRINGS,
    payload=JSON_VALUES,
    which=st.sampled_from(["project", "tenant", "application", "trigger", "secret"]),
)
async def test_sql_metacharacters_in_every_string_field(
    api: ApiClient,
    tree: dict[str, str],
    answers: Answers,
    figures: Figures,
    text: str,
    payload: Any,
    which: str,
) -> None:
    figures("security: GraphQL fuzzing, SQL metacharacters in string fields")
    identifier = tree[which]
    await send(
        api,
        document(STRING_FIELDS, {"s": text, "id": identifier, "json": payload}),
        answers,
    )
    await send(api, document(READS, {"s": text, "id": identifier}), answers)
    await send(api, document(READS, {"s": text, "id": text}), answers)


@FUZZ
@given(
    value=JSON_VALUES,
    other=JSON_VALUES,
    query=st.sampled_from([STRING_FIELDS, READS]),
)
async def test_wrong_types_in_variables(
    api: ApiClient,
    answers: Answers,
    figures: Figures,
    value: Any,
    other: Any,
    query: str,
) -> None:
    figures("security: GraphQL fuzzing, wrong variable types")
    await send(api, document(query, {"s": value, "id": other, "json": value}), answers)
    await send(api, document(query, value), answers)
    await send(api, document(value, other), answers)
    await send(api, encoded(value), answers)
