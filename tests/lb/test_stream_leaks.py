"""What a stream continuation leaves behind when its client leaves at a bad moment: nothing.
A replica keeps no request in flight (the daemon drains it only at zero) and no tokens (the
least_tokens policy's load) for a client that is gone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from tests.lb.conftest import LBFactory, wait_until

Handler = Callable[[asyncio.StreamWriter], Awaitable[None]]


async def _raw_upstream(answer: Handler) -> tuple[asyncio.Server, str]:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            head = await r.readuntil(b"\r\n\r\n")
            lines = head.lower().split(b"\r\n")
            length = [int(h.split(b":")[1]) for h in lines if h.startswith(b"content-length:")]
            await r.readexactly(length[0] if length else 0)
            await answer(w)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _event(i: int) -> bytes:
    o = {"id": "x", "object": "text_completion", "created": 1, "model": "m",
         "choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]}  # fmt: skip
    data = b"data: " + json.dumps(o).encode() + b"\n\n"
    return b"%x\r\n%b\r\n" % (len(data), data)


async def test_a_client_leaving_while_a_refused_continuation_is_read_leaves_no_load(
    make_lb: LBFactory,
) -> None:
    """A dies mid-stream; B refuses the continuation, its 400's body arriving 2 s after its
    head; the client leaves in between. B kept one request in flight and its tokens for
    ever: it would never drain, and least_tokens saw phantom load on it."""

    may_die, head_sent, client_gone = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def dies(w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + _event(0))  # fmt: skip
        await w.drain()
        await may_die.wait()
        w.transport.abort()

    async def refuses(w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                b"Content-Length: 20\r\n\r\n")  # fmt: skip
        await w.drain()
        head_sent.set()
        await client_gone.wait()  # the body only once the client has left
        w.write(b'{"error":"x"}'.ljust(20))
        await w.drain()

    a_server, a = await _raw_upstream(dies)
    b_server, b = await _raw_upstream(refuses)
    lb = await make_lb(policy="least_tokens")
    try:
        await lb.put_replicas([{"id": "A", "url": a}, {"id": "B", "url": b, "state": "DRAINING"}])
        body = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 50, "stream": True})
        host, port = lb.url[len("http://") :].split(":")
        r, w = await asyncio.open_connection(host, int(port))
        w.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(body), body.encode())
        )
        await asyncio.wait_for(r.read(1), 10)  # the stream began on A
        await lb.put_replicas([{"id": "A", "url": a}, {"id": "B", "url": b}])  # B may take it
        may_die.set()
        await asyncio.wait_for(head_sent.wait(), 10)  # B's refusal's head is in, its body not
        w.transport.abort()  # the client leaves
        await wait_until(lambda: lb.in_flight()["B"] == 0)
        client_gone.set()
        assert (lb.in_flight(), lb.tokens()) == ({"A": 0, "B": 0}, {"A": 0, "B": 0})
    finally:
        a_server.close()
        b_server.close()


async def test_a_stream_waiting_for_a_replica_to_move_to_counts_as_waiting(
    make_lb: LBFactory,
) -> None:
    """Its only replica died mid-stream: the stream waits (``queue_timeout``) for another.
    It did not count in the LB's ``waiting``, the demand the autoscaler reads, so the streams
    a preemption wave strands were invisible to it."""

    die = asyncio.Event()

    async def dies(w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + _event(0))  # fmt: skip
        await w.drain()
        await die.wait()
        w.transport.abort()

    server, a = await _raw_upstream(dies)
    lb = await make_lb(policy="least_load", queue_timeout=30)
    try:
        await lb.put_replicas([{"id": "A", "url": a}])
        resp = await lb.session.post(  # its head and first event come from A
            lb.url + "/v1/completions",
            json={"model": "m", "prompt": "hi", "max_tokens": 50, "stream": True},
        )
        die.set()
        await wait_until(lambda: lb.state.waiting == 1)  # it waits for a replica to move to
        resp.close()  # the client gives up
        await wait_until(lambda: lb.state.waiting == 0)
        assert lb.in_flight() == {"A": 0}
    finally:
        server.close()
