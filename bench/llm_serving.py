"""LLM routing benchmark: round robin, least load and prefix-aware, on REAL vLLM CPU replicas.

Starts, as separate processes on loopback:

- two ``vllm.entrypoints.openai.api_server`` replicas (the vLLM tier's environment,
  ``scripts/vllm_env.sh``), each pinned to its own core, prefix caching on, serving a random
  Llama built by ``tests/vllm/tiny_model.py`` — larger than the test tier's (``--hidden``,
  ``--layers``; head size 64) so that a 1,000-token prefill costs something measurable;
- one ``python -m spotd.lb`` per policy, in turn, in front of both.

Workload: ``--prefixes`` system prompts of about ``--prefix-tokens`` tokens each (words of the
tiny tokenizer's training sentences, shuffled per prompt), each request one of them (uniform,
seeded) plus a short user question; chat completions, streamed, ``--max-tokens`` greedy
tokens; Poisson arrivals at ``--rps`` for ``--requests`` requests per policy — the same
arrival times and prompts for every policy. Routing wins only under cache pressure, so each
replica's KV cache (``--kv-mib``) holds about half of the prefixes: round robin sends every
prefix to both replicas and they evict each other; prefix-aware keeps each prefix on one.

Between policies each replica's prefix cache is emptied (``POST /reset_prefix_cache``, vLLM's
dev mode), so no policy inherits another's warm cache. Measured per policy: time to first
token (first content chunk) and end-to-end latency at the client, and the prefix-cache hit
rate from vLLM's own counters (``vllm:prefix_cache_hits_total`` /
``vllm:prefix_cache_queries_total``, deltas summed over both replicas). Round robin is the
reference; ``*_vs_round_robin`` are ratios to it. Everything shares this machine's cores (and
other work on it): read the ratios.

    python bench/llm_serving.py [--json] [--quick] [--rps R] [--requests N] ...

The text the tiny tokenizer makes of the prompts is measured first (``prompt_tokens``): the
prefix length reported is vLLM's count, not a guess.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
MODEL = "bench"
POLICIES = ("round_robin", "least_load", "prefix_aware")
# the tiny tokenizer's training words (tests/vllm/tiny_model.py): prompts of them tokenize
# compactly, like real text does
_TEXT = (
    "spotd runs AI workloads on spot capacity as if it were reliable. A managed job survives "
    "preemption: it is relaunched in another zone and resumes. A service keeps its replicas "
    "behind a load balancer that retries and drains. The quick brown fox jumps over the lazy "
    "dog, again and again. Hello! How are you today? I am a tiny model with random weights."
)
WORDS = tuple(_TEXT.split(" "))


def log(msg: str) -> None:
    print(f"[llm_serving] {msg}", file=sys.stderr, flush=True)


def free_low_port(used: set[int]) -> int:
    """A free port below the ephemeral range (each vLLM server opens a dozen above 32768)."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    while True:
        port = rng.randrange(20000, 32000)
        if port in used:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        used.add(port)
        return port


def http(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, grace: float = 15.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""


def start(
    name: str, cmd: list[str], env: dict[str, str], workdir: Path, cwd: Path | None = None
) -> Proc:
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as out:
        p = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd or workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own group: a stop takes the engine processes too
        )
    return Proc(name, p, log_path)


