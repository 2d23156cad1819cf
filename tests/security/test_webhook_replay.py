"""A delivery captured on the wire cannot be replayed later: the example
receiver (examples/backend) and manager.signing.verify both refuse a real
executor delivery once its timestamp is outside the five-minute window, and
a timestamp rewritten to look fresh breaks the signature."""

from __future__ import annotations

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from manager.db.pool import DatabaseTarget
from manager.signing import SignatureError, verify
from tests.conftest import Figures
from tests.support.backend import RecordingBackend
from tests.support.executor import (
    add_trigger,
    create_application,
    executor_settings,
    running_executor,
)
from tests.support.receiver import load_receiver

receiver = load_receiver()


async def test_replayed_old_delivery_is_refused(
    database: DatabaseTarget,
    pool: asyncpg.Pool,
    backend: RecordingBackend,
    monkeypatch: pytest.MonkeyPatch,
    figures: Figures,
) -> None:
    figures("security: replayed webhook delivery")
    application = await create_application(pool, backend.url)
    trigger = await add_trigger(pool, application, schedule="0 0 1 1 *")
    async with running_executor(executor_settings(), database, pool):
        await pool.execute(
            "UPDATE triggers SET next_run_at = now() WHERE id = $1", trigger.id
        )
        (captured,) = await backend.wait_for(1, within=10)

    headers = {
        name: value
        for name, value in captured.headers.items()
        if name.startswith("webhook-") or name == "content-type"
    }
    sent_at = int(headers["webhook-timestamp"])
    client = TestClient(
        TestServer(receiver.create_app(application.secret), host="127.0.0.1")
    )
    await client.start_server()
    try:

        async def replay(extra: dict[str, str] | None = None) -> int:
            response = await client.post(
                captured.path, data=captured.body, headers={**headers, **(extra or {})}
            )
            return response.status

        fresh = await replay()
        duplicate = await client.post(
            captured.path, data=captured.body, headers=headers
        )
        duplicate_answer = await duplicate.json()

        # Six minutes later, on the receiver's clock.
        monkeypatch.setattr(receiver.time, "time", lambda: sent_at + 360.0)
        stale = await replay()
        # Rewriting the timestamp to look fresh breaks the signature.
        rewritten = await replay({"webhook-timestamp": str(sent_at + 360)})
    finally:
        await client.close()

    verify(application.secret, headers, captured.body, now=sent_at)
    with pytest.raises(SignatureError, match="away from now"):
        verify(application.secret, headers, captured.body, now=sent_at + 360)
    figures(
        first_delivery=fresh,
        same_id_again=duplicate_answer.get("status"),
        replayed_after_6_min=stale,
        replayed_with_rewritten_timestamp=rewritten,
    )
    assert fresh == 200
    assert duplicate_answer == {"status": "duplicate"}
    assert stale == 401
    assert rewritten == 401
