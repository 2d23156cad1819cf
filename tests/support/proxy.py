"""A TCP proxy the test controls, between a daemon and PostgreSQL.

Modes, switchable while connections are open:
- forward: bytes flow both ways;
- blackhole: bytes are accepted and never answered, in both directions, as
  with a half-open connection whose peer vanished;
- reset: every open connection is reset and new ones are reset at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from tests.support.ports import free_port

FORWARD = "forward"
BLACKHOLE = "blackhole"
RESET = "reset"


class ControlledProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = free_port()
        self.mode = FORWARD
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> ControlledProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.set_mode(RESET)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode == FORWARD:
            self._flowing.set()
            return
        self._flowing.clear()
        if mode == RESET:
            for client, upstream in list(self._pairs):
                _reset(client)
                _reset(upstream)
            self._pairs.clear()

    async def _open_upstream(
        self,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.upstream_host.startswith("/"):
            path = f"{self.upstream_host}/.s.PGSQL.{self.upstream_port}"
            return await asyncio.open_unix_connection(path)
        return await asyncio.open_connection(self.upstream_host, self.upstream_port)

    async def _accept(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        if self.mode == RESET:
            _reset(client_writer)
            return
        try:
            upstream_reader, upstream_writer = await self._open_upstream()
        except OSError:
            _reset(client_writer)
            return
        pair = (client_writer, upstream_writer)
        self._pairs.add(pair)
        for reader, writer in (
            (client_reader, upstream_writer),
            (upstream_reader, client_writer),
        ):
            task = asyncio.create_task(self._pipe(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                # In blackhole mode the bytes are read (the sender sees them
                # accepted) but held back until forwarding resumes, if ever.
                await self._flowing.wait()
                if self.mode == RESET:
                    break
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN, as a crashed peer or firewall would."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
    with contextlib.suppress(OSError, RuntimeError):
        writer.close()
