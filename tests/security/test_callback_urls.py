"""Callback URLs that point at cloud metadata, link-local addresses or other
schemes are refused when saved (API and store) and again when the executor
connects, including a host name that only resolves to such an address.

No test here ever opens a connection anywhere but 127.0.0.1: the executor's
connector carries a tripwire that fails any other address before a socket
is opened, should the guard under test ever let one through.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

import manager.executor.dispatcher as dispatcher_module
from manager.callback_urls import GuardedResolver
from manager.db.pool import DatabaseTarget
from manager.errors import InvalidInputError
from manager.executor.dispatcher import REFUSED
from manager.store import catalog
from tests.conftest import Figures
from tests.support.api import (
    CREATE_PROJECT,
    CREATE_TENANT,
    ApiClient,
    serve_api,
)
from tests.support.backend import RecordingBackend
from tests.support.executor import (
    add_trigger,
    create_application,
    eventually,
    executor_settings,
    running_executor,
)

HOSTILE_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.170.2/v2/credentials",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[fd00:ec2::254]/",
    "http://2852039166/",
    "http://0xa9fea9fe/",
    "http://0251.0376.0251.0376/",
    "http://169.254.43518/",
    "http://100.100.100.200/",
    "http://0.0.0.0:8080/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:70/_GET",
    "ftp://127.0.0.1/",
    "http://user:s3cr3t-pw@127.0.0.1:9/",
    "http://127.0.0.1:9@169.254.169.254/",
    "http://127.0.0.1:9/#@169.254.169.254",
    "http://169.254.169.254\\@127.0.0.1/",
    "http://127.0.0.1:9/\r\nHost: 169.254.169.254",
    "javascript:alert(1)",
    "//169.254.169.254/",
]

CREATE_APPLICATION = """
mutation ($tenantId: ID!, $url: String!) {
  createApplication(input: {tenantId: $tenantId, name: "app", backendUrl: $url}) {
    application { id }
  }
}
"""

UPDATE_APPLICATION = """
mutation ($id: ID!, $url: String!) {
  updateApplication(id: $id, input: {backendUrl: $url}) { id backendUrl }
}
"""


@pytest.fixture
async def api(database: DatabaseTarget) -> AsyncIterator[ApiClient]:
    async with serve_api(database) as client:
        yield client


async def test_hostile_urls_are_refused_when_saved(
    api: ApiClient, pool: asyncpg.Pool, figures: Figures
) -> None:
    figures("security: callback URLs refused at save time")
    project = await api.data(CREATE_PROJECT, {"name": "p"})
    tenant = (
        await api.data(
            CREATE_TENANT, {"projectId": project["createProject"]["id"], "name": "t"}
        )
    )["createTenant"]["id"]
    good = await api.data(
        CREATE_APPLICATION, {"tenantId": tenant, "url": "http://127.0.0.1:9/"}
    )
    application = good["createApplication"]["application"]["id"]

    for url in HOSTILE_URLS:
        for query, variables in (
            (CREATE_APPLICATION, {"tenantId": tenant, "url": url}),
            (UPDATE_APPLICATION, {"id": application, "url": url}),
        ):
            error = await api.error(query, variables)
            assert error["extensions"]["code"] == "BAD_USER_INPUT", (url, error)
            assert error["extensions"]["field"] == "backendUrl", url
            assert error["message"].startswith("backendUrl: "), url
            assert "s3cr3t-pw" not in error["message"], url
        with pytest.raises(InvalidInputError):
            await catalog.create_application(pool, tenant, f"x-{uuid.uuid4()}", url)

    stored = await pool.fetch("SELECT backend_url FROM applications")
    assert [row["backend_url"] for row in stored] == ["http://127.0.0.1:9/"]
    figures(urls=len(HOSTILE_URLS), refused_by_api=2 * len(HOSTILE_URLS))


class MappedResolver(AbstractResolver):
    """Resolves every host name to fixed addresses (a rebinding DNS)."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.addresses
        ]

    async def close(self) -> None:
        return None


