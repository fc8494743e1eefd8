"""The watchdog: its interval from systemd's environment, and pings sent by the event loop."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from spotd.ops import sdnotify
from tests.systemd.conftest import NotifySocket

ME = str(os.getpid())


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),  # WatchdogSec= not set
        ({"WATCHDOG_USEC": "30000000"}, 30.0),  # WatchdogSec=30, no pid given
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": ME}, 30.0),  # meant for us
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": ME}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # inherited from a parent
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),  # garbage pid
        ({"WATCHDOG_USEC": "0"}, None),  # disabled
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({"WATCHDOG_USEC": ""}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert sdnotify.watchdog_interval(env) == expected


async def _recv(ns: NotifySocket, timeout: float = 2.0) -> str:
    ns.sock.setblocking(False)
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(ns.sock, 4096), timeout)
    return data.decode()


async def test_pings_at_half_the_interval_until_stopped(notify_socket: NotifySocket) -> None:
    stop = asyncio.Event()
    env = notify_socket.env(WATCHDOG_USEC="400000", WATCHDOG_PID=ME)  # 0.4 s: ping every 0.2 s
    task = asyncio.create_task(sdnotify.watchdog_loop(stop, env=env))
    started = time.monotonic()
    pings = [await _recv(notify_socket) for _ in range(3)]
    elapsed = time.monotonic() - started
    assert pings == ["WATCHDOG=1"] * 3
    # The first ping goes out at once, then one every 0.2 s: three take about 0.4 s.
    assert 0.3 <= elapsed < 1.5
    stop.set()
    await asyncio.wait_for(task, 1.0)
    await asyncio.sleep(0.3)
    assert notify_socket.drain() == []  # nothing after stop


async def test_stop_interrupts_a_long_period(notify_socket: NotifySocket) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(sdnotify.watchdog_loop(stop, interval=600, env=notify_socket.env()))
    assert await _recv(notify_socket) == "WATCHDOG=1"
    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 1.0)  # not after the 300 s period
    assert time.monotonic() - started < 0.5


async def test_a_wedged_event_loop_stops_the_pings(notify_socket: NotifySocket) -> None:
    """The point of pinging from the loop: while it is blocked, systemd hears nothing."""
    stop = asyncio.Event()
    task = asyncio.create_task(sdnotify.watchdog_loop(stop, interval=0.2, env=notify_socket.env()))
    assert await _recv(notify_socket) == "WATCHDOG=1"
    notify_socket.drain()
    # A blocking call on the loop (deliberately): 5 ping periods without a turn of the loop.
    time.sleep(0.5)
    assert notify_socket.drain() == []
    assert await _recv(notify_socket) == "WATCHDOG=1"  # the loop turns again: pings resume
    stop.set()
    await asyncio.wait_for(task, 1.0)


async def test_without_a_watchdog_the_loop_only_waits_for_stop(
    notify_socket: NotifySocket,
) -> None:
    """So it can run as a supervised forever-task whether or not WatchdogSec= is set."""
    stop = asyncio.Event()
    task = asyncio.create_task(sdnotify.watchdog_loop(stop, env=notify_socket.env()))
    await asyncio.sleep(0.2)
    assert not task.done()
    assert notify_socket.drain() == []
    stop.set()
    await asyncio.wait_for(task, 1.0)


async def test_a_watchdog_meant_for_another_process_is_not_fed(
    notify_socket: NotifySocket,
) -> None:
    stop = asyncio.Event()
    env = notify_socket.env(WATCHDOG_USEC="200000", WATCHDOG_PID="1")
    task = asyncio.create_task(sdnotify.watchdog_loop(stop, env=env))
    await asyncio.sleep(0.3)
    assert notify_socket.drain() == []
    stop.set()
    await asyncio.wait_for(task, 1.0)
