"""The `manager` command run as a subprocess, the way an operator runs it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import orjson

# Variables of the developer's shell that would change how the daemon under
# test is configured; each test says exactly what it wants instead.
_CONFIG_PREFIXES = ("PFY_", "DB_")
_CONFIG_NAMES = {"MODE", "PORT", "AUTH_CLIENT_SECRET", "NOTIFY_SOCKET"}

MANAGER_COMMAND = str(Path(sys.executable).with_name("manager"))


def clean_environment(**overrides: str) -> dict[str, str]:
    """This process's environment without any Manager setting, plus overrides."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_CONFIG_PREFIXES) and name not in _CONFIG_NAMES
    }
    environment.update(overrides)
    return environment


class ManagerProcess:
    """A running `manager` whose stdout is collected as parsed JSON lines."""

    def __init__(self, environment: dict[str, str], *arguments: str) -> None:
        self.environment = environment
        self.arguments = arguments
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[dict[str, Any]] = []
        self.raw_lines: list[str] = []
        self.stderr = ""
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        self._stderr_reader: asyncio.Task[None] | None = None

    async def start(self) -> ManagerProcess:
        self.process = await asyncio.create_subprocess_exec(
            MANAGER_COMMAND,
            *self.arguments,
            env=self.environment,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read_stdout())
        self._stderr_reader = asyncio.create_task(self._read_stderr())
        return self

    async def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for raw in self.process.stdout:
            text = raw.decode().rstrip("\n")
            self.raw_lines.append(text)
            # A line that is not JSON is kept as such so tests can report it.
            try:
                self.lines.append(orjson.loads(text))
            except orjson.JSONDecodeError:
                self.lines.append({"unparsed": text})
            async with self._changed:
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        self.stderr = (await self.process.stderr.read()).decode()

    def find(
        self, message: str, start: int = 0, **fields: Any
    ) -> dict[str, Any] | None:
        """The first log line from index `start` with this message and fields."""
        for line in self.lines[start:]:
            if line.get("msg") == message and all(
                line.get(key) == value for key, value in fields.items()
            ):
                return line
        return None

    async def wait_for_log(
        self, message: str, timeout: float = 30.0, start: int = 0, **fields: Any
    ) -> dict[str, Any]:
        """The first log line with this message (and fields), waiting for it;
        lines before index `start` are not looked at."""

        def found_or_exited() -> bool:
            exited = self._reader is not None and self._reader.done()
            return self.find(message, start, **fields) is not None or exited

        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(found_or_exited)
        line = self.find(message, start, **fields)
        if line is None:
            raise AssertionError(
                f"manager exited before logging {message!r}: "
                f"{self.raw_lines[-5:]} {self.stderr}"
            )
        return line

    async def wait_started(self, timeout: float = 60.0) -> dict[str, Any]:
        return await self.wait_for_log("manager started", timeout=timeout)

    def send(self, signal_number: int) -> None:
        assert self.process is not None
        self.process.send_signal(signal_number)

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
            if self._reader is not None:
                await self._reader
            if self._stderr_reader is not None:
                await self._stderr_reader
        return code

    async def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, as systemd, Nomad and Docker send it; the exit code."""
        self.send(signal.SIGTERM)
        return await self.wait(timeout)

    async def close(self) -> None:
        """Make sure the process is gone (used in fixture teardown)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.wait()
