"""Application backends for tests: real aiohttp servers on 127.0.0.1.

A backend records every callback it receives and answers according to its
behaviour, which a test can change while it runs: answer at once, after a
delay, never (hang until released), with an error status, or alternately
failing and succeeding (flapping).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.support.ports import free_port


@dataclass(frozen=True)
class Delivery:
    """One callback as the backend received it."""

    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float  # time.time() on arrival

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


@dataclass
class Behaviour:
    status: int = 200
    delay: float = 0.0
    hang: bool = False
    flap: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    body: str = "ok"


class RecordingBackend:
    """An aiohttp server that records deliveries and answers as told."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.deliveries: list[Delivery] = []
        self.port = free_port()
        self._arrived = asyncio.Condition()
        self._release = asyncio.Event()
        self._flap_count = 0
        # Requests being answered right now, and the most there ever were.
        self.in_flight = 0
        self.max_in_flight = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RecordingBackend:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def release(self) -> None:
        """Let every hanging request answer."""
        self._release.set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        delivery = Delivery(
            path=request.path,
            headers={name.lower(): value for name, value in request.headers.items()},
            body=await request.read(),
            received_at=time.time(),
        )
        async with self._arrived:
            self.deliveries.append(delivery)
            self._arrived.notify_all()

        behaviour = self.behaviour
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if behaviour.hang:
                await self._release.wait()
            if behaviour.delay:
                await asyncio.sleep(behaviour.delay)
        finally:
            self.in_flight -= 1
        status = behaviour.status
        if behaviour.flap:
            self._flap_count += 1
            status = 500 if self._flap_count % 2 else 200
        return web.Response(
            status=status, headers=behaviour.headers, text=behaviour.body
        )

    async def wait_for(self, count: int, within: float = 30.0) -> list[Delivery]:
        """Wait until at least `count` deliveries arrived; return them all."""
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: len(self.deliveries) >= count)
        return list(self.deliveries)
