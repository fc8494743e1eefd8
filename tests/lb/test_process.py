"""``python -m spotd.lb`` as a real process, both ways it can run: the proxy on its own port
with the control API on another (what the daemon starts), and the control routes under
``/-/`` on the proxy port. SIGTERM lets an in-flight stream finish, then the process exits."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

import aiohttp
import pytest

from .conftest import ROOT, free_port

TOKEN = "proc-token"


async def _wait_http(
    session: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the LB exited: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not answer")


@pytest.mark.parametrize(
    "separate_control", [True, False], ids=["control-port", "control-on-proxy"]
)
async def test_lb_process_proxies_streams_and_drains_on_sigterm(
    stubs, separate_control: bool
) -> None:
    (stub,) = stubs(1, "--tokens", "10", "--token-delay-ms", "50")
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "spotd.lb",
        "--port",
        str(port),
        "--token",
        TOKEN,
        "--replica",
        f"{stub.id}={stub.url}",
        "--shutdown-timeout",
        "10",
    ]
    if separate_control:
        cport = free_port()
        args += ["--control-port", str(cport)]
        control = f"http://127.0.0.1:{cport}"
    else:
        control = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            await _wait_http(s, f"{control}/-/health", proc)
            async with s.get(f"{control}/-/replicas") as r:
                assert r.status == 401  # the control API needs the token, on either port
            async with s.post(
                f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "hi", "max_tokens": 3}
            ) as r:
                assert r.status == 200
                assert (await r.json())["choices"][0]["text"] == " t0 t1 t2"
            # a stream of 10 tokens x 50 ms is in flight when SIGTERM arrives: it finishes
            events: list[bytes] = []
            async with s.post(
                f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "hi", "stream": True}
            ) as r:
                assert r.status == 200
                first = await r.content.readline()
                proc.send_signal(signal.SIGTERM)
                events.append(first)
                async for line in r.content:
                    events.append(line)
            data = [e[6:].strip() for e in events if e.startswith(b"data: ")]
            assert data[-1] == b"[DONE]"
            text = "".join(json.loads(d)["choices"][0]["text"] for d in data[:-1])
            assert text == "".join(f" t{i}" for i in range(10))
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