# Host names the rebinding resolver answers for, with what it answers.
REBOUND = {
    "metadata.rebind.test": ["169.254.169.254"],
    "linklocal.rebind.test": ["fe80::1"],
    "mapped.rebind.test": ["::ffff:169.254.169.254"],
    "aws6.rebind.test": ["fd00:ec2::254"],
}


class Tripwire:
    """Wraps the connector's connect step: anything but loopback fails."""

    def __init__(self, connect: Any) -> None:
        self.connect = connect
        self.tripped: list[str] = []

    async def __call__(self, *args: Any, addr_infos: Any, **kwargs: Any) -> Any:
        for info in addr_infos:
            address = info[4][0]
            if address not in ("127.0.0.1", "::1"):
                self.tripped.append(address)
                raise OSError(f"test tripwire: refused to connect to {address}")
        return await self.connect(*args, addr_infos=addr_infos, **kwargs)


async def test_hostile_urls_are_refused_again_when_the_executor_connects(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    backend: RecordingBackend,
    monkeypatch: pytest.MonkeyPatch,
    figures: Figures,
) -> None:
    figures("security: callback URLs refused at connect time")
    resolvers: list[MappedResolver] = []

    def guarded(allowed_networks: tuple[str, ...] = ()) -> GuardedResolver:
        inner = _RoutingResolver()
        resolvers.append(inner)  # type: ignore[arg-type]
        return GuardedResolver(inner, allowed_networks=allowed_networks)

    monkeypatch.setattr(dispatcher_module, "GuardedResolver", guarded)

    # Rows written around the API (or before a stricter policy): the stored
    # URL is all the executor has.
    hostile = [*HOSTILE_URLS, *(f"http://{host}:8080/" for host in REBOUND)]
    application = await create_application(pool, backend.url)
    trigger_ids = []
    for url in hostile:
        row = await create_application(pool, backend.url)
        await pool.execute(
            "UPDATE applications SET backend_url = $2 WHERE id = $1", row.id, url
        )
        trigger = await add_trigger(pool, row, schedule="0 0 1 1 *", max_retries=3)
        trigger_ids.append(trigger.id)
    control = await add_trigger(pool, application, schedule="0 0 1 1 *")

    async with running_executor(executor_settings(), database, pool) as harness:
        session = harness.executor.dispatcher.session
        assert session is not None
        connector: Any = session.connector
        tripwire = Tripwire(connector._wrap_create_connection)
        monkeypatch.setattr(session.connector, "_wrap_create_connection", tripwire)
        await pool.execute(
            "UPDATE triggers SET next_run_at = now() WHERE id = ANY($1)",
            [*trigger_ids, control.id],
        )

        async def all_finished() -> list[asyncpg.Record] | None:
            rows = await pool.fetch(
                "SELECT trigger_id, status, attempt, error FROM trigger_runs"
            )
            done = [row for row in rows if row["status"] in ("succeeded", "failed")]
            return rows if len(done) == len(hostile) + 1 else None

        runs = await eventually(all_finished, within=15)

    by_trigger = {row["trigger_id"]: row for row in runs}
    for url, trigger_id in zip(hostile, trigger_ids, strict=True):
        run = by_trigger[trigger_id]
        # Refused at once, not retried: retrying cannot make it allowed.
        assert (run["status"], run["attempt"]) == ("failed", 1), (url, run)
        assert run["error"].startswith(REFUSED), (url, run["error"])
        assert "s3cr3t-pw" not in run["error"]
    assert by_trigger[control.id]["status"] == "succeeded"
    assert tripwire.tripped == []
    asked = {host for resolver in resolvers for host in resolver.asked}
    assert set(REBOUND) <= asked
    figures(
        stored_hostile_urls=len(hostile),
        refused_at_connect=sum(
            by_trigger[trigger_id]["error"].startswith(REFUSED)
            for trigger_id in trigger_ids
        ),
        resolver_rebinding_hosts=len(REBOUND),
        non_loopback_connects=len(tripwire.tripped),
    )


class _RoutingResolver(MappedResolver):
    """The rebinding names get refused addresses; anything else loopback."""

    def __init__(self) -> None:
        super().__init__([])

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.addresses = REBOUND.get(host, ["127.0.0.1"])
        return await super().resolve(host, port, family)
