"""sd_notify messages reach a real unix datagram socket, as systemd would see."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.notify import SystemdNotifier

# Generous: a message sent on a local socket arrives in microseconds, so this
# only bounds a test that would otherwise hang on a missing message.
RECEIVE_TIMEOUT = 5.0


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound in a temporary directory, and its path.

    The directory is made under /tmp rather than pytest's tmp_path: a unix
    socket path must fit in 108 bytes, and tmp_path can be longer.
    """
    with tempfile.TemporaryDirectory(prefix="pfy-notify-") as directory:
        path = str(Path(directory) / "notify.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.setblocking(False)
            yield sock, path


async def receive(sock: socket.socket) -> str:
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(sock, 4096), RECEIVE_TIMEOUT)
    return data.decode()


async def test_state_messages_arrive_in_order(listener):
    sock, path = listener
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path})

    notifier.ready()
    notifier.status("executor: leader")
    notifier.stopping()
    notifier.watchdog()

    assert notifier.enabled
    assert await receive(sock) == "READY=1"
    assert await receive(sock) == "STATUS=executor: leader"
    assert await receive(sock) == "STOPPING=1"
    assert await receive(sock) == "WATCHDOG=1"


async def test_status_is_kept_on_one_line(listener):
    sock, path = listener
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path})

    notifier.status("waiting for the lock\nREADY=1")

    assert await receive(sock) == "STATUS=waiting for the lock READY=1"


async def test_abstract_socket_name_starting_with_at():
    name = f"pfy-notify-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@" + name})

        notifier.ready()

        assert await receive(sock) == "READY=1"


async def test_watchdog_pings_repeat_at_half_the_period(listener):
    sock, path = listener
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    notifier = SystemdNotifier.from_environment(environ)
    loop = asyncio.get_running_loop()

    assert notifier.watchdog_interval() == pytest.approx(0.1)
    task = asyncio.create_task(notifier.run_watchdog())
    arrivals = []
    try:
        for _ in range(4):
            assert await receive(sock) == "WATCHDOG=1"
            arrivals.append(loop.time())
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # Four pings span three intervals (0.3 s). A late first receipt shortens
    # the measured span on a busy machine, so one interval of slack is left.
    span = arrivals[-1] - arrivals[0]
    assert span >= 0.2, arrivals


async def test_blocked_event_loop_sends_no_pings(listener):
    sock, path = listener
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"}
    notifier = SystemdNotifier.from_environment(environ)
    task = asyncio.create_task(notifier.run_watchdog())
    try:
        assert await receive(sock) == "WATCHDOG=1"

        # Stall the loop for many intervals, as a runaway callback would:
        # the pings must stop so that systemd notices and restarts us.
        time.sleep(0.2)  # noqa: ASYNC251 - blocking is the point here

        with pytest.raises(BlockingIOError):
            sock.recv(4096)
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_without_socket_everything_is_a_no_op():
    notifier = SystemdNotifier.from_environment({"WATCHDOG_USEC": "200000"})

    notifier.ready()
    notifier.status("idle")
    notifier.stopping()
    notifier.watchdog()

    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    # Returns instead of looping when there is nobody to ping.
    await asyncio.wait_for(notifier.run_watchdog(), RECEIVE_TIMEOUT)


def test_reads_process_environment_by_default(monkeypatch, listener):
    _, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    notifier = SystemdNotifier.from_environment()

    assert notifier.enabled
    assert notifier.watchdog_interval() == pytest.approx(15.0)


def test_watchdog_off_without_period(listener):
    _, path = listener

    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path})

    assert notifier.watchdog_interval() is None


def test_watchdog_meant_for_another_process_is_ignored(listener):
    _, path = listener
    environ = {
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid() + 1),
    }

    notifier = SystemdNotifier.from_environment(environ)

    assert notifier.watchdog_interval() is None


def test_watchdog_for_this_process_is_used(listener):
    _, path = listener
    environ = {
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid()),
    }

    notifier = SystemdNotifier.from_environment(environ)

    assert notifier.watchdog_interval() == pytest.approx(15.0)


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_invalid_watchdog_period_is_ignored(listener, caplog, value):
    _, path = listener
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": value}

    with caplog.at_level(logging.WARNING, logger="manager.notify"):
        notifier = SystemdNotifier.from_environment(environ)

    assert notifier.watchdog_interval() is None
    assert [r.getMessage() for r in caplog.records] == ["invalid WATCHDOG_USEC ignored"]


def test_send_error_is_logged_not_raised(caplog):
    with tempfile.TemporaryDirectory(prefix="pfy-notify-") as directory:
        missing = str(Path(directory) / "gone.sock")
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": missing})

        with caplog.at_level(logging.WARNING, logger="manager.notify"):
            notifier.ready()

    [record] = caplog.records
    assert record.getMessage() == "systemd notification failed"
    assert record.notify_state == "READY"


def test_unsupported_socket_kind_disables_notifications(caplog):
    with caplog.at_level(logging.WARNING, logger="manager.notify"):
        notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "vsock:2:99"})

    notifier.ready()

    assert not notifier.enabled
    assert [r.getMessage() for r in caplog.records] == [
        "unsupported NOTIFY_SOCKET ignored"
    ]
