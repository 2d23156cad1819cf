"""Tenant isolation as a property: random principals doing random
operations never see or change another tenant's objects.

Each example builds a small world (two projects, three tenants, each with an
application, a trigger and a run), gives users, a group and API tokens
roles in some tenants, then runs a random sequence of reads and changes.
After every request: whatever came back belongs to tenants the principal
may see, objects it may not see are NOT_FOUND (never FORBIDDEN, which would
confirm they exist), and every tenant it may not edit is unchanged, row for
row.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manager.db.pool import DatabaseTarget
from tests.conftest import Figures
from tests.support.api import (
    CREATE_APPLICATION,
    CREATE_PROJECT,
    CREATE_TENANT,
    CREATE_TRIGGER,
    ApiClient,
    api_settings,
    serve_api,
)
from tests.support.oidc import ADMIN_GROUP, Issuer

ADD_MEMBER = """
mutation ($tenant: ID!, $subject: String!, $kind: MemberKind!, $role: Role!) {
  addTenantMember(
    input: {tenantId: $tenant, subject: $subject, kind: $kind, role: $role}
  ) { subject }
}
"""

CREATE_TOKEN = """
mutation ($tenant: ID!, $role: Role!) {
  createApiToken(input: {tenantId: $tenant, name: "machine", role: $role}) {
    token
  }
}
"""

LIST_ALL = """
{ projects { id tenants { id applications { id triggers { id } } } } }
"""

READS = {
    "project": "query ($id: ID!) { project(id: $id) { id name } }",
    "tenant": "query ($id: ID!) { tenant(id: $id) { id name } }",
    "application": "query ($id: ID!) { application(id: $id) { id backendUrl } }",
    "trigger": "query ($id: ID!) { trigger(id: $id) { id name } }",
    "runs": "query ($id: ID!) { triggerRuns(triggerId: $id) { totalCount } }",
}

# Changes, each on the object of one kind in the target tenant ($id).
CHANGES = {
    "trigger": [
        "runTrigger(id: $id) { id }",
        "pauseTrigger(id: $id) { id }",
        "resumeTrigger(id: $id) { id }",
        'updateTrigger(id: $id, input: {name: "renamed"}) { id }',
        "deleteTrigger(id: $id)",
    ],
    "application": [
        'updateApplication(id: $id, input: {name: "renamed"}) { id }',
        "rotateApplicationSecret(id: $id) { signingSecret }",
        "deleteApplication(id: $id)",
        'createTrigger(input: {applicationId: $id, name: "new", '
        'schedule: "@hourly"}) { id }',
    ],
    "tenant": [
        'updateTenant(id: $id, input: {name: "renamed"}) { id }',
        'createApplication(input: {tenantId: $id, name: "new", '
        'backendUrl: "http://127.0.0.1:9/"}) { signingSecret }',
        'createApiToken(input: {tenantId: $id, name: "minted"}) { token }',
        'addTenantMember(input: {tenantId: $id, subject: "mallory", '
        "role: EDITOR}) { role }",
        'removeTenantMember(input: {tenantId: $id, subject: "nobody"})',
        "deleteTenant(id: $id)",
    ],
}

# Every row that belongs to a tenant, as text, for before/after comparison.
# An API token's last use is the bookkeeping of its own requests.
TENANT_ROWS = """
SELECT 'tenant' AS kind, to_jsonb(t)::text AS row FROM tenants t WHERE t.id = $1
UNION ALL
SELECT 'application', to_jsonb(a)::text FROM applications a WHERE a.tenant_id = $1
UNION ALL
SELECT 'trigger', to_jsonb(tr)::text FROM triggers tr
  JOIN applications a ON a.id = tr.application_id WHERE a.tenant_id = $1
UNION ALL
SELECT 'run', to_jsonb(r)::text FROM trigger_runs r
  JOIN applications a ON a.id = r.application_id WHERE a.tenant_id = $1
UNION ALL
SELECT 'member', to_jsonb(m)::text FROM tenant_members m WHERE m.tenant_id = $1
UNION ALL
SELECT 'token', (to_jsonb(k) - 'last_used_at')::text FROM api_tokens k
  WHERE k.tenant_id = $1
