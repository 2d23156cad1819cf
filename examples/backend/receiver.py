"""A minimal backend that receives Productify Manager trigger callbacks.

Copy it into your application and replace `handle_trigger` with your work.
It checks each callback the way the Standard Webhooks specification says:

- the signature: `webhook-signature` holds one or more space-separated
  `v1,<base64>` values; each is an HMAC-SHA256, keyed with the base64-decoded
  part of your `whsec_...` secret, of `<webhook-id>.<webhook-timestamp>.<body>`;
- the timestamp: at most five minutes away from this host's clock, so a
  captured request cannot be replayed later;
- duplicates: the Manager delivers at least once and may deliver a run again
  after a crash or a retry; the `webhook-id` (the run id) is the same each
  time, so a repeat is acknowledged without doing the work twice.

Run it with `WEBHOOK_SECRET=whsec_... python receiver.py` (listens on
PORT, 9000 by default). It needs only aiohttp.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import time
from collections import OrderedDict
from typing import Any

from aiohttp import web

log = logging.getLogger("receiver")

TOLERANCE_SECONDS = 5 * 60

# Ids are remembered a little longer than a request stays acceptable: an
# older repeat is refused by its timestamp anyway.
REMEMBER_SECONDS = 2 * TOLERANCE_SECONDS
REMEMBER_MOST = 100_000

SECRET_PREFIX = "whsec_"


class InvalidCallback(Exception):
    """The request is not a genuine, fresh callback from the Manager."""


def secret_key(secret: str) -> bytes:
    """The HMAC key: the base64-decoded text after `whsec_`."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("WEBHOOK_SECRET is not a whsec_ secret") from None


def expected_signature(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(key: bytes, headers: Any, body: bytes, now: float) -> str:
    """The webhook id of a genuine callback, else InvalidCallback."""
    webhook_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not webhook_id or not timestamp or not signatures:
        raise InvalidCallback("missing webhook headers")
    if not timestamp.isdigit():
        raise InvalidCallback("webhook-timestamp is not a number")
    if abs(now - int(timestamp)) > TOLERANCE_SECONDS:
        raise InvalidCallback("webhook-timestamp is too old or in the future")

    expected = expected_signature(key, webhook_id, timestamp, body)
    # Several signatures appear while a secret is being rotated.
    for candidate in signatures.split(" "):
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            return webhook_id
    raise InvalidCallback("no signature matches")


class SeenIds:
    """Webhook ids handled recently, forgotten after REMEMBER_SECONDS."""

    def __init__(self) -> None:
        self.seen: OrderedDict[str, float] = OrderedDict()

    def add(self, webhook_id: str, now: float) -> bool:
        """Remember an id; False when it was already there."""
        while self.seen and (
            len(self.seen) >= REMEMBER_MOST
            or next(iter(self.seen.values())) < now - REMEMBER_SECONDS
        ):
            self.seen.popitem(last=False)
        if webhook_id in self.seen:
            return False
        self.seen[webhook_id] = now
        return True

    def forget(self, webhook_id: str) -> None:
        """Let a failed delivery be tried again."""
        self.seen.pop(webhook_id, None)


async def handle_trigger(callback: dict[str, Any]) -> None:
    """Your work goes here. Raise to make the Manager retry the run."""
    log.info(
        "trigger fired: %s (run %s, attempt %s) payload=%s",
        callback.get("trigger", {}).get("name"),
        callback.get("run", {}).get("id"),
        callback.get("run", {}).get("attempt"),
        json.dumps(callback.get("payload")),
    )


SEEN = web.AppKey("seen", SeenIds)
KEY = web.AppKey("key", bytes)


async def receive(request: web.Request) -> web.Response:
    body = await request.read()
    now = time.time()
    try:
        webhook_id = verify(request.app[KEY], request.headers, body, now)
    except InvalidCallback as error:
        log.warning("callback refused: %s", error)
        return web.json_response({"error": str(error)}, status=401)

    if not request.app[SEEN].add(webhook_id, now):
        log.info("duplicate callback %s ignored", webhook_id)
        return web.json_response({"status": "duplicate"})

    try:
        await handle_trigger(json.loads(body))
    except Exception:
        # Not done: forget the id so the Manager's retry is not a duplicate.
        request.app[SEEN].forget(webhook_id)
        log.exception("trigger %s failed", webhook_id)
        return web.json_response({"status": "failed"}, status=500)
    return web.json_response({"status": "ok"})


def create_app(secret: str) -> web.Application:
    """The receiver; every path is accepted, as each trigger has its own."""
    app = web.Application(client_max_size=1024 * 1024)
    app[KEY] = secret_key(secret)
    app[SEEN] = SeenIds()
    app.router.add_post("/{path:.*}", receive)
    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    secret = os.environ["WEBHOOK_SECRET"]
    web.run_app(create_app(secret), port=int(os.environ.get("PORT", "9000")))


if __name__ == "__main__":
    main()
