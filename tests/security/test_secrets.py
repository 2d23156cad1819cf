"""Secrets stay secret: a recognisable database password, OIDC client
secret, PocketID key, bearer tokens, API tokens and signing secrets are
used by an API and an executor process for real work (including failures),
then every log line they wrote, the check-config output and every stored
run row are searched for them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import asyncpg
import pytest

from manager.db.pool import DatabaseTarget, connect
from tests.conftest import Figures
from tests.faults.scenario import FAULT_CRON
from tests.support.backend import Behaviour, RecordingBackend
from tests.support.cluster import manager_environment, port_of, start_manager
from tests.support.executor import eventually
from tests.support.oidc import ADMIN_GROUP, Issuer
from tests.support.process import ManagerProcess
from tests.support.server import PostgresServer

# What the daemon's role may do in the test database (it does not migrate).
ROLE_GRANTS = """
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role};
"""


@pytest.fixture
async def password_role(
    postgres: PostgresServer, database: DatabaseTarget
) -> AsyncIterator[tuple[str, str]]:
    """A login role with a recognisable password, allowed into `database`."""
    name = f"pfy_secret_{uuid.uuid4().hex[:8]}"
    password = f"pfy-db-password-{uuid.uuid4().hex}"
    admin = await connect(postgres.target(postgres.admin_database))
    try:
        await admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    finally:
        await admin.close()
    owner = await connect(database)
    try:
        await owner.execute(ROLE_GRANTS.format(role=name))
    finally:
        await owner.close()
    yield name, password
    owner = await connect(database)
    try:
        await owner.execute(f"DROP OWNED BY {name}")
    finally:
        await owner.close()
    admin = await connect(postgres.target(postgres.admin_database))
    try:
        await admin.execute(f"DROP ROLE IF EXISTS {name}")
    finally:
        await admin.close()


async def graphql(
    session: aiohttp.ClientSession,
    port: int,
    query: str,
    variables: dict[str, Any] | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.post(
        f"http://127.0.0.1:{port}/query",
        json={"query": query, "variables": variables or {}},
        headers=headers,
    ) as response:
        return await response.json()


async def test_no_secret_reaches_a_log_line_or_a_stored_run(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    issuer: Issuer,
    password_role: tuple[str, str],
    processes: list[ManagerProcess],
    figures: Figures,
) -> None:
    figures("security: secrets in logs and stored runs")
    role, password = password_role
    client_secret = f"pfy-client-secret-{uuid.uuid4().hex}"
    pocket_key = f"pfy-pocket-key-{uuid.uuid4().hex}"
    target = replace(database, user=role, password=password)
    extra = {
        "PFY_LOG_LEVEL": "debug",
        "PFY_POCKET_ID_HOST": issuer.url,
        "PFY_POCKET_ID_API_KEY": pocket_key,
        "PFY_AUTH_CLIENT_SECRET": client_secret,
    }
    good = await RecordingBackend().start()
    failing = await RecordingBackend(Behaviour(status=500)).start()
    try:
        api = await start_manager(processes, target, "api", extra=extra, **FAULT_CRON)
        executor = await start_manager(
            processes, target, "executor", extra=extra, **FAULT_CRON
        )
        port = port_of(api, "PFY_PORT")
        admin = issuer.token("root", (ADMIN_GROUP,))
        secrets: dict[str, str] = {
            "database password": password,
            "client secret": client_secret,
            "PocketID key": pocket_key,
            "admin bearer token": admin,
        }

        async with aiohttp.ClientSession() as session:
            answer = await graphql(
                session,
                port,
                'mutation { createProject(input: {name: "p"}) { id } }',
                token=admin,
            )
            project = answer["data"]["createProject"]["id"]
            answer = await graphql(
                session,
                port,
                "mutation ($p: ID!) { createTenant("
                'input: {projectId: $p, name: "t"}) { id } }',
                {"p": project},
                admin,
            )
            tenant = answer["data"]["createTenant"]["id"]
            token = (
                await graphql(
                    session,
                    port,
                    "mutation ($t: ID!) { createApiToken("
                    'input: {tenantId: $t, name: "ci", role: EDITOR}) { token } }',
                    {"t": tenant},
                    admin,
                )
            )["data"]["createApiToken"]["token"]
            secrets["API token"] = token
            for name, backend in (("good", good), ("failing", failing)):
                made = await graphql(
                    session,
                    port,
                    "mutation ($t: ID!, $n: String!, $u: String!) {"
                    " createApplication(input: {tenantId: $t, name: $n,"
                    " backendUrl: $u}) { application { id } signingSecret } }",
                    {"t": tenant, "n": name, "u": backend.url},
                    token,
                )
                created = made["data"]["createApplication"]
                secret = created["signingSecret"]
                secrets[f"signing secret ({name})"] = secret
                secrets[f"signing key ({name})"] = secret.removeprefix("whsec_")
                await graphql(
                    session,
                    port,
                    "mutation ($a: ID!) { createTrigger(input: {applicationId: $a,"
                    ' name: "every-second", schedule: "* * * * * *",'
                    " maxRetries: 0}) { id } }",
                    {"a": created["application"]["id"]},
                    token,
                )
            # Refused credentials are logged as refusals, never as themselves.
            forged = "pfy_" + uuid.uuid4().hex + uuid.uuid4().hex
            secrets["forged API token"] = forged
            await graphql(session, port, "{ me { kind } }", token=forged)
            spoiled = admin[:-4] + "AAAA"
            secrets["spoiled bearer token"] = spoiled
            await graphql(session, port, "{ me { kind } }", token=spoiled)

            await good.wait_for(3, within=15)
            await failing.wait_for(3, within=15)

            async def failed_run() -> bool:
                return bool(
                    await pool.fetchval(
                        "SELECT count(*) FROM trigger_runs WHERE status = 'failed'"
                    )
                )

            await eventually(failed_run, within=10)

        for process in (api, executor):
            assert await process.terminate() == 0
        check = ManagerProcess(
            {**manager_environment(target, "both"), **extra}, "check-config"
        )
        processes.append(check)
        await check.start()
        await check.wait()
    finally:
        await good.stop()
        await failing.stop()

    rows = await pool.fetch("SELECT to_jsonb(r)::text AS row FROM trigger_runs r")
    texts = {
        "api log": "\n".join(api.raw_lines) + api.stderr,
        "executor log": "\n".join(executor.raw_lines) + executor.stderr,
        "check-config": "\n".join(check.raw_lines) + check.stderr,
        "trigger_runs": "\n".join(row["row"] for row in rows),
    }
    found = [
        (secret_name, place)
        for secret_name, secret in secrets.items()
        for place, text in texts.items()
        if secret in text
    ]
    figures(
        secrets=len(secrets),
        log_lines=len(api.raw_lines) + len(executor.raw_lines),
        run_rows=len(rows),
        found=len(found),
    )
    assert len(rows) >= 6
    assert any("HTTP 500" in text for text in texts["trigger_runs"].splitlines())
    assert found == []
    # The role really was the one in use.
    assert any(role in line for line in api.raw_lines)
