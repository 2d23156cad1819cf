"""Create, read, update and delete every type through GraphQL over real HTTP."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from manager.db.pool import TRIGGERS_CHANNEL, DatabaseTarget, connect
from tests.support.api import (
    CREATE_PROJECT,
    CREATE_TENANT,
    ApiClient,
    create_tree,
    serve_api,
)


@pytest.fixture
async def api(database: DatabaseTarget) -> AsyncIterator[ApiClient]:
    async with serve_api(database) as client:
        yield client


async def test_projects_and_tenants(api: ApiClient) -> None:
    project = (await api.data(CREATE_PROJECT, {"name": "Shop"}))["createProject"]
    tenant = (
        await api.data(CREATE_TENANT, {"projectId": project["id"], "name": "acme"})
    )["createTenant"]

    renamed = await api.data(
        """
        mutation ($id: ID!, $tenant: ID!) {
          updateProject(id: $id, input: {name: "Store"}) { name }
          updateTenant(id: $tenant, input: {name: "acme-eu"}) { name }
        }
        """,
        {"id": project["id"], "tenant": tenant["id"]},
    )
    assert renamed == {
        "updateProject": {"name": "Store"},
        "updateTenant": {"name": "acme-eu"},
    }

    listed = await api.data(
        "{ projects { name createdAt tenants { name project { name } } } }"
    )
    [only] = listed["projects"]
    assert only["name"] == "Store"
    assert only["createdAt"].endswith("Z")
    assert only["tenants"] == [{"name": "acme-eu", "project": {"name": "Store"}}]

    read = await api.data(
        "query ($id: ID!) { project(id: $id) { name } }", {"id": project["id"]}
    )
    assert read == {"project": {"name": "Store"}}

    deleted = await api.data(
        "mutation ($id: ID!) { deleteTenant(id: $id) }", {"id": tenant["id"]}
    )
    assert deleted == {"deleteTenant": True}
    await api.data(
        "mutation ($id: ID!) { deleteProject(id: $id) }", {"id": project["id"]}
    )
    assert (await api.data("{ projects { id } }")) == {"projects": []}


async def test_applications_and_their_secret(api: ApiClient) -> None:
    ids = await create_tree(api)
    assert ids["secret"].startswith("whsec_")

    updated = await api.data(
        """
        mutation ($id: ID!) {
          updateApplication(id: $id, input: {backendUrl: "https://backend.example/cb"})
          { name backendUrl tenant { name } }
        }
        """,
        {"id": ids["application"]},
    )
    assert updated["updateApplication"] == {
        "name": "app",
        "backendUrl": "https://backend.example/cb",
        "tenant": {"name": "tenant"},
    }

    rotated = await api.data(
        """
        mutation ($id: ID!) {
          rotateApplicationSecret(id: $id) { signingSecret application { id } }
        }
        """,
        {"id": ids["application"]},
    )
    secret = rotated["rotateApplicationSecret"]["signingSecret"]
    assert secret.startswith("whsec_") and secret != ids["secret"]

    read = await api.data(
        """
        query ($id: ID!) {
          application(id: $id) { name triggers { name } updatedAt }
        }
        """,
        {"id": ids["application"]},
    )
    assert read["application"]["triggers"] == [{"name": "nightly"}]

    await api.data(
        "mutation ($id: ID!) { deleteApplication(id: $id) }",
        {"id": ids["application"]},
    )
    gone = await api.error(
        "query ($id: ID!) { application(id: $id) { id } }",
        {"id": ids["application"]},
    )
    assert gone["extensions"]["code"] == "NOT_FOUND"


TRIGGER_FIELDS = """
id name schedule timezone enabled path payload timeoutSeconds maxRetries
misfirePolicy nextRunAt lastRunAt application { name }
"""


async def test_trigger_lifecycle(api: ApiClient) -> None:
    ids = await create_tree(api)
    created = await api.data(
        f"""
        mutation ($input: CreateTriggerInput!) {{
          createTrigger(input: $input) {{ {TRIGGER_FIELDS} }}
        }}
        """,
        {
            "input": {
                "applicationId": ids["application"],
                "name": "every-second",
                "schedule": "*/1 * * * * *",
                "timezone": "Europe/Berlin",
                "path": "/hooks/tick",
                "payload": {"report": "daily", "sizes": [1, 2]},
                "timeoutSeconds": 5,
                "maxRetries": 1,
                "misfirePolicy": "SKIP",
            }
        },
    )
    trigger = created["createTrigger"]
    assert trigger["timezone"] == "Europe/Berlin"
    assert trigger["payload"] == {"report": "daily", "sizes": [1, 2]}
    assert trigger["misfirePolicy"] == "SKIP"
    assert trigger["timeoutSeconds"] == 5.0
    assert trigger["enabled"] is True
    next_run = datetime.fromisoformat(trigger["nextRunAt"])
    assert next_run - datetime.now(UTC) < timedelta(seconds=5)

    updated = await api.data(
        """
        mutation ($id: ID!) {
          updateTrigger(id: $id, input: {schedule: "0 9 * * 1", path: null}) {
            schedule path maxRetries nextRunAt
          }
        }
        """,
        {"id": trigger["id"]},
    )
    assert updated["updateTrigger"]["schedule"] == "0 9 * * 1"
    assert updated["updateTrigger"]["path"] is None
    assert updated["updateTrigger"]["maxRetries"] == 1
    monday = datetime.fromisoformat(updated["updateTrigger"]["nextRunAt"])
    local = monday.astimezone(ZoneInfo("Europe/Berlin"))
    assert (local.weekday(), local.hour, local.minute) == (0, 9, 0)

    paused = await api.data(
        "mutation ($id: ID!) { pauseTrigger(id: $id) { enabled nextRunAt } }",
        {"id": trigger["id"]},
    )
    assert paused["pauseTrigger"] == {"enabled": False, "nextRunAt": None}
    resumed = await api.data(
        "mutation ($id: ID!) { resumeTrigger(id: $id) { enabled nextRunAt } }",
        {"id": trigger["id"]},
    )
    assert resumed["resumeTrigger"]["enabled"] is True
    assert resumed["resumeTrigger"]["nextRunAt"] is not None

    deleted = await api.data(
        "mutation ($id: ID!) { deleteTrigger(id: $id) }", {"id": trigger["id"]}
    )
    assert deleted == {"deleteTrigger": True}
    names = await api.data(
        "query ($id: ID!) { application(id: $id) { triggers { name } } }",
        {"id": ids["application"]},
    )
    assert names["application"]["triggers"] == [{"name": "nightly"}]


async def test_run_trigger_queues_a_run_and_wakes_the_executor(
    api: ApiClient, database: DatabaseTarget
) -> None:
    ids = await create_tree(api)
    listener = await connect(database)
    notified: asyncio.Queue[str] = asyncio.Queue()

    def on_notify(_: object, __: int, channel: str, payload: str) -> None:
        notified.put_nowait(payload)

    await listener.add_listener(TRIGGERS_CHANNEL, on_notify)
    try:
        answer = await api.data(
            """
            mutation ($id: ID!) {
              runTrigger(id: $id) { id status attempt manual trigger { id } }
            }
            """,
            {"id": ids["trigger"]},
        )
        payload = await asyncio.wait_for(notified.get(), timeout=5)
    finally:
        await listener.close()

    run = answer["runTrigger"]
    assert run["status"] == "QUEUED"
    assert run["attempt"] == 0 and run["manual"] is True
    assert run["trigger"]["id"] == ids["trigger"]
    assert payload == ids["trigger"]


async def test_run_history_pages(api: ApiClient, pool: asyncpg.Pool) -> None:
    ids = await create_tree(api)
    for _ in range(5):
        await api.data(
            "mutation ($id: ID!) { runTrigger(id: $id) { id } }", {"id": ids["trigger"]}
        )
    await pool.execute(
        "UPDATE trigger_runs SET status = 'failed' WHERE id IN "
        "(SELECT id FROM trigger_runs ORDER BY scheduled_at LIMIT 2)"
    )

    page_query = """
    query ($id: ID!, $after: String, $status: RunStatus) {
      triggerRuns(triggerId: $id, first: 2, after: $after, status: $status) {
        nodes { id status scheduledAt }
        pageInfo { hasNextPage endCursor }
        totalCount
      }
    }
    """
    seen: list[str] = []
    after = None
    for expected_more in (True, True, False):
        page = (await api.data(page_query, {"id": ids["trigger"], "after": after}))[
            "triggerRuns"
        ]
        assert page["totalCount"] == 5
        assert page["pageInfo"]["hasNextPage"] is expected_more
        seen += [node["id"] for node in page["nodes"]]
        after = page["pageInfo"]["endCursor"]
    assert len(set(seen)) == 5

    failed = await api.data(page_query, {"id": ids["trigger"], "status": "FAILED"})
    assert failed["triggerRuns"]["totalCount"] == 2
    assert {node["status"] for node in failed["triggerRuns"]["nodes"]} == {"FAILED"}

    nested = await api.data(
        """
        query ($id: ID!) {
          trigger(id: $id) { runs(first: 1) { nodes { trigger { name } } totalCount } }
        }
        """,
        {"id": ids["trigger"]},
    )
    runs = nested["trigger"]["runs"]
    assert runs == {"nodes": [{"trigger": {"name": "nightly"}}], "totalCount": 5}


async def test_api_tokens_and_members(api: ApiClient) -> None:
    ids = await create_tree(api)
    created = await api.data(
        """
        mutation ($tenant: ID!) {
          createApiToken(input: {tenantId: $tenant, name: "ci", role: EDITOR}) {
            token apiToken { id name role tenant { name } revokedAt }
          }
        }
        """,
        {"tenant": ids["tenant"]},
    )
    token = created["createApiToken"]
    assert token["token"].startswith("pfy_")
    assert token["apiToken"]["role"] == "EDITOR"
    assert token["apiToken"]["revokedAt"] is None

    revoked = await api.data(
        "mutation ($id: ID!) { revokeApiToken(id: $id) { revokedAt } }",
        {"id": token["apiToken"]["id"]},
    )
    assert revoked["revokeApiToken"]["revokedAt"] is not None

    await api.data(
        """
        mutation ($tenant: ID!) {
          a: addTenantMember(input: {tenantId: $tenant, subject: "alice", role: VIEWER})
          { subject }
          b: addTenantMember(
            input: {tenantId: $tenant, subject: "ops", kind: GROUP, role: EDITOR}
          ) { subject }
          c: addTenantMember(input: {tenantId: $tenant, subject: "alice", role: EDITOR})
          { role }
        }
        """,
        {"tenant": ids["tenant"]},
    )
    listed = await api.data(
        """
        query ($tenant: ID!) {
          tenant(id: $tenant) {
            members { kind subject role tenant { name } }
            apiTokens { name revokedAt }
          }
        }
        """,
        {"tenant": ids["tenant"]},
    )
    assert listed["tenant"]["members"] == [
        {
            "kind": "USER",
            "subject": "alice",
            "role": "EDITOR",
            "tenant": {"name": "tenant"},
        },
        {
            "kind": "GROUP",
            "subject": "ops",
            "role": "EDITOR",
            "tenant": {"name": "tenant"},
        },
    ]
    assert listed["tenant"]["apiTokens"][0]["name"] == "ci"

    removed = await api.data(
        """
        mutation ($tenant: ID!) {
          removeTenantMember(input: {tenantId: $tenant, subject: "ops", kind: GROUP})
        }
        """,
        {"tenant": ids["tenant"]},
    )
    assert removed == {"removeTenantMember": True}


async def test_schedule_preview(api: ApiClient) -> None:
    answer = await api.data(
        """
        {
          berlin: schedulePreview(
            schedule: "30 9 * * *", timezone: "Europe/Berlin", count: 3
          )
          seconds: schedulePreview(schedule: "*/15 * * * * *")
        }
        """
    )
    berlin = [datetime.fromisoformat(text) for text in answer["berlin"]]
    assert all(text.endswith("Z") for text in answer["berlin"])
    local = [instant.astimezone(ZoneInfo("Europe/Berlin")) for instant in berlin]
    assert [(moment.hour, moment.minute) for moment in local] == [(9, 30)] * 3
    assert [b.date() - a.date() for a, b in itertools.pairwise(local)] == [
        timedelta(days=1)
    ] * 2
    assert berlin[0] > datetime.now(UTC)

    seconds = [datetime.fromisoformat(text) for text in answer["seconds"]]
    assert len(seconds) == 5
    assert all(instant.second % 15 == 0 for instant in seconds)
    assert [b - a for a, b in itertools.pairwise(seconds)] == [
        timedelta(seconds=15)
    ] * 4
