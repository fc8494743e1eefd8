"""A bounded load generator, run as its own process by the replica-kill test.

    python tests/vllm/load.py --url http://127.0.0.1:PORT --model tiny \
        [--requests 300] [--seconds 60] [--concurrency 8] [--max-tokens 16]

Sends plain (non-streaming) ``/v1/completions`` requests with ``concurrency`` workers until
``requests`` have been sent or ``seconds`` have passed, whichever comes first. Prints
``progress N`` (N answered so far) every few answers, then one ``result {json}`` line:
sent, ok, failed, the first failures, tokens (summed from each answer's ``usage``) and
latency percentiles. Exit status 0 whatever the failures: the test judges them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp


async def run(args: argparse.Namespace) -> dict[str, object]:
    sent = ok = 0
    failures: list[str] = []
    prompt_tokens = completion_tokens = 0
    latencies: list[float] = []
    t0 = time.monotonic()
    deadline = t0 + args.seconds

    def report() -> None:
        answered = ok + len(failures)
        if answered % args.progress_every == 0:
            print(f"progress {answered}", flush=True)

    async def worker(session: aiohttp.ClientSession, w: int) -> None:
        nonlocal sent, ok, prompt_tokens, completion_tokens
        while sent < args.requests and time.monotonic() < deadline:
            i = sent
            sent += 1
            body = {
                "model": args.model,
                "prompt": f"request {i} from worker {w}:",
                "max_tokens": args.max_tokens,
                "temperature": 0,
                "ignore_eos": True,
            }
            t = time.monotonic()
            try:
                async with session.post(f"{args.url}/v1/completions", json=body) as r:
                    text = await r.text()
                    if r.status != 200:
                        failures.append(f"HTTP {r.status}: {text[:300]}")
                    else:
                        usage = json.loads(text)["usage"]
                        if usage["completion_tokens"] != args.max_tokens:
                            failures.append(f"short answer: {usage}")
                        else:
                            ok += 1
                            prompt_tokens += usage["prompt_tokens"]
                            completion_tokens += usage["completion_tokens"]
                            latencies.append(time.monotonic() - t)
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as e:
                failures.append(f"{type(e).__name__}: {e}")
            report()

    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=args.concurrency)
    ) as session:
        await asyncio.gather(*(worker(session, w) for w in range(args.concurrency)))
    elapsed = time.monotonic() - t0
    latencies.sort()

    def pct(p: float) -> float | None:
        return (
            round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 4)
            if latencies
            else None
        )

    return {
        "sent": sent,
        "ok": ok,
        "failed": len(failures),
        "failures": failures[:20],
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(ok / elapsed, 2) if elapsed else 0,
        "completion_tokens_per_s": round(completion_tokens / elapsed, 1) if elapsed else 0,
        "p50_s": pct(0.5),
        "p99_s": pct(0.99),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--request-timeout", type=float, default=60.0)
    p.add_argument("--progress-every", type=int, default=5)
    args = p.parse_args()
    result = asyncio.run(run(args))
    print("result " + json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
