"""Streams survive a preemption notice, on REAL vLLM CPU replicas behind the real LB process.

16 concurrent greedy streams (completions and chat) run through the LB; one replica gets a
notice (pushed as DRAINING with a deadline, as the daemon does) and is SIGKILLed once the
deadline has passed. Every stream must end with one ``[DONE]`` and read exactly as the same
request does uninterrupted: the LB moved the stream to the other replica by token ids, and
the tiny model is deterministic at temperature 0."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from .conftest import TIER_TIMEOUT_S, Service

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(TIER_TIMEOUT_S)]

STREAMS = 16
MAX_TOKENS = 200  # within --max-model-len 256 with the short prompts below


def body(i: int, model: str) -> tuple[str, dict[str, Any]]:
    common = {"model": model, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
    if i % 2:
        msgs = [
            {"role": "system", "content": "You are a tiny model."},
            {"role": "user", "content": f"Stream {i}: how are you today?"},
        ]
        return "/v1/chat/completions", {**common, "messages": msgs, "stream": True}
    return "/v1/completions", {
        **common,
        "prompt": f"Stream {i}: the quick brown fox",
        "stream": True,
    }


async def read_stream(
    session: aiohttp.ClientSession,
    url: str,
    payload: dict[str, Any],
    seen: list[int],
    slot: int = 0,
) -> tuple[str, int, set[str]]:
    """(text, how many [DONE], the chunk ids) of one streamed answer; ``seen[0]`` counts the
    events of all streams as they arrive, ``seen[1 + slot]`` this stream's."""
    async with session.post(url, json=payload) as r:
        assert r.status == 200, await r.text()
        raw = b""
        async for chunk in r.content.iter_any():
            raw += chunk
            events = chunk.count(b"\n\n")
            seen[0] += events
            if len(seen) > 1 + slot:
                seen[1 + slot] += events
    text, done, ids = [], 0, set()
    for event in raw.split(b"\n\n"):
        if not event.strip():
            continue
        assert event.startswith(b"data: "), event[:200]
        data = event[6:]
        if data == b"[DONE]":
            done += 1
            continue
        obj = json.loads(data)
        ids.add(obj["id"])
        for c in obj["choices"]:
            text.append(c["text"] if "text" in c else c["delta"].get("content") or "")
    return "".join(text), done, ids


async def run_all(
    base: str, model: str, seen: list[int] | None = None
) -> list[tuple[str, int, set[str]]]:
    seen = [0] if seen is None else seen
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=240)) as s:
        return await asyncio.gather(
            *(
                read_stream(s, base + path, payload, seen, i)
                for i in range(STREAMS)
                for path, payload in [body(i, model)]
            )
        )


def test_streams_survive_a_notice_with_identical_text(vllm_service: Service) -> None:
    lb = vllm_service.lb
    base = vllm_service.url
    # the uninterrupted run: the same 16 requests, nobody noticed
    reference = asyncio.run(run_all(base, vllm_service.model))
    assert [r[1] for r in reference] == [1] * STREAMS

    victim, survivor = vllm_service.replicas
    at_notice: dict[str, int] = {}
    moved_before = _handoffs(lb)

    async def with_notice() -> list[tuple[str, int, set[str]]]:
        seen = [0] * (1 + STREAMS)  # every event, then each stream's
        streams = asyncio.ensure_future(run_all(base, vllm_service.model, seen))
        deadline = time.monotonic() + 60
        # the streams are under way: every one of them has its first events (so those on the
        # victim are being relayed, not still waiting for vLLM to answer: a request the victim
        # never answered is simply sent elsewhere, which moves no stream), about 8 tokens each
        # (of 200), on both replicas
        while (
            seen[0] < 8 * STREAMS or min(seen[1:]) < 2 or lb.replicas()[victim.id]["in_flight"] < 4
        ):
            assert time.monotonic() < deadline and not streams.done(), lb.replicas()
            await asyncio.sleep(0.01)
        # the notice: reclaimed in 2 s (less than the LB's 10 s margin: the streams move now)
        at_notice.update(seen=seen[0], in_flight=lb.replicas()[victim.id]["in_flight"])
        noticed: dict[str, Any] = {**victim.as_replica(), "state": "DRAINING"}
        noticed["deadline"] = time.time() + 2
        lb.control("PUT", "/-/replicas", [noticed, survivor.as_replica()])
        await asyncio.sleep(2.5)
        victim.kill9_group()  # the cloud takes it back
        return await streams

    results = asyncio.run(with_notice())
    broken = [i for i, r in enumerate(results) if r[1] != 1]
    assert broken == [], f"streams without exactly one [DONE]: {broken}"
    for i, (got, ref) in enumerate(zip(results, reference, strict=True)):
        assert got[0] == ref[0], f"stream {i} differs from the uninterrupted run"
        assert len(got[2]) == 1, f"stream {i} changed its id: {got[2]}"
    assert _handoffs(lb) > moved_before, (
        f"no stream was moved: the notice came too late (at {at_notice}):\n{lb.log_tail()}"
    )


def _handoffs(lb: Any) -> float:
    import urllib.request

    req = urllib.request.Request(f"{lb.control_url}/metrics", headers=lb.auth)
    with urllib.request.urlopen(req, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("spotd_lb_stream_handoffs_total "):
                return float(line.split()[1])
    raise AssertionError("the LB exports no spotd_lb_stream_handoffs_total")
