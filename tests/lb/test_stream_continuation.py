"""Streams survive a preemption notice: stub replicas as real processes behind the LB.

The stub generates `` t0 t1 ...`` deterministically and continues an answer as vLLM would
(prompt + text so far, or ``continue_final_message``), so a stream that moved must read
exactly like one that did not. The noticed replica is SIGKILLed once its deadline passes, as
a cloud would; nothing the client holds may break."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from .conftest import LB, LBFactory, StubProc, wait_until

TOKENS = 30
WANT = "".join(f" t{i}" for i in range(TOKENS))


def body(chat: bool, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"model": "stub", "max_tokens": TOKENS, **extra}
    if chat:
        out["messages"] = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ]
    else:
        out["prompt"] = "hi"
    return out


def path(chat: bool) -> str:
    return "/v1/chat/completions" if chat else "/v1/completions"


def parse_stream(raw: bytes) -> tuple[list[Any], int]:
    """(the chunks as JSON, how many [DONE])."""
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    chunks, done = [], 0
    for e in events:
        assert e.startswith(b"data: "), e
        payload = e[6:]
        if payload == b"[DONE]":
            done += 1
        else:
            chunks.append(json.loads(payload))
    return chunks, done


def text_of(chunks: list[Any]) -> str:
    out = []
    for c in chunks:
        for ch in c["choices"]:
            out.append(ch["text"] if "text" in ch else ch["delta"].get("content") or "")
    return "".join(out)


async def notice(lb: LB, noticed: StubProc, others: list[StubProc], in_s: float) -> None:
    await lb.put_replicas(
        [
            {**noticed.as_replica("DRAINING"), "deadline": time.time() + in_s},
            *(o.as_replica() for o in others),
        ]
    )


async def kill_later(stub: StubProc, seconds: float) -> None:
    await asyncio.sleep(seconds)
    stub.kill9()


async def stream_with_notice(
    lb: LB, stubs: list[StubProc], *, chat: bool, after_events: int, kill: bool, **extra: Any
) -> tuple[bytes, str]:
    """Start a stream; after ``after_events`` events its replica gets a notice (0.3 s) and,
    with ``kill``, is SIGKILLed 0.5 s later. Returns the raw stream and the first replica."""
    by_id = {s.id: s for s in stubs}
    got = b""
    async with lb.session.post(f"{lb.url}{path(chat)}", json=body(chat, stream=True, **extra)) as r:
        assert r.status == 200
        first = r.headers["X-Replica-Id"]
        seen = 0
        killer: asyncio.Task[None] | None = None
        async for line in r.content:
            got += line
            if line.startswith(b"data: "):
                seen += 1
                if seen == after_events:
                    victim = by_id[first]
                    await notice(lb, victim, [s for s in stubs if s is not victim], 0.3)
                    if kill:
                        killer = asyncio.create_task(kill_later(victim, 0.5))
        if killer is not None:
            await killer
    return got, first


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
async def test_a_stream_moves_off_a_noticed_replica_with_identical_text(
    make_lb: LBFactory, stubs, chat: bool
) -> None:
    replicas = stubs(2, "--token-delay-ms", "40")
    lb = await make_lb(policy="round_robin", handoff_margin=0.1)
    await lb.put_replicas([s.as_replica() for s in replicas])
    raw, first = await stream_with_notice(
        lb,
        replicas,
        chat=chat,
        after_events=6,
        kill=True,
        stream_options={"include_usage": True},
    )
    chunks, done = parse_stream(raw)
    assert text_of(chunks) == WANT  # nothing doubled, nothing lost
    assert done == 1 and raw.rstrip().endswith(b"data: [DONE]")
    assert len({(c["id"], c["created"], c["model"], c["object"]) for c in chunks}) == 1
    if chat:  # one role chunk, at the start
        roles = [c for c in chunks if c["choices"] and "role" in c["choices"][0]["delta"]]
        assert roles == [chunks[0]]
    assert chunks[-1]["usage"]["completion_tokens"] == TOKENS
    assert lb.state.metrics.handoffs == 1
    other = next(s for s in replicas if s.id != first)
    assert lb.state.replicas.stats[other.id].requests == 1  # the continuation went there
    assert lb.in_flight() == {first: 0, other.id: 0}
    assert lb.tokens() == {first: 0, other.id: 0}  # moved with the stream, then given back


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
async def test_a_stream_moved_twice_reads_as_one(make_lb: LBFactory, stubs, chat: bool) -> None:
    """Three replicas; the stream's replica is noticed, then the one it moved to: the second
    continuation must go on from both segments' token ids (the stub sends ids, as vLLM does,
    only when asked), so nothing is sent twice."""
    replicas = stubs(3, "--token-delay-ms", "40")
    lb = await make_lb(policy="round_robin", handoff_margin=0.1)
    await lb.put_replicas([s.as_replica() for s in replicas])
    by_id = {s.id: s for s in replicas}
    raw = b""
    url = f"{lb.url}{path(chat)}"
    async with lb.session.post(url, json=body(chat, stream=True)) as r:
        assert r.status == 200
        first = by_id[r.headers["X-Replica-Id"]]
        seen = 0
        async for line in r.content:
            raw += line
            seen += line.startswith(b"data: ")
            if seen == 6 and line.startswith(b"data: "):
                await notice(lb, first, [s for s in replicas if s is not first], 0.3)
            if seen == 16 and line.startswith(b"data: "):
                now = next(s for s in replicas if s is not first and lb.in_flight()[s.id])
                last = next(s for s in replicas if s not in (first, now))
                await lb.put_replicas(
                    [
                        {**first.as_replica("DRAINING"), "deadline": time.time()},
                        {**now.as_replica("DRAINING"), "deadline": time.time() + 0.3},
                        last.as_replica(),
                    ]
                )
    chunks, done = parse_stream(raw)
    assert text_of(chunks) == WANT  # nothing doubled, nothing lost
    assert done == 1 and lb.state.metrics.handoffs == 2
    assert all("token_ids" not in c["choices"][0] for c in chunks if c["choices"])


async def test_a_replica_killed_mid_stream_without_notice_is_survived(
    make_lb: LBFactory, stubs
) -> None:
    replicas = stubs(2, "--token-delay-ms", "40")
    lb = await make_lb(policy="round_robin")
    await lb.put_replicas([s.as_replica() for s in replicas])
    by_id = {s.id: s for s in replicas}
    got = b""
    async with lb.session.post(f"{lb.url}/v1/completions", json=body(False, stream=True)) as r:
        first = r.headers["X-Replica-Id"]
        seen = 0
        async for line in r.content:
            got += line
            if line.startswith(b"data: "):
                seen += 1
                if seen == 4:
                    by_id[first].kill9()
    chunks, done = parse_stream(got)
    assert text_of(chunks) == WANT and done == 1
    assert lb.state.metrics.handoffs == 1
    await wait_until(lambda: sum(lb.in_flight().values()) == 0)
    assert set(lb.tokens().values()) == {0}


async def test_a_stream_that_finishes_before_the_deadline_stays(make_lb: LBFactory, stubs) -> None:
    replicas = stubs(2, "--token-delay-ms", "20")
    lb = await make_lb(policy="round_robin", handoff_margin=10.0)
    await lb.put_replicas([s.as_replica() for s in replicas])
    # a 2-minute notice: the stream (0.6 s) ends long before deadline - margin
    by_id = {s.id: s for s in replicas}
    got = b""
    async with lb.session.post(f"{lb.url}/v1/completions", json=body(False, stream=True)) as r:
        first = r.headers["X-Replica-Id"]
        seen = 0
        async for line in r.content:
            got += line
            if line.startswith(b"data: "):
                seen += 1
                if seen == 3:
                    victim = by_id[first]
                    await notice(lb, victim, [s for s in replicas if s is not victim], 120)
    chunks, done = parse_stream(got)
    assert text_of(chunks) == WANT and done == 1
    assert lb.state.metrics.handoffs == 0


async def test_a_non_streamed_request_on_a_noticed_replica_is_sent_elsewhere(
    make_lb: LBFactory, stubs
) -> None:
    replicas = stubs(2, "--latency-ms", "3000")
    lb = await make_lb(policy="round_robin", handoff_margin=0.1)
    await lb.put_replicas([s.as_replica() for s in replicas])
    task = asyncio.create_task(
        lb.session.post(f"{lb.url}/v1/completions", json=body(False, max_tokens=3))
    )
    await wait_until(lambda: sum(lb.in_flight().values()) > 0)
    (first,) = [k for k, v in lb.in_flight().items() if v]
    victim = next(s for s in replicas if s.id == first)
    await notice(lb, victim, [s for s in replicas if s is not victim], 0.3)
    r = await task
    async with r:
        answer = await r.json()
        assert r.status == 200
        assert r.headers["X-Replica-Id"] != first
    assert answer["choices"][0]["text"] == " t0 t1 t2"
    # it moved at the notice's end: the noticed replica never answered it (the other one did)
    assert lb.state.metrics.notice_retries == 1
    assert lb.state.replicas.stats[first].in_flight == 0
    assert set(lb.tokens().values()) == {0}


async def test_deadline_must_be_a_number(make_lb: LBFactory, stubs) -> None:
    lb = await make_lb()
    async with lb.session.put(
        f"{lb.control_url}/-/replicas",
        json=[{"id": "a", "url": "http://127.0.0.1:1", "state": "DRAINING", "deadline": "soon"}],
        headers=lb.auth,
    ) as r:
        assert r.status == 400
        assert "deadline" in (await r.json())["error"]["message"]


async def test_sixteen_concurrent_streams_survive_a_notice(make_lb: LBFactory, stubs) -> None:
    replicas = stubs(3, "--token-delay-ms", "30")
    lb = await make_lb(policy="round_robin", handoff_margin=0.1)
    await lb.put_replicas([s.as_replica() for s in replicas])
    victim = replicas[0]

    async def one(i: int) -> tuple[str, int]:
        chat = i % 2 == 1
        async with lb.session.post(f"{lb.url}{path(chat)}", json=body(chat, stream=True)) as r:
            chunks, done = parse_stream(await r.read())
        return text_of(chunks), done

    tasks = [asyncio.create_task(one(i)) for i in range(16)]
    await wait_until(lambda: lb.in_flight().get(victim.id, 0) >= 3)
    await asyncio.sleep(0.2)
    await notice(lb, victim, replicas[1:], 0.2)
    # every stream has moved off the victim before it dies (the notice is under the LB's margin)
    await wait_until(lambda: lb.in_flight().get(victim.id, 0) == 0)
    victim.kill9()
    results = await asyncio.gather(*tasks)
    assert results == [(WANT, 1)] * 16
    assert lb.state.metrics.handoffs >= 3
    assert lb.state.metrics.handoff_failures == 0
    await wait_until(lambda: sum(lb.in_flight().values()) == 0)
    assert set(lb.tokens().values()) == {0}


async def test_without_continuation_the_stream_is_relayed_as_before(
    make_lb: LBFactory, stubs
) -> None:
    (stub,) = stubs(1, "--token-delay-ms", "5")
    lb = await make_lb(continue_streams=False)
    await lb.put_replicas([stub.as_replica()])
    async with lb.session.post(f"{lb.url}/v1/completions", json=body(False, stream=True)) as r:
        chunks, done = parse_stream(await r.read())
    assert text_of(chunks) == WANT and done == 1


async def test_lb_metrics_count_handoffs(make_lb: LBFactory, stubs) -> None:
    lb = await make_lb()
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{lb.control_url}/metrics", headers=lb.auth) as r,
    ):
        text = await r.text()
    assert "spotd_lb_stream_handoffs_total 0.0" in text
    assert "spotd_lb_notice_retries_total 0.0" in text


async def test_a_server_writing_crlf_events_is_relayed_whole(make_lb: LBFactory, upstream) -> None:
    """Events separated by CRLF (the LB cuts only at ``\\n\\n``): relayed as they come, ended
    once, never taken for a broken stream."""
    from aiohttp import web

    events = [
        b'data: {"id":"x","choices":[{"index":0,"text":" a"}]}\r\n\r\n',
        b"data: [DONE]\r\n\r\n",
    ]

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for e in events:
            await resp.write(e)
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", handle)
    url = await upstream(app)
    lb = await make_lb()
    await lb.put_replicas([{"id": "crlf", "url": url}])
    async with lb.session.post(f"{lb.url}/v1/completions", json=body(False, stream=True)) as r:
        assert await r.read() == b"".join(events)
    assert lb.state.metrics.handoffs == 0
