"""Authentication against a real OIDC issuer, API tokens, and tenancy."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from manager.db.pool import DatabaseTarget
from tests.support.api import ApiClient, api_settings, create_tree, serve_api
from tests.support.oidc import ADMIN_GROUP, Issuer

ME = "{ me { kind subject name groups isAdmin memberships { tenant { name } role } } }"


@pytest.fixture
async def api(database: DatabaseTarget, issuer: Issuer) -> AsyncIterator[ApiClient]:
    settings = api_settings(
        PFY_POCKET_ID_HOST=issuer.url,
        PFY_POCKET_ID_JWKS_REFRESH_INTERVAL="0.2",
    )
    async with serve_api(database, settings) as client:
        yield client


async def refusal(api: ApiClient, token: str | None) -> dict[str, Any]:
    """The HTTP status and single error of a request that must be refused."""
    response = await api.http.post(
        "/query", json={"query": "{ me { subject } }"}, headers=api.headers(token)
    )
    body = await response.json()
    [error] = body["errors"]
    return {"status": response.status, **error}


async def test_valid_token_names_the_caller(api: ApiClient, issuer: Issuer) -> None:
    token = issuer.token("alice-id", ("staff",), name="Alice")
    me = (await api.data(ME, token=token))["me"]
    assert me == {
        "kind": "USER",
        "subject": "alice-id",
        "name": "Alice",
        "groups": ["staff"],
        "isAdmin": False,
        "memberships": [],
    }
    admin = issuer.token("root-id", (ADMIN_GROUP,))
    assert (await api.data(ME, token=admin))["me"]["isAdmin"] is True


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        ({"lifetime": -3600}, "token has expired"),
        ({"issuer": "http://127.0.0.1:1/elsewhere"}, "token is from another issuer"),
        ({"audience": "another-client"}, "token is for another audience"),
        ({"not_before": time.time() + 3600}, "token is not valid yet"),
    ],
)
async def test_spoiled_tokens_are_refused(
    api: ApiClient, issuer: Issuer, spoil: dict[str, Any], message: str
) -> None:
    refused = await refusal(api, issuer.token("alice-id", **spoil))
    assert refused["status"] == 401
    assert refused["extensions"] == {"code": "UNAUTHENTICATED"}
    assert refused["message"] == message


async def test_tampered_signature_is_refused(api: ApiClient, issuer: Issuer) -> None:
    header, payload, signature = issuer.token("alice-id").split(".")
    forged_payload = issuer.token("root-id", (ADMIN_GROUP,)).split(".")[1]
    forged = f"{header}.{forged_payload}.{signature}"
    refused = await refusal(api, forged)
    assert refused["status"] == 401
    assert refused["message"] == "token signature does not verify"

    flipped = signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")
    refused = await refusal(api, f"{header}.{payload}.{flipped}")
    assert refused["status"] == 401


async def test_missing_or_malformed_credentials(api: ApiClient) -> None:
    assert (await refusal(api, None))["message"] == "missing bearer token"
    response = await api.http.post(
        "/query",
        json={"query": "{ me { subject } }"},
        headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"},
    )
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert (await refusal(api, "not-a-jwt"))["message"] == "bearer token is not a JWT"


async def test_unknown_key_id_refreshes_the_keys_once(
    api: ApiClient, issuer: Issuer
) -> None:
    await api.data(ME, token=issuer.token("alice-id"))
    assert issuer.jwks_fetches == 1

    issuer.rotate()
    await asyncio.sleep(0.3)
    me = await api.data(ME, token=issuer.token("alice-id"))
    assert me["me"]["subject"] == "alice-id"
    assert issuer.jwks_fetches == 2

    # A flood of made-up key ids costs at most one more fetch.
    bogus = [issuer.token("alice-id", kid=f"bogus-{number}") for number in range(40)]
    await asyncio.sleep(0.3)
    results = await asyncio.gather(*(refusal(api, token) for token in bogus))
    assert {result["status"] for result in results} == {401}
    assert {result["message"] for result in results} == {
        "token signed with an unknown key"
    }
    assert issuer.jwks_fetches <= 3


async def test_issuer_down_is_service_unavailable(
    database: DatabaseTarget, issuer: Issuer
) -> None:
    issuer.available = False
    settings = api_settings(PFY_POCKET_ID_HOST=issuer.url)
    async with serve_api(database, settings) as api:
        refused = await refusal(api, issuer.token("alice-id"))
    assert refused["status"] == 503
    assert refused["extensions"]["code"] == "SERVICE_UNAVAILABLE"


ADD_MEMBER = """
mutation ($tenant: ID!, $subject: String!, $kind: MemberKind!, $role: Role!) {
  addTenantMember(
    input: {tenantId: $tenant, subject: $subject, kind: $kind, role: $role}
  ) { subject }
}
"""


@pytest.fixture
async def tenancy(api: ApiClient, issuer: Issuer) -> dict[str, Any]:
    """Tenants A and B; alice edits A, the group team-a views A."""
    admin = issuer.token("root-id", (ADMIN_GROUP,))
    first = await create_tree(api, "a-", token=admin)
    second = await create_tree(api, "b-", token=admin)
    members = (
        {"subject": "alice-id", "kind": "USER", "role": "EDITOR"},
        {"subject": "team-a", "kind": "GROUP", "role": "VIEWER"},
    )
    for member in members:
        await api.data(ADD_MEMBER, {"tenant": first["tenant"], **member}, token=admin)
    return {
        "a": first,
        "b": second,
        "admin": admin,
        "alice": issuer.token("alice-id"),
        "bob": issuer.token("bob-id", ("team-a",)),
    }


async def test_members_see_only_their_tenants(
    api: ApiClient, tenancy: dict[str, Any]
) -> None:
    alice, first, second = tenancy["alice"], tenancy["a"], tenancy["b"]
    projects = await api.data(
        "{ projects { name tenants { name applications { name } } } }", token=alice
    )
    assert projects == {
        "projects": [
            {
                "name": "a-project",
                "tenants": [{"name": "a-tenant", "applications": [{"name": "a-app"}]}],
            }
        ]
    }
    me = (await api.data(ME, token=alice))["me"]
    assert me["memberships"] == [{"tenant": {"name": "a-tenant"}, "role": "EDITOR"}]

    for field in ("project", "tenant", "application", "trigger"):
        hidden = await api.error(
            f'{{ {field}(id: "{second[field]}") {{ id }} }}', token=alice
        )
        assert hidden["extensions"] == {"code": "NOT_FOUND"}
        assert hidden["message"] == f"{field} {second[field]} does not exist"

    runs = await api.error(
        f'{{ triggerRuns(triggerId: "{second["trigger"]}") {{ totalCount }} }}',
        token=alice,
    )
    assert runs["extensions"]["code"] == "NOT_FOUND"
    assert (
        await api.data(
            f'{{ trigger(id: "{first["trigger"]}") {{ name }} }}', token=alice
        )
    )["trigger"] == {"name": "a-nightly"}


# Changes by kind of object; each takes the object's id as $id.
CHANGES = {
    "trigger": [
        "runTrigger(id: $id) { id }",
        "pauseTrigger(id: $id) { id }",
        "deleteTrigger(id: $id)",
        'updateTrigger(id: $id, input: {name: "x"}) { id }',
    ],
    "application": [
        "deleteApplication(id: $id)",
        "rotateApplicationSecret(id: $id) { signingSecret }",
    ],
    "tenant": [
        'updateTenant(id: $id, input: {name: "x"}) { id }',
        'createApiToken(input: {tenantId: $id, name: "x"}) { token }',
        "createApplication(input: "
        '{tenantId: $id, name: "x", backendUrl: "http://127.0.0.1:9/"})'
        " { signingSecret }",
    ],
    "project": ["deleteProject(id: $id)"],
}


async def change(
    api: ApiClient, field: str, identifier: str, token: str
) -> dict[str, Any]:
    """The single error of a mutation on one object, which must fail."""
    return await api.error(
        f"mutation ($id: ID!) {{ {field} }}", {"id": identifier}, token=token
    )


async def test_members_cannot_change_other_tenants(
    api: ApiClient, tenancy: dict[str, Any]
) -> None:
    alice, first, second = tenancy["alice"], tenancy["a"], tenancy["b"]
    for kind, fields in CHANGES.items():
        for field in fields:
            error = await change(api, field, second[kind], alice)
            assert error["extensions"]["code"] == "NOT_FOUND", field

    for field in (
        'createTenant(input: {projectId: $id, name: "t"}) { id }',
        "deleteProject(id: $id)",
    ):
        error = await change(api, field, first["project"], alice)
        assert error["extensions"]["code"] == "FORBIDDEN", field
    project = await api.error(
        'mutation { createProject(input: {name: "mine"}) { id } }', token=alice
    )
    assert project["extensions"]["code"] == "FORBIDDEN"
    assert project["message"] == "only administrators may create projects"

    # Within her own tenant she edits.
    run = await api.data(
        "mutation ($id: ID!) { runTrigger(id: $id) { status } }",
        {"id": first["trigger"]},
        token=alice,
    )
    assert run == {"runTrigger": {"status": "QUEUED"}}


async def test_viewers_read_but_cannot_change(
    api: ApiClient, tenancy: dict[str, Any]
) -> None:
    bob, first = tenancy["bob"], tenancy["a"]
    read = await api.data(
        "query ($id: ID!) { trigger(id: $id) { name application { name } } }",
        {"id": first["trigger"]},
        token=bob,
    )
    assert read["trigger"]["application"] == {"name": "a-app"}

    for kind in ("trigger", "application"):
        for field in CHANGES[kind]:
            error = await change(api, field, first[kind], bob)
            assert error["extensions"]["code"] == "FORBIDDEN", field
            assert error["message"] == "your role in this tenant is viewer"


CREATE_TOKEN = """
mutation ($tenant: ID!, $role: Role!) {
  createApiToken(input: {tenantId: $tenant, name: "machine", role: $role}) {
    token apiToken { id }
  }
}
"""


async def test_api_tokens_act_within_their_tenant(
    api: ApiClient, tenancy: dict[str, Any], pool: asyncpg.Pool
) -> None:
    first, second = tenancy["a"], tenancy["b"]
    made = await api.data(
        CREATE_TOKEN,
        {"tenant": first["tenant"], "role": "EDITOR"},
        token=tenancy["alice"],
    )
    editor = made["createApiToken"]
    viewer = (
        await api.data(
            CREATE_TOKEN,
            {"tenant": first["tenant"], "role": "VIEWER"},
            token=tenancy["admin"],
        )
    )["createApiToken"]["token"]
    stored = await pool.fetch("SELECT token_hash FROM api_tokens")
    assert all(editor["token"].encode() not in row["token_hash"] for row in stored)

    me = (await api.data(ME, token=editor["token"]))["me"]
    assert me["kind"] == "API_TOKEN" and me["subject"] == editor["apiToken"]["id"]
    run = await api.data(
        "mutation ($id: ID!) { runTrigger(id: $id) { status } }",
        {"id": first["trigger"]},
        token=editor["token"],
    )
    assert run["runTrigger"]["status"] == "QUEUED"
    hidden = await api.error(
        f'{{ trigger(id: "{second["trigger"]}") {{ id }} }}', token=editor["token"]
    )
    assert hidden["extensions"]["code"] == "NOT_FOUND"

    forbidden = await change(api, CHANGES["trigger"][0], first["trigger"], viewer)
    assert forbidden["extensions"]["code"] == "FORBIDDEN"
    minting = await api.error(
        CREATE_TOKEN,
        {"tenant": first["tenant"], "role": "EDITOR"},
        token=editor["token"],
    )
    assert minting["extensions"]["code"] == "FORBIDDEN"

    used = await pool.fetchval(
        "SELECT last_used_at FROM api_tokens WHERE id = $1",
        uuid.UUID(editor["apiToken"]["id"]),
    )
    assert used is not None

    await api.data(
        "mutation ($id: ID!) { revokeApiToken(id: $id) { revokedAt } }",
        {"id": editor["apiToken"]["id"]},
        token=tenancy["alice"],
    )
    refused = await refusal(api, editor["token"])
    assert refused["status"] == 401
    assert refused["message"] == "API token is unknown or revoked"
