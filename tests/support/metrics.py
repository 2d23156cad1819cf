"""Reading Prometheus metrics the way a scraper does."""

from __future__ import annotations

import re

import aiohttp

SAMPLE = re.compile(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$")


def samples(text: str) -> dict[tuple[str, str], float]:
    """(name, labels) -> value for every sample line."""
    found = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            found[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return found


async def scrape(port: int) -> str:
    """GET /metrics on 127.0.0.1:`port` in the text format."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()