def wait_http(p: Proc, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.proc.poll() is not None:
            raise RuntimeError(f"{p.name} exited {p.proc.returncode}:\n{p.tail()}")
        if http("GET", url, timeout=2)[0] == 200:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{p.name} not ready after {timeout:.0f} s:\n{p.tail()}")


def vllm_python() -> str:
    given = os.environ.get("SPOTD_VLLM_PYTHON")
    if given:
        return given
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "vllm_env.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        raise SystemExit(f"scripts/vllm_env.sh failed:\n{r.stderr[-3000:]}")
    return r.stdout.strip().splitlines()[-1]


def vllm_env(core: int, python: str, workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    venv = Path(python).parent.parent
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CPU_OMP_THREADS_BIND=str(core),
        OMP_NUM_THREADS="1",
        VLLM_SERVER_DEV_MODE="1",  # POST /reset_prefix_cache between policies
        VLLM_CACHE_ROOT=str(venv / "vllm-cache"),
        HF_HOME=str(workdir / "hf-home"),
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def prefix_counters(url: str) -> tuple[float, float]:
    """(hits, queries) of vLLM's prefix cache, in tokens."""
    _, raw = http("GET", f"{url}/metrics")
    hits = queries = 0.0
    for line in raw.decode(errors="replace").splitlines():
        if line.startswith("vllm:prefix_cache_hits_total"):
            hits += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:prefix_cache_queries_total"):
            queries += float(line.rsplit(" ", 1)[1])
    return hits, queries


def system_prompts(n: int, words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        body = [rng.choice(WORDS) for _ in range(words)]
        out.append(f"System prompt {i}. " + " ".join(body))
    return out


@dataclass
class Req:
    at: float  # seconds after the start
    prefix: int
    question: str


def workload(n: int, rps: float, prefixes: int, seed: int) -> list[Req]:
    rng = random.Random(seed)
    t = 0.0
    out = []
    for i in range(n):
        t += rng.expovariate(rps)
        q = " ".join(rng.choice(WORDS) for _ in range(6))
        out.append(Req(at=t, prefix=rng.randrange(prefixes), question=f"User {i}: {q}?"))
    return out


@dataclass
class Row:
    policy: str
    rps: float  # offered (Poisson) request rate
    ttft_p50_ms: float
    ttft_p99_ms: float
    e2e_p50_ms: float
    prefix_hit_rate: float
    requests: int = 0
    failed: int = 0
    completed_rps: float = 0.0
    ttft_p50_vs_round_robin: float | None = None
    hit_rate_vs_round_robin: float | None = None
    per_replica: dict[str, int] = field(default_factory=dict)


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


async def one(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[float, float]:
    """(ttft, e2e) in seconds; raises on a failed request."""
    t0 = time.monotonic()
    ttft = None
    async with session.post(f"{url}/v1/chat/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:200]}")
        async for line in r.content:
            if (
                ttft is None
                and line.startswith(b"data: {")
                and b'"content":"' in line
                and b'"content":""' not in line  # the role chunk, or bytes held back
            ):
                ttft = time.monotonic() - t0
    e2e = time.monotonic() - t0
    return (ttft if ttft is not None else e2e), e2e


async def drive(url: str, reqs: list[Req], prompts: list[str], max_tokens: int) -> dict[str, Any]:
    ttfts: list[float] = []
    e2es: list[float] = []
    failures: list[str] = []
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        t0 = time.monotonic()

        async def run(rq: Req) -> None:
            await asyncio.sleep(max(0.0, t0 + rq.at - time.monotonic()))
            body = {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": prompts[rq.prefix]},
                    {"role": "user", "content": rq.question},
                ],
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
            }
            try:
                ttft, e2e = await one(s, url, body)
            except (aiohttp.ClientError, TimeoutError, RuntimeError) as e:
                failures.append(f"{type(e).__name__}: {e}")
                return
            ttfts.append(ttft)
            e2es.append(e2e)

        await asyncio.gather(*(run(r) for r in reqs))
        elapsed = time.monotonic() - t0
    return {"ttft": ttfts, "e2e": e2es, "failures": failures, "elapsed": elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--quick", action="store_true", help="small and short (development)")
    ap.add_argument("--rps", type=float, default=1.5, help="offered request rate (Poisson)")
    ap.add_argument("--requests", type=int, default=90, help="requests per policy")
    ap.add_argument("--prefixes", type=int, default=8)
    ap.add_argument(
        "--prefix-words", type=int, default=640, help="words per system prompt (~1.5 tokens each)"
    )
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument(
        "--kv-mib", type=int, default=0, help="KV cache per replica (0: about half the prefixes)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policies", default=",".join(POLICIES))
    args = ap.parse_args()
    if args.quick:
        args.requests = min(args.requests, 16)
        args.prefix_words = min(args.prefix_words, 150)
        args.hidden, args.layers = min(args.hidden, 256), min(args.layers, 2)

    python = vllm_python()
    workdir = Path(tempfile.mkdtemp(prefix="spotd-bench-llm-"))
    procs: list[Proc] = []
    try:
        model = workdir / "model"
        log(f"building a random Llama (hidden {args.hidden}, {args.layers} layers)")
        subprocess.run(
            [
                python,
                str(ROOT / "tests" / "vllm" / "tiny_model.py"),
                str(model),
                "--hidden",
                str(args.hidden),
                "--heads",
                str(max(1, args.hidden // 64)),
                "--layers",
                str(args.layers),
                "--max-positions",
                str(args.max_model_len),
            ],
            check=True,
            capture_output=True,
            env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
        )
        prompts = system_prompts(args.prefixes, args.prefix_words, args.seed)
        # The KV cache holds the cacheable part (whole 128-token blocks, vLLM's on CPU) of half
        # the prefixes, and 6 blocks for the requests running: the fleet can keep every prefix,
        # one replica only half. KV bytes per token: K and V, every layer, float32.
        per_token = 2 * args.layers * args.hidden * 4
        prefix_tokens = int(args.prefix_words * 1.33)  # (measured: 1.33 tokens a word)
        cacheable = (prefix_tokens // 128) * 128
        kv = args.kv_mib << 20 or per_token * max(
            args.max_model_len, max(1, args.prefixes // 2) * cacheable + 6 * 128
        )
        cores = sorted(os.sched_getaffinity(0)) or [0]
        used: set[int] = set()
        replicas: list[tuple[str, str]] = []
        for i in range(2):
            port = free_low_port(used)
            cmd = [
                python,
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                str(model),
                "--served-model-name",
                MODEL,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--max-model-len",
                str(args.max_model_len),
                "--dtype",
                "float32",
                "--enforce-eager",
                "--enable-prefix-caching",
                "--kv-cache-memory-bytes",
                str(kv),
                "--seed",
                "0",
            ]
            env = vllm_env(cores[i % len(cores)], python, workdir)
            procs.append(start(f"vllm-{i}", cmd, env, workdir))
            replicas.append((f"vllm-{i}", f"http://127.0.0.1:{port}"))
        log(f"starting two vLLM replicas (KV cache {kv >> 20} MiB each)")
        for p, (_, url) in zip(procs, replicas, strict=True):
            wait_http(p, f"{url}/health", 300)
        # how long the prefixes really are, in the model's tokens
        status, raw = http(
            "POST",
            f"{replicas[0][1]}/v1/chat/completions",
            {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": prompts[0]},
                    {"role": "user", "content": "hi"},
                ],
                "max_tokens": 1,
            },
            timeout=120,
        )
        prompt_tokens = json.loads(raw)["usage"]["prompt_tokens"] if status == 200 else -1
        log(f"a request's prompt is {prompt_tokens} tokens (system prompt + question)")
        reqs = workload(args.requests, args.rps, args.prefixes, args.seed)
        rows: list[Row] = []
        for policy in [p for p in args.policies.split(",") if p]:
            for _, url in replicas:  # every policy starts cold
                http("POST", f"{url}/reset_prefix_cache")
            lb_port, c_port = free_low_port(used), free_low_port(used)
            lb_cmd = [
                sys.executable,
                "-m",
                "spotd.lb",
                "--port",
                str(lb_port),
                "--control-port",
                str(c_port),
                "--policy",
                policy,
                "--lb-id",
                f"bench-{policy}",
            ]
            for rid, url in replicas:
                lb_cmd += ["--replica", f"{rid}={url}"]
            lb = start(f"lb-{policy}", lb_cmd, dict(os.environ), workdir, cwd=ROOT)
            procs.append(lb)
            try:
                wait_http(lb, f"http://127.0.0.1:{c_port}/-/health", 30)
                before = [prefix_counters(u) for _, u in replicas]
                log(f"{policy}: {len(reqs)} requests at {args.rps:g}/s")
                got = asyncio.run(
                    drive(f"http://127.0.0.1:{lb_port}", reqs, prompts, args.max_tokens)
                )
                after = [prefix_counters(u) for _, u in replicas]
                _, raw = http("GET", f"http://127.0.0.1:{c_port}/-/replicas")
                per = {r["id"]: r["requests"] for r in json.loads(raw)["replicas"]}
            finally:
                lb.stop(5)
                procs.remove(lb)
            hits = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
            queries = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
            rows.append(
                Row(
                    policy=policy,
                    rps=args.rps,
                    ttft_p50_ms=round(pct(got["ttft"], 0.5) * 1000, 1),
                    ttft_p99_ms=round(pct(got["ttft"], 0.99) * 1000, 1),
                    e2e_p50_ms=round(pct(got["e2e"], 0.5) * 1000, 1),
                    prefix_hit_rate=round(hits / queries, 3) if queries else 0.0,
                    requests=len(got["ttft"]),
                    failed=len(got["failures"]),
                    completed_rps=round(len(got["ttft"]) / got["elapsed"], 2),
                    per_replica=per,
                )
            )
            if got["failures"]:
                log(f"{policy}: failures: {got['failures'][:3]}")
        ref = next((r for r in rows if r.policy == "round_robin"), None)
        if ref is not None:
            for r in rows:
                if ref.ttft_p50_ms:
                    r.ttft_p50_vs_round_robin = round(r.ttft_p50_ms / ref.ttft_p50_ms, 2)
                if ref.prefix_hit_rate:
                    r.hit_rate_vs_round_robin = round(r.prefix_hit_rate / ref.prefix_hit_rate, 2)
        meta = {
            "prompt_tokens": prompt_tokens,
            "prefixes": args.prefixes,
            "kv_cache_mib": kv >> 20,
            "model": f"random Llama, hidden {args.hidden}, {args.layers} layers, float32",
            "max_tokens": args.max_tokens,
            "requests_per_policy": args.requests,
        }
        if args.json:
            print(json.dumps([asdict(r) for r in rows], indent=2))
            log(json.dumps(meta))
        else:
            print(json.dumps(meta))
            print(
                f"{'policy':<14}{'rps':>6}{'ttft p50':>10}{'ttft p99':>10}{'e2e p50':>10}"
                f"{'hit rate':>10}{'ok':>5}"
            )
            for r in rows:
                print(
                    f"{r.policy:<14}{r.rps:>6g}{r.ttft_p50_ms:>10.0f}{r.ttft_p99_ms:>10.0f}"
                    f"{r.e2e_p50_ms:>10.0f}{r.prefix_hit_rate:>10.2f}{r.requests:>5}"
                )
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