ORDER BY 1, 2
"""


@dataclass
class Principal:
    name: str
    token: str
    roles: dict[int, str]  # tenant index -> VIEWER or EDITOR


@dataclass
class World:
    """Ids by tenant index, and who may do what where."""

    tenants: list[dict[str, str]] = field(default_factory=list)
    project_of: list[str] = field(default_factory=list)
    principals: list[Principal] = field(default_factory=list)

    def owner_of(self, identifier: str) -> int | None:
        for index, ids in enumerate(self.tenants):
            if identifier in ids.values():
                return index
        return None


@pytest.fixture
async def api(database: DatabaseTarget, issuer: Issuer) -> AsyncIterator[ApiClient]:
    settings = api_settings(PFY_POCKET_ID_HOST=issuer.url)
    async with serve_api(database, settings) as client:
        yield client


numbers = itertools.count()


async def build_world(api: ApiClient, issuer: Issuer) -> World:
    admin = issuer.token("root", (ADMIN_GROUP,))
    label = next(numbers)
    world = World()
    projects = [
        (await api.data(CREATE_PROJECT, {"name": f"p{label}-{n}"}, admin))[
            "createProject"
        ]["id"]
        for n in range(2)
    ]
    for index, project in enumerate([projects[0], projects[0], projects[1]]):
        tenant = (
            await api.data(
                CREATE_TENANT, {"projectId": project, "name": f"t{index}"}, admin
            )
        )["createTenant"]["id"]
        made = (
            await api.data(
                CREATE_APPLICATION,
                {
                    "tenantId": tenant,
                    "name": "app",
                    "backendUrl": "http://127.0.0.1:9/",
                },
                admin,
            )
        )["createApplication"]
        application = made["application"]["id"]
        trigger = (
            await api.data(
                CREATE_TRIGGER,
                {
                    "input": {
                        "applicationId": application,
                        "name": "nightly",
                        "schedule": "0 3 * * *",
                    }
                },
                admin,
            )
        )["createTrigger"]["id"]
        await api.data(
            "mutation ($id: ID!) { runTrigger(id: $id) { id } }", {"id": trigger}, admin
        )
        world.tenants.append(
            {
                "project": project,
                "tenant": tenant,
                "application": application,
                "trigger": trigger,
            }
        )
        world.project_of.append(project)

    users = {
        "alice": ({0: "EDITOR", 1: "VIEWER"}, ()),
        "bob": ({2: "VIEWER"}, ("team-c",)),
        "carol": ({}, ()),
    }
    for name, (roles, groups) in users.items():
        for tenant_index, role in roles.items():
            subject, kind = (groups[0], "GROUP") if groups else (name, "USER")
            await api.data(
                ADD_MEMBER,
                {
                    "tenant": world.tenants[tenant_index]["tenant"],
                    "subject": subject,
                    "kind": kind,
                    "role": role,
                },
                admin,
            )
        world.principals.append(Principal(name, issuer.token(name, groups), roles))
    for tenant_index, role in ((1, "EDITOR"), (2, "VIEWER")):
        token = (
            await api.data(
                CREATE_TOKEN,
                {"tenant": world.tenants[tenant_index]["tenant"], "role": role},
                admin,
            )
        )["createApiToken"]["token"]
        world.principals.append(
            Principal(f"token-{tenant_index}", token, {tenant_index: role})
        )
    return world


async def snapshot(pool: asyncpg.Pool, tenant: str) -> str:
    rows = await pool.fetch(TENANT_ROWS, tenant)
    text = "\n".join(f"{row['kind']} {row['row']}" for row in rows)
    return hashlib.sha256(text.encode()).hexdigest()


def ids_in(value: Any) -> set[str]:
    """Every "id" anywhere in an answer."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "id" and isinstance(item, str):
                found.add(item)
            else:
                found |= ids_in(item)
    elif isinstance(value, list):
        for item in value:
            found |= ids_in(item)
    return found


