"""Waiting on events with a deadline, without leaking waiter tasks."""

from __future__ import annotations

import asyncio


async def wait_for_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for `event` at most `timeout` seconds; True if it was set."""
    return await wait_for_any((event,), timeout)


async def wait_for_any(events: tuple[asyncio.Event, ...], timeout: float) -> bool:
    """Wait until one of `events` is set, at most `timeout` seconds."""
    if any(event.is_set() for event in events):
        return True
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        done, _ = await asyncio.wait(
            waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for waiter in waiters:
            waiter.cancel()
    return bool(done)
