"""Tell systemd about the daemon's state, without libsystemd.

The protocol is one datagram per message to the unix socket named in
`NOTIFY_SOCKET`, holding newline-separated `KEY=VALUE` lines. A name that
starts with `@` is an abstract socket: the `@` stands for a leading NUL byte.

Outside systemd (Docker, Nomad, a shell) `NOTIFY_SOCKET` is unset and every
method here does nothing, so the daemon can call them unconditionally.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

logger = logging.getLogger(__name__)

# systemd asks for a ping at least every WATCHDOG_USEC; pinging at half of it
# leaves room for one late tick without tripping the watchdog.
_WATCHDOG_FRACTION = 0.5


class SystemdNotifier:
    """Sends sd_notify messages to the socket systemd gave this process.

    Build it once with `from_environment()`; the rest of the daemon receives
    the object and never reads `NOTIFY_SOCKET` or `WATCHDOG_USEC` itself.
    """

    def __init__(
        self,
        socket_name: str | None = None,
        watchdog_usec: int | None = None,
    ) -> None:
        self._address = _socket_address(socket_name)
        self._watchdog_usec = watchdog_usec if self._address else None

    @classmethod
    def from_environment(
        cls,
        environ: Mapping[str, str] | None = None,
    ) -> SystemdNotifier:
        """Read the notify socket and watchdog period systemd passed us."""
        if environ is None:
            environ = os.environ

        socket_name = environ.get("NOTIFY_SOCKET") or None
        watchdog_usec = _watchdog_usec(environ)
        return cls(socket_name, watchdog_usec)

    @property
    def enabled(self) -> bool:
        """True when a notify socket is configured."""
        return self._address is not None

    def ready(self) -> None:
        """Startup is complete: systemd may now start units ordered after us."""
        self._send("READY=1")

    def status(self, text: str) -> None:
        """Show a one-line status in `systemctl status`."""
        # A newline would start a new assignment in the datagram.
        one_line = " ".join(text.splitlines())
        self._send(f"STATUS={one_line}")

    def stopping(self) -> None:
        """Shutdown has begun; systemd shows the unit as deactivating."""
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        """Reset systemd's watchdog timer."""
        self._send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings, or None when the watchdog is off."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 1_000_000 * _WATCHDOG_FRACTION

    async def run_watchdog(self) -> None:
        """Ping the watchdog from the event loop until cancelled.

        The pings come from the loop itself on purpose: a loop that is blocked
        stops pinging, and systemd then restarts the daemon. Returns at once
        when the watchdog is off.
        """
        interval = self.watchdog_interval()
        if interval is None:
            return

        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def _send(self, message: str) -> None:
        if self._address is None:
            return

        # A fresh socket per message keeps nothing open between calls; the
        # messages are rare (a watchdog ping every few seconds at most).
        # Non-blocking, so a full receive queue cannot stall the event loop.
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(message.encode(), self._address)
        except OSError as exc:
            # Losing a notification must never take the daemon down; if the
            # watchdog pings keep failing, systemd restarts us anyway.
            logger.warning(
                "systemd notification failed",
                extra={"notify_state": message.partition("=")[0], "error": str(exc)},
            )


def _socket_address(socket_name: str | None) -> str | None:
    if not socket_name:
        return None
    if socket_name.startswith("@"):
        return "\0" + socket_name[1:]
    if socket_name.startswith("/"):
        return socket_name

    # Newer systemd can also hand out vsock addresses, which we do not speak.
    logger.warning(
        "unsupported NOTIFY_SOCKET ignored",
        extra={"notify_socket": socket_name},
    )
    return None


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    raw = environ.get("WATCHDOG_USEC")
    if not raw:
        return None

    # WATCHDOG_PID names the process the watchdog is meant for; a child that
    # inherited the environment must not ping on its parent's behalf.
    owner = environ.get("WATCHDOG_PID")
    if owner and owner != str(os.getpid()):
        return None

    try:
        usec = int(raw)
    except ValueError:
        usec = 0
    if usec <= 0:
        logger.warning("invalid WATCHDOG_USEC ignored", extra={"value": raw})
        return None
    return usec
