"""A TCP proxy the test controls, between a daemon and PostgreSQL.

Modes, switchable while connections are open:
- forward: bytes flow both ways;
- blackhole: bytes are accepted and never answered, in both directions, as
  with a half-open connection whose peer vanished;
- reset: every open connection is reset and new ones are reset at once.

A mode can also be set for one connection alone, named by the PostgreSQL
backend pid the server announced on it (BackendKeyData), so a test can cut
the executor's lock connection while its pool keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field

from tests.support.ports import free_port

FORWARD = "forward"
BLACKHOLE = "blackhole"
RESET = "reset"

# BackendKeyData: type 'K', length 12, then the backend pid and secret key.
_BACKEND_KEY = b"K\x00\x00\x00\x0c"


@dataclass(eq=False)
class _Pair:
    """One proxied connection: both ends, its own mode and its backend pid."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    mode: str | None = None
    pid: int | None = None
    flowing: asyncio.Event = field(default_factory=asyncio.Event)


class ControlledProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = free_port()
        self.mode = FORWARD
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self._tasks: set[asyncio.Task[None]] = set()

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

    def set_mode(self, mode: str, pid: int | None = None) -> None:
        """Switch every connection, or only the one to backend `pid`."""
        if pid is None:
            self.mode = mode
        for pair in list(self._pairs):
            if pid is None:
                pair.mode = None
            elif pair.pid == pid:
                pair.mode = mode
            else:
                continue
            self._apply(pair)

    def backend_pids(self) -> list[int]:
        """The backend pids of the connections open through the proxy."""
        return [pair.pid for pair in self._pairs if pair.pid is not None]

    def _apply(self, pair: _Pair) -> None:
        mode = pair.mode or self.mode
        if mode == FORWARD:
            pair.flowing.set()
            return
        pair.flowing.clear()
        if mode == RESET:
            _reset(pair.client)
            _reset(pair.upstream)
            self._pairs.discard(pair)

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
        pair = _Pair(client_writer, upstream_writer)
        self._pairs.add(pair)
        self._apply(pair)
        for reader, writer, from_server in (
            (client_reader, upstream_writer, False),
            (upstream_reader, client_writer, True),
        ):
            task = asyncio.create_task(self._pipe(pair, reader, writer, from_server))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        pair: _Pair,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        from_server: bool,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if from_server and pair.pid is None:
                    pair.pid = _backend_pid(data)
                # In blackhole mode the bytes are read (the sender sees them
                # accepted) but held back until forwarding resumes, if ever.
                await pair.flowing.wait()
                if (pair.mode or self.mode) == RESET:
                    break
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


def _backend_pid(data: bytes) -> int | None:
    """The pid in a BackendKeyData message, if this chunk carries one.

    The server sends it once, right after authentication, in the same burst
    as the parameter statuses; a chunk boundary inside it is not expected.
    """
    at = data.find(_BACKEND_KEY)
    if at < 0 or len(data) < at + 9:
        return None
    (pid,) = struct.unpack("!i", data[at + 5 : at + 9])
    return pid


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
