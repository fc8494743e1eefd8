"""The LB's keep-alive pool at its limit (``pool_limit``), against upstreams on loopback that
keep idle connections open (as a replica with a long keep-alive does): a request waiting for
room is served once a connection goes idle, and one new connection makes room by closing
one idle connection, not every one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from tests.lb.conftest import LB, LBFactory, wait_until


class KeepAlive:
    """A raw HTTP/1.1 upstream answering ``ok`` after ``delay`` s; never closes a connection
    itself. ``open`` is how many connections the LB holds to it now."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.open = delay, 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            while True:
                await r.readuntil(b"\r\n\r\n")
                await asyncio.sleep(self.delay)
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            w.close()


@pytest.fixture
async def keepalive() -> AsyncIterator[Callable[[float], KeepAlive]]:
    made: list[KeepAlive] = []

    def make(delay: float = 0.0) -> KeepAlive:
        made.append(KeepAlive(delay))
        return made[-1]

    yield make
    for k in made:
        k.server.close()


async def _get(lb: LB, path: str = "/x") -> str:
    async with lb.session.get(lb.url + path) as r:
        return await r.text()


async def test_a_request_waiting_at_the_limit_is_served_when_a_connection_goes_idle(
    make_lb: LBFactory, keepalive: Callable[[float], KeepAlive]
) -> None:
    """Only a connection *closing* woke a waiting request: with a replica that keeps them
    open, the 9th request of a burst over ``pool_limit`` = 8 waited for ever beside 8 idle
    connections to its own replica."""
    a = keepalive(0.5)
    lb = await make_lb(policy="least_load", pool_limit=8)
    await lb.put_replicas([{"id": "A", "url": await a.start()}])
    burst = [asyncio.create_task(_get(lb)) for _ in range(8)]
    await wait_until(lambda: a.open == 8)  # the 8 hold every connection the pool may open
    ninth = asyncio.create_task(_get(lb))
    assert await asyncio.wait_for(asyncio.gather(*burst, ninth), 20) == ["ok"] * 9
    assert a.open == 8 and lb.in_flight() == {"A": 0}


async def test_making_room_at_the_limit_closes_one_idle_connection_not_all(
    make_lb: LBFactory, keepalive: Callable[[float], KeepAlive]
) -> None:
    """An evicted connection was counted out only when its transport reported it lost (a
    later loop turn), so the room-making loop went on closing idle ones: every one of them."""
    a, b = keepalive(0.2), keepalive(0.0)
    lb = await make_lb(policy="least_load", pool_limit=4)
    await lb.put_replicas([{"id": "A", "url": await a.start()}])
    assert await asyncio.gather(*(_get(lb) for _ in range(4))) == ["ok"] * 4
    assert a.open == 4  # four idle connections to A
    await lb.put_replicas([{"id": "B", "url": await b.start()}])
    assert await _get(lb) == "ok"
    await wait_until(lambda: a.open <= 3)  # the evicted connection's close reaches A
    assert await _get(lb) == "ok"  # B again, on its idle connection: no room to make
    assert (a.open, b.open) == (3, 1)  # the evictions, had there been more, are in by now


async def test_a_waiting_request_whose_client_left_passes_its_wake_up_on(
    make_lb: LBFactory, keepalive: Callable[[float], KeepAlive]
) -> None:
    """Two requests wait at ``pool_limit`` = 1; the first one's client leaves as it is woken:
    the wake-up was lost with it, and the other waited with room in the pool."""
    a = keepalive(0.3)
    lb = await make_lb(policy="least_load", pool_limit=1)
    await lb.put_replicas([{"id": "A", "url": await a.start()}])
    first = asyncio.create_task(_get(lb))
    await wait_until(lambda: a.open == 1)
    leaving = asyncio.create_task(_get(lb))
    await wait_until(lambda: lb.in_flight() == {"A": 2})  # it waits for the one connection
    other = asyncio.create_task(_get(lb))
    await wait_until(lambda: lb.in_flight() == {"A": 3})  # and so does this one, after it
    assert await first == "ok"
    leaving.cancel()  # its client goes as the pool hands it the connection
    assert await asyncio.wait_for(other, 20) == "ok"
    with pytest.raises((asyncio.CancelledError, aiohttp.ClientError)):
        await leaving
