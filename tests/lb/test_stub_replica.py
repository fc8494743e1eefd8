"""The stub replica speaks vLLM's OpenAI endpoints and shuts down gracefully on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal

import aiohttp

from .conftest import wait_until


async def test_openai_endpoints_are_deterministic(stubs) -> None:
    (stub,) = stubs(1, "--tokens", "3", "--model", "m1")
    async with aiohttp.ClientSession(stub.url) as s:
        async with s.get("/health") as r:
            assert r.status == 200
        async with s.get("/v1/models") as r:
            assert [m["id"] for m in (await r.json())["data"]] == ["m1"]
        bodies = []
        for _ in range(2):
            async with s.post("/v1/completions", json={"prompt": "a b c"}) as r:
                bodies.append(await r.json())
        assert bodies[0] == bodies[1]
        assert bodies[0]["choices"][0]["text"] == " t0 t1 t2"
        assert bodies[0]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
        async with s.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        ) as r:
            chat = await r.json()
        assert chat["object"] == "chat.completion"
        assert chat["choices"][0]["message"]["content"] == " t0 t1"
        async with s.post(
            "/v1/completions", json={"prompt": "x", "stream": True, "max_tokens": 2}
        ) as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            events = [
                line[6:].strip()
                for line in (await r.read()).split(b"\n")
                if line.startswith(b"data: ")
            ]
        assert events[-1] == b"[DONE]"
        assert [json.loads(e)["choices"][0]["text"] for e in events[:-1]] == [" t0", " t1"]
        async with s.get("/metrics") as r:
            text = await r.text()
        assert 'vllm:num_requests_running{model_name="m1"} 0.0' in text
        assert 'vllm:num_requests_waiting{model_name="m1"} 0.0' in text


async def test_metrics_count_running_and_waiting(stubs) -> None:
    (stub,) = stubs(1, "--max-running", "1", "--latency-ms", "300")
    async with aiohttp.ClientSession(stub.url) as s:

        async def complete() -> int:
            async with s.post("/v1/completions", json={"prompt": "x"}) as r:
                return r.status

        tasks = [asyncio.create_task(complete()) for _ in range(3)]

        async def gauges() -> tuple[str, str]:
            async with s.get("/metrics") as r:
                lines = (await r.text()).splitlines()
            run = next(x for x in lines if x.startswith("vllm:num_requests_running"))
            wait = next(x for x in lines if x.startswith("vllm:num_requests_waiting"))
            return run.split()[-1], wait.split()[-1]

        seen = await gauges()
        while seen != ("1.0", "2.0"):
            await asyncio.sleep(0.02)
            seen = await gauges()
        assert await asyncio.gather(*tasks) == [200] * 3


async def test_sigterm_finishes_in_flight_then_exits(stubs) -> None:
    (stub,) = stubs(1, "--tokens", "20", "--token-delay-ms", "25")
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{stub.url}/v1/completions", json={"prompt": "x", "stream": True}) as r,
    ):
        await r.content.readuntil(b"\n\n")
        stub.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.1)
        # no new connections once the listener is closed
        try:
            async with aiohttp.ClientSession() as fresh:  # noqa: SIM117
                async with fresh.get(f"{stub.url}/health") as h:
                    refused = h.status != 200
        except aiohttp.ClientConnectionError:
            refused = True
        assert refused
        rest = await r.read()
    assert rest.endswith(b"data: [DONE]\n\n")
    await wait_until(lambda: stub.proc.poll() is not None)
    assert stub.proc.returncode == 0
