"""The example backend in examples/backend, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from manager.signing import generate_secret, signature_headers
from tests.support.receiver import load_receiver

# The example published with the Standard Webhooks specification.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


receiver = load_receiver()
SECRET = generate_secret()


@pytest.fixture
async def backend() -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    client = TestClient(TestServer(receiver.create_app(SECRET), host="127.0.0.1"))
    await client.start_server()
    yield client
    await client.close()


def callback(run_id: str, timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    """A callback body and headers signed as the executor signs them."""
    body = orjson.dumps(
        {
            "trigger": {"id": "t-1", "name": "nightly-report"},
            "run": {"id": run_id, "attempt": 1, "scheduled_at": "2025-01-31T03:00:00Z"},
            "application": {"id": "a-1"},
            "payload": {"report": "daily"},
        }
    )
    stamp = int(time.time()) if timestamp is None else timestamp
    headers = signature_headers(SECRET, run_id, stamp, body)
    headers["Content-Type"] = "application/json"
    return body, headers


async def test_signed_callback_is_accepted_and_logged(
    backend: TestClient,  # type: ignore[type-arg]
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="receiver")
    body, headers = callback("run-1")
    response = await backend.post(
        "/triggers/nightly-report", data=body, headers=headers
    )
    assert response.status == 200
    assert await response.json() == {"status": "ok"}
    assert any("nightly-report" in record.getMessage() for record in caplog.records)


async def test_duplicate_delivery_is_acknowledged_once(
    backend: TestClient,  # type: ignore[type-arg]
) -> None:
    body, headers = callback("run-2")
    first = await backend.post("/hooks", data=body, headers=headers)
    again = await backend.post("/hooks", data=body, headers=headers)
    assert (await first.json())["status"] == "ok"
    assert again.status == 200
    assert (await again.json())["status"] == "duplicate"


@pytest.mark.parametrize(
    "spoil",
    ["body", "signature", "secret", "old", "future", "missing"],
)
async def test_forged_or_stale_callbacks_are_refused(
    backend: TestClient,  # type: ignore[type-arg]
    spoil: str,
) -> None:
    body, headers = callback(f"run-{spoil}")
    if spoil == "body":
        body = body.replace(b"daily", b"weekly")
    elif spoil == "signature":
        headers["webhook-signature"] = "v1," + "A" * 44
    elif spoil == "secret":
        other = signature_headers(
            generate_secret(), f"run-{spoil}", int(time.time()), body
        )
        headers["webhook-signature"] = other["webhook-signature"]
    elif spoil in ("old", "future"):
        shift = -(6 * 60) if spoil == "old" else 6 * 60
        body, headers = callback(f"run-{spoil}", int(time.time()) + shift)
    else:
        del headers["webhook-signature"]

    response = await backend.post("/hooks", data=body, headers=headers)
    assert response.status == 401


async def test_any_of_several_signatures_may_match(
    backend: TestClient,  # type: ignore[type-arg]
) -> None:
    body, headers = callback("run-rotating")
    headers["webhook-signature"] = "v1,bm90LXRoaXMtb25l " + headers["webhook-signature"]
    response = await backend.post("/hooks", data=body, headers=headers)
    assert response.status == 200


def test_matches_the_specification_example() -> None:
    key = receiver.secret_key(SPEC_SECRET)
    signature = receiver.expected_signature(
        key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", b'{"test": 2432232314}'
    )
    assert signature == SPEC_SIGNATURE
