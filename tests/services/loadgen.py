"""A small load generator for the services tests, run as its own process.

``python tests/services/loadgen.py URL [--concurrency N] [--max-requests N] [--max-seconds S]
[--schedule RATE:SECONDS,...] [--stream-every K] [--tokens T] [--stop-file PATH]
[--progress-file PATH]``

Sends ``POST URL/v1/completions`` from ``N`` workers until ``--max-requests`` are sent,
``--max-seconds`` pass, the schedule ends, or the stop file appears — always bounded in count
and time. Every ``K``-th request streams (SSE, checked to end with ``data: [DONE]`` after
exactly ``T`` tokens); the others are checked for ``usage.completion_tokens == T``. With a
schedule, requests are paced to RATE per second for SECONDS, phase after phase.

Prints one JSON object: ``{"ok", "failed", "stream_ok", "stream_failed", "errors",
"by_replica", "models", "seconds"}``; writes ``{"done": n, "ok": n, "failed": n}`` to the
progress file every 0.1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import aiohttp


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sent = 0
        self.ok = 0
        self.failed = 0
        self.stream_ok = 0
        self.stream_failed = 0
        self.errors: list[str] = []
        self.by_replica: dict[str, int] = {}
        self.models: dict[str, int] = {}
        self.start = time.monotonic()
        self.schedule = (
            [(float(r), float(s)) for r, s in (p.split(":") for p in args.schedule.split(",") if p)]
            if args.schedule
            else []
        )

    def stopping(self) -> bool:
        if self.sent >= self.args.max_requests:
            return True
        elapsed = time.monotonic() - self.start
        if elapsed >= self.args.max_seconds:
            return True
        if self.schedule and elapsed >= sum(s for _, s in self.schedule):
            return True
        return bool(self.args.stop_file) and os.path.exists(self.args.stop_file)

    def send_time(self, n: int) -> float:
        """When request ``n`` (0-based) is due under the schedule (start-relative)."""
        t = 0.0
        for rate, seconds in self.schedule:
            fits = int(rate * seconds)
            if n < fits:
                return t + n / rate
            n -= fits
            t += seconds
        return t

    def fail(self, stream: bool, why: str) -> None:
        if stream:
            self.stream_failed += 1
        else:
            self.failed += 1
        if len(self.errors) < 30:
            self.errors.append(
                f"{time.monotonic() - self.start:.2f}s {'stream ' if stream else ''}{why}"
            )

    async def one(self, session: aiohttp.ClientSession, n: int) -> None:
        stream = self.args.stream_every > 0 and n % self.args.stream_every == 0
        tokens = self.args.tokens
        body = {"model": "stub", "prompt": f"request {n}", "max_tokens": tokens, "stream": stream}
        try:
            async with session.post(f"{self.args.url}/v1/completions", json=body) as r:
                rid = r.headers.get("X-Replica-Id", "?")
                if r.status != 200:
                    self.fail(stream, f"HTTP {r.status}: {(await r.text())[:200]}")
                    return
                if stream:
                    chunks = 0
                    done = False
                    async for line in r.content:
                        text = line.decode().strip()
                        if text == "data: [DONE]":
                            done = True
                        elif text.startswith("data: "):
                            data = json.loads(text[6:])
                            if data.get("choices"):
                                chunks += 1
                                self.models[data.get("model", "?")] = (
                                    self.models.get(data.get("model", "?"), 0) + 1
                                )
                    if not done or chunks != tokens:
                        self.fail(stream, f"stream cut: {chunks} tokens, done={done} ({rid})")
                        return
                    self.stream_ok += 1
                else:
                    data = await r.json()
                    got = data.get("usage", {}).get("completion_tokens")
                    if got != tokens:
                        self.fail(stream, f"{got} tokens instead of {tokens} ({rid})")
                        return
                    self.models[data.get("model", "?")] = (
                        self.models.get(data.get("model", "?"), 0) + 1
                    )
                    self.ok += 1
                self.by_replica[rid] = self.by_replica.get(rid, 0) + 1
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.fail(stream, repr(exc)[:200])

    async def worker(self, session: aiohttp.ClientSession) -> None:
        while not self.stopping():
            n = self.sent
            self.sent += 1
            if self.schedule:
                due = self.start + self.send_time(n)
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self.stopping() and n >= self.args.max_requests:
                    return
            await self.one(session, n)

    async def progress(self) -> None:
        while True:
            if self.args.progress_file:
                tmp = self.args.progress_file + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(
                        {
                            "done": self.ok + self.failed + self.stream_ok + self.stream_failed,
                            "ok": self.ok + self.stream_ok,
                            "failed": self.failed + self.stream_failed,
                            "by_replica": self.by_replica,
                        },
                        f,
                    )
                os.replace(tmp, self.args.progress_file)
            await asyncio.sleep(0.1)

    def result(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failed": self.failed,
            "stream_ok": self.stream_ok,
            "stream_failed": self.stream_failed,
            "errors": self.errors,
            "by_replica": self.by_replica,
            "models": self.models,
            "seconds": round(time.monotonic() - self.start, 2),
        }


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    load = Load(args)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=args.concurrency), timeout=timeout
    ) as session:
        progress = asyncio.create_task(load.progress())
        await asyncio.gather(*(load.worker(session) for _ in range(args.concurrency)))
        progress.cancel()
    if args.progress_file:
        with open(args.progress_file, "w") as f:
            json.dump({"done": load.sent, "finished": True}, f)
    return load.result()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-requests", type=int, default=5000)
    p.add_argument("--max-seconds", type=float, default=30.0)
    p.add_argument("--schedule", default="")
    p.add_argument("--stream-every", type=int, default=0)
    p.add_argument("--tokens", type=int, default=4)
    p.add_argument("--request-timeout", type=float, default=30.0)
    p.add_argument("--stop-file", default="")
    p.add_argument("--progress-file", default="")
    args = p.parse_args()
    print(json.dumps(asyncio.run(amain(args))), flush=True)


if __name__ == "__main__":
    main()
