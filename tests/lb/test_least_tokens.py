"""``least_tokens`` over real HTTP on loopback: one replica holds one long generation, the other
several short ones; the next request goes where fewer tokens are outstanding (``least_load``,
counting requests, sends it to the long one). The counts return to 0 however a stream ends:
finished, abandoned by its client, or continued on another replica after a notice.

The replicas are in-process aiohttp apps whose streams send ``FIRST`` events, then wait for
the test to open ``gate``: what is in flight when the next request is routed is known
exactly, whatever the machine's speed."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from spotd.lb.policy import Policy, PolicyState, ReplicaView, RequestInfo, pick

from .conftest import LB, LBFactory, wait_until

FIRST = 2  # events each stream sends before it waits for the gate
_TOKEN = re.compile(r" t\d+")


def gated_llm_app(name: str, gate: asyncio.Event) -> web.Application:
    """``POST /v1/completions`` streaming ``max_tokens`` tokens `` t<i>`` (a prompt ending in
    tokens continues the count, as a continuation would), ``FIRST`` of them before ``gate``."""

    def event(i: int, last: bool) -> bytes:
        chunk = {
            "id": f"cmpl-{name}",
            "object": "text_completion",
            "created": 1,
            "model": "m",
            "choices": [
                {"index": 0, "text": f" t{i}", "finish_reason": "length" if last else None}
            ],
        }
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        start = len(_TOKEN.findall(str(body.get("prompt", ""))))
        n = int(body.get("max_tokens", 16))
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Replica-Id": name}
        )
        await resp.prepare(request)
        for k in range(n):
            if k == FIRST:
                await gate.wait()
            await resp.write(event(start + k, k == n - 1))
        if body.get("user") != "no-done":  # the test's way to ask for an engine's slip
            await resp.write(b"data: [DONE]\n\n")
        return resp

    async def slow(request: web.Request) -> web.Response:
        await gate.wait()
        return web.Response(text=name, headers={"X-Replica-Id": name})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/slow", slow)
    return app


Upstream = Callable[[web.Application], Awaitable[str]]


async def two_replicas(
    make_lb: LBFactory, upstream: Upstream, **cfg: Any
) -> tuple[LB, asyncio.Event]:
    gate = asyncio.Event()
    lb = await make_lb(**cfg)
    await lb.put_replicas(
        [{"id": rid, "url": await upstream(gated_llm_app(rid, gate))} for rid in ("a", "b")]
    )
    return lb, gate


def session_key_for(replica: str) -> str:
    """A session key that affinity puts on ``replica`` (of a and b): to place requests."""
    views = [ReplicaView(id=r, url="http://x") for r in ("a", "b")]
    for i in range(1000):
        key = f"user-{i}"
        got = pick(
            views, {}, RequestInfo(session_key=key), policy=Policy.ROUND_ROBIN, state=PolicyState()
        )
        if got == replica:
            return key
    raise AssertionError("no key found")


async def open_stream(
    lb: LB, max_tokens: int, session: str | None = None
) -> aiohttp.ClientResponse:
    """Start a stream and read its first event (it has reached its replica)."""
    headers = {"X-Session-Id": session} if session else {}
    r = await lb.session.post(
        f"{lb.url}/v1/completions",
        json={"model": "m", "prompt": "hi", "max_tokens": max_tokens, "stream": True},
        headers=headers,
    )
    assert r.status == 200
    assert (await r.content.readuntil(b"\n\n")).startswith(b"data: ")
    return r


async def finish(r: aiohttp.ClientResponse) -> str:
    async with r:
        raw = await r.read()
    assert raw.rstrip().endswith(b"data: [DONE]")
    return raw.decode()


@pytest.mark.parametrize(
    ("policy", "goes_to"),
    [("least_tokens", "short"), ("least_load", "long")],
)
async def test_the_next_request_goes_where_fewer_tokens_are_outstanding(
    make_lb: LBFactory, upstream: Upstream, policy: str, goes_to: str
) -> None:
    lb, gate = await two_replicas(make_lb, upstream, policy=policy)
    # one long generation on one replica, three short ones on the other (placed by affinity)
    where = {"long": "a", "short": "b"}
    long_ = await open_stream(lb, 1000, session_key_for(where["long"]))
    shorts = [await open_stream(lb, 20, session_key_for(where["short"])) for _ in range(3)]
    assert long_.headers["X-Replica-Id"] == where["long"]
    assert {r.headers["X-Replica-Id"] for r in shorts} == {where["short"]}
    assert lb.in_flight() == {where["long"]: 1, where["short"]: 3}
    held = lb.tokens()
    assert held[where["long"]] > held[where["short"]] > 0

    nxt = await open_stream(lb, 20)  # no session: the policy decides
    assert nxt.headers["X-Replica-Id"] == where[goes_to]

    gate.set()
    texts = [await finish(r) for r in [long_, *shorts, nxt]]
    assert texts[0].count(" t") == 1000 - FIRST + 1  # after the first event, read above
    await wait_until(lambda: lb.in_flight() == {"a": 0, "b": 0} and lb.tokens() == {"a": 0, "b": 0})


async def test_a_stream_gives_its_tokens_back_as_they_arrive(
    make_lb: LBFactory, upstream: Upstream
) -> None:
    lb, gate = await two_replicas(make_lb, upstream, policy="least_tokens")
    r = await open_stream(lb, 100)
    rid = r.headers["X-Replica-Id"]
    # "hi" (0 tokens at 4 characters each) + max_tokens 100, less the FIRST events sent
    await wait_until(lambda: lb.tokens()[rid] == 100 - FIRST)
    async with lb.session.get(f"{lb.control_url}/metrics", headers=lb.auth) as m:
        text = await m.text()
    assert f'spotd_lb_replica_outstanding_tokens{{replica="{rid}"}} {100 - FIRST}.0' in text
    gate.set()
    await finish(r)
    await wait_until(lambda: lb.tokens() == {"a": 0, "b": 0})


async def test_without_stream_continuation_the_estimate_holds_until_the_end(
    make_lb: LBFactory, upstream: Upstream
) -> None:
    lb, gate = await two_replicas(make_lb, upstream, policy="least_tokens", continue_streams=False)
    r = await open_stream(lb, 100)
    rid = r.headers["X-Replica-Id"]
    assert lb.tokens()[rid] == 100  # relayed as it comes: nothing given back before the end
    gate.set()
    await finish(r)
    await wait_until(lambda: lb.tokens() == {"a": 0, "b": 0})


async def test_other_requests_count_one_token_each(make_lb: LBFactory, upstream: Upstream) -> None:
    """Not LLM requests: each counts 1, so least_tokens spreads them as least_load would."""
    lb, gate = await two_replicas(make_lb, upstream, policy="least_tokens")
    tasks = [asyncio.create_task(lb.session.get(f"{lb.url}/slow")) for _ in range(4)]
    await wait_until(lambda: sum(lb.in_flight().values()) == 4)
    assert lb.tokens() == lb.in_flight() == {"a": 2, "b": 2}
    gate.set()
    for t in tasks:
        async with await t as r:
            assert r.status == 200
    await wait_until(lambda: lb.tokens() == {"a": 0, "b": 0})


async def test_a_client_that_leaves_mid_stream_leaves_no_tokens_behind(
    make_lb: LBFactory, upstream: Upstream
) -> None:
    lb, gate = await two_replicas(make_lb, upstream, policy="least_tokens")
    streams = [await open_stream(lb, 500) for _ in range(4)]
    assert sum(lb.tokens().values()) > 0
    for r in streams:
        r.close()  # the client goes away while its replica is still generating
    gate.set()
    await wait_until(lambda: lb.in_flight() == {"a": 0, "b": 0} and lb.tokens() == {"a": 0, "b": 0})


async def test_a_stream_continued_after_a_notice_moves_its_tokens(
    make_lb: LBFactory, upstream: Upstream
) -> None:
    lb, gate = await two_replicas(make_lb, upstream, policy="least_tokens", handoff_margin=0.1)
    r = await open_stream(lb, 300)
    first = r.headers["X-Replica-Id"]
    other = "b" if first == "a" else "a"
    before = lb.tokens()[first]
    assert before > 0 and lb.tokens()[other] == 0
    urls = {v.id: v.url for v in lb.state.replicas.views}
    await lb.put_replicas(
        [
            {"id": first, "url": urls[first], "state": "DRAINING", "deadline": time.time()},
            {"id": other, "url": urls[other]},
        ]
    )
    # the stream moved: the noticed replica holds nothing, the other holds what was left
    await wait_until(lambda: lb.state.metrics.handoffs == 1 and lb.in_flight()[other] == 1)
    await wait_until(lambda: lb.tokens()[first] == 0 and 0 < lb.tokens()[other] <= before)
    assert lb.in_flight()[first] == 0
    gate.set()
    text = await finish(r)
    assert "".join(_TOKEN.findall(text)) == "".join(f" t{i}" for i in range(1, 300))
    await wait_until(lambda: lb.in_flight() == {first: 0, other: 0})
    assert lb.tokens() == {first: 0, other: 0}


async def test_a_stream_ending_without_done_is_ended_by_the_lb_and_counted_out(
    make_lb: LBFactory, upstream: Upstream
) -> None:
    """The replica sends every token and its finish_reason but ends without ``[DONE]``: the
    LB ends the stream itself, and nothing stays counted anywhere."""
    lb, gate = await two_replicas(make_lb, upstream, policy="least_tokens")
    gate.set()
    async with lb.session.post(
        f"{lb.url}/v1/completions",
        json={
            "model": "m",
            "prompt": "abcd" * 40,  # 40 tokens of prompt: still counted when the answer ends
            "max_tokens": 5,
            "stream": True,
            "user": "no-done",
        },
    ) as r:
        raw = await r.read()
    assert raw.rstrip().endswith(b"data: [DONE]")
    assert "".join(_TOKEN.findall(raw.decode())) == " t0 t1 t2 t3 t4"
    await wait_until(lambda: lb.in_flight() == {"a": 0, "b": 0})
    assert lb.tokens() == {"a": 0, "b": 0}