OPERATIONS = st.one_of(
    st.tuples(st.just("list"), st.just(""), st.integers(0, 2)),
    st.tuples(st.just("read"), st.sampled_from(sorted(READS)), st.integers(0, 2)),
    st.tuples(
        st.just("change"),
        st.sampled_from(
            [
                f"{kind}:{number}"
                for kind, fields in CHANGES.items()
                for number in range(len(fields))
            ]
        ),
        st.integers(0, 2),
    ),
)


class Tally:
    def __init__(self) -> None:
        self.requests = 0
        self.denied = 0
        self.allowed_changes = 0


@pytest.fixture
def tally(figures: Figures) -> Any:
    counts = Tally()
    yield counts
    figures(
        requests=counts.requests,
        refused_across_tenants=counts.denied,
        permitted_changes=counts.allowed_changes,
    )


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(st.tuples(st.integers(0, 4), OPERATIONS), min_size=1, max_size=8))
async def test_principals_never_reach_other_tenants(
    api: ApiClient,
    issuer: Issuer,
    pool: asyncpg.Pool,
    tally: Tally,
    figures: Figures,
    steps: list[tuple[int, tuple[str, str, int]]],
) -> None:
    figures("security: tenant isolation (property)")
    world = await build_world(api, issuer)
    for principal_index, (operation, what, target) in steps:
        principal = world.principals[principal_index]
        role = principal.roles.get(target)
        ids = world.tenants[target]
        guarded = {
            index: await snapshot(pool, world.tenants[index]["tenant"])
            for index in range(len(world.tenants))
            if principal.roles.get(index) != "EDITOR"
        }

        if operation == "list":
            answer = await api.post(LIST_ALL, token=principal.token)
            seen = ids_in(answer.get("data"))
            visible = {
                identifier
                for index in principal.roles
                for identifier in world.tenants[index].values()
            }
            # Ids of objects created during the example belong to tenants
            # the principal edits; ids of the world must be visible ones.
            assert (
                seen
                & {identifier for ids_ in world.tenants for identifier in ids_.values()}
                <= visible
            ), (principal.name, seen - visible)
        elif operation == "read":
            kind = what
            identifier = ids["trigger" if kind == "runs" else kind]
            answer = await api.post(READS[kind], {"id": identifier}, principal.token)
            if kind == "project":
                may_see = any(
                    world.project_of[index] == identifier for index in principal.roles
                )
            else:
                may_see = role is not None
            tally.denied += _check_refusal(answer, may_see, principal, kind)
        else:
            kind, number = what.split(":")
            query = f"mutation ($id: ID!) {{ {CHANGES[kind][int(number)]} }}"
            answer = await api.post(query, {"id": ids[kind]}, principal.token)
            if role is None:
                tally.denied += _check_refusal(answer, False, principal, kind)
            elif role == "VIEWER":
                assert answer.get("errors"), (principal.name, query, answer)
                assert answer["errors"][0]["extensions"]["code"] in (
                    "FORBIDDEN",
                    "NOT_FOUND",
                )
            elif not answer.get("errors"):
                tally.allowed_changes += 1

        tally.requests += 1
        for index, digest in guarded.items():
            after = await snapshot(pool, world.tenants[index]["tenant"])
            assert after == digest, (principal.name, operation, what, target, index)


def _check_refusal(
    answer: dict[str, Any], may_see: bool, principal: Principal, kind: str
) -> bool:
    """Check an answer about one object; True when it was refused."""
    errors = answer.get("errors") or []
    if may_see:
        # Objects deleted earlier in the example are gone for everyone.
        assert not errors or errors[0]["extensions"]["code"] == "NOT_FOUND", answer
        return False
    assert errors, (principal.name, kind, orjson.dumps(answer))
    # NOT_FOUND, never FORBIDDEN: a stranger learns nothing, not even that
    # the object exists.
    assert errors[0]["extensions"]["code"] == "NOT_FOUND", (principal.name, answer)
    data = answer.get("data")
    assert not ids_in(data), (principal.name, data)
    return True
