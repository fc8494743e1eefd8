"""Autoscaling benchmark (a simulation): long generations at modest QPS, QPS targets against
queue and KV-cache targets. Time until the queue wait is back under target after a burst.

This is a simulation, not a load test: the real decision function (``spotd.serve.autoscaler
.autoscale``, with the daemon's own inputs) drives a queueing model of LLM replicas, one
second of control loop at a time, so hours of traffic and many seeds run in seconds and the
answer does not depend on this machine's load. ``tests/services/test_autoscale_signals.py``
shows the same effect end to end with a real daemon, LB and stub replicas.

The model:

- arrivals: Poisson, ``--base-rps`` for ``--warmup`` seconds, ``--burst-rps`` for
  ``--burst`` seconds, then ``--base-rps`` again until ``--tail`` seconds after the burst;
- each request generates a log-normal number of tokens (mean ``--tokens``, sigma 0.6) at
  ``--tok-per-s`` per sequence: a long generation occupies a batch slot for tokens/speed;
- a replica runs up to ``--slots`` requests at once (continuous batching, vLLM's
  ``max_num_seqs``), the others wait in its FIFO queue; the LB sends each request to the READY
  replica with the fewest requests (least load), or holds it while no replica is READY (the
  ``queue-lb-holds`` row: also while every replica's batch is full, so no request waits in a
  replica's own queue);
- a new replica is READY ``--cold-start`` seconds after the target asks for it; a removed one
  takes no new requests and finishes what it holds (drain);
- the daemon's loop runs every second: QPS over a 60 s window counted as spotd's LB counts
  it (a request is counted when it arrives, as SkyServe's LB counts), vLLM's
  running/waiting gauges and KV-cache usage (running / slots) summed over READY replicas,
  the LB's queue added as waiting.

Policies (one run each per seed, same arrivals): ``qps`` (``target_qps_per_replica`` only,
counted at arrival, as spotd's and SkyServe's LBs do: the most QPS scaling can see),
``qps-at-answer`` (the same target counted when answered, as spotd's LB counted before: a
burst of long generations shows as demand only when its answers come), ``qps-tuned`` (a QPS
target of 80 % of what a replica serves for this very workload, which only someone who knows
the generation lengths can set), ``queue`` (the first QPS target
plus ``target_queue_per_replica``), ``kv`` (plus ``target_kv_cache_usage``),
``queue-lb-holds`` (``queue`` with a load balancer that holds requests while every batch is
full: what an LB-side queue would add), and the reference measured in the same run:
``fixed-max`` (``max_replicas`` from the start).

Per policy, medians over seeds: the time from the burst's start until the queue wait (the
oldest waiting request's age, over every replica and the LB) is back under ``--wait-target``
after it first went over, and stays under for ``--settle`` seconds (``null`` when that is not
within the run: the backlog was still draining at its end; ``recovered`` counts the seeds
that did; a seed that did not counts as +inf in the median), p50/p99 of the waits of
requests that arrived during the burst, the most replicas, and replica-hours (cost).

  python bench/autoscale.py [--seeds 10] [--json] [--quick]
"""

from __future__ import annotations

import argparse
import collections
import heapq
import json
import math
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spotd.serve.autoscaler import (  # noqa: E402 - after the path is set
    AutoscalePolicy,
    AutoscaleState,
    ReplicaLoad,
    RequestWindow,
    autoscale,
)

DT = 0.1  # seconds per simulation step
WINDOW = 60  # the autoscaler's QPS window (SkyServe's, spotd's default)


@dataclass
class Replica:
    ready_at: float
    slots: int
    running: list[float] = field(default_factory=list)  # heap of finish times
    waiting: collections.deque[tuple[float, float]] = field(default_factory=collections.deque)
    draining: bool = False

    def load(self) -> int:
        return len(self.running) + len(self.waiting)


@dataclass(frozen=True)
class Workload:
    base_rps: float
    burst_rps: float
    warmup: float
    burst: float
    tail: float
    tokens: float
    tok_per_s: float

    @property
    def horizon(self) -> float:
        return self.warmup + self.burst + self.tail


def arrivals(w: Workload, rng: random.Random) -> list[tuple[float, float]]:
    """(arrival time, service seconds), Poisson with the burst's rate in the middle."""
    out: list[tuple[float, float]] = []
    t = 0.0
    mu = math.log(w.tokens) - 0.6**2 / 2  # log-normal with mean ``tokens``
    while True:
        in_burst = w.warmup <= t < w.warmup + w.burst
        t += rng.expovariate(w.burst_rps if in_burst else w.base_rps)
        if t >= w.horizon:
            return out
        tokens = max(1.0, rng.lognormvariate(mu, 0.6))
        out.append((t, tokens / w.tok_per_s))


@dataclass
class Outcome:
    recovery_s: float | None  # None: still over the wait target at the end of the run
    waits: list[float]
    max_replicas: int
    replica_hours: float


def simulate(
    w: Workload,
    reqs: list[tuple[float, float]],
    policy: AutoscalePolicy,
    *,
    slots: int,
    cold_start: float,
    wait_target: float,
    settle: float,
    count_at_arrival: bool = True,
    fixed: int | None = None,
    lb_holds: bool = False,
) -> Outcome:
    replicas: list[Replica] = [Replica(ready_at=0.0, slots=slots) for _ in range(fixed or 1)]
    state = AutoscaleState(target=len(replicas))
    lb_queue: collections.deque[tuple[float, float]] = collections.deque()
    counted: collections.deque[float] = collections.deque()  # answered (or arrived) times
    waits: list[float] = []
    over_at: float | None = None  # when the wait first went over target after the burst began
    under_since: float | None = None
    recovered_at: float | None = None  # back under target, and stayed there ``settle`` seconds
    burst_start, burst_end = w.warmup, w.warmup + w.burst
    cost = 0.0
    top = len(replicas)
    i, steps = 0, int(w.horizon / DT)
    for step in range(steps + 1):
        now = step * DT
        ready = [r for r in replicas if r.ready_at <= now and not r.draining]
        # arrivals, routed to the least-loaded READY replica (held by the LB while none is)
        while i < len(reqs) and reqs[i][0] <= now:
            if count_at_arrival:
                counted.append(reqs[i][0])
            lb_queue.append(reqs[i])
            i += 1
        while lb_queue and ready:
            best = min(ready, key=Replica.load)
            if lb_holds and best.load() >= best.slots:
                break  # every replica's batch is full: the request waits at the LB
            best.waiting.append(lb_queue.popleft())
        # each replica: finished sequences leave, waiting ones take the free slots
        for r in replicas:
            if r.ready_at > now:
                continue
            while r.running and r.running[0] <= now:
                heapq.heappop(r.running)
                if not count_at_arrival:
                    counted.append(now)
            while r.waiting and len(r.running) < r.slots:
                t0, service = r.waiting.popleft()
                if burst_start <= t0 < burst_end:
                    waits.append(now - t0)
                heapq.heappush(r.running, now + service)
        replicas = [r for r in replicas if not (r.draining and not r.load())]
        oldest = min(
            [t0 for r in replicas for t0, _ in list(r.waiting)[:1]]
            + [t0 for t0, _ in list(lb_queue)[:1]],
            default=now,
        )
        if now >= burst_start:
            if now - oldest > wait_target:
                over_at = over_at if over_at is not None else now
                under_since = None
            elif over_at is not None and recovered_at is None:
                under_since = under_since if under_since is not None else now
                if now - under_since >= settle:
                    recovered_at = under_since
        cost += len(replicas) * DT
        if fixed is not None or step % round(1 / DT):
            continue
        # the daemon's control loop, once a second
        while counted and counted[0] <= now - WINDOW:
            counted.popleft()
        per_second = collections.Counter(math.floor(t) + 1.0 for t in counted)
        buckets = [*per_second.items()]
        if lb_queue:
            buckets.append((now, len(lb_queue)))
        window = RequestWindow(tuple(buckets), window_seconds=WINDOW)
        load = ReplicaLoad(
            replicas=len(ready),
            running=sum(len(r.running) for r in ready),
            waiting=sum(len(r.waiting) for r in ready) + len(lb_queue),
            kv_cache_usage=sum(len(r.running) / r.slots for r in ready),
        )
        target, state = autoscale(window, policy, state, now, load)
        live = [r for r in replicas if not r.draining]
        for _ in range(target - len(live)):
            replicas.append(Replica(ready_at=now + cold_start, slots=slots))
        if target < len(live):
            # remove the ones still starting first, then the least loaded
            live.sort(key=lambda r: (r.ready_at <= now, r.load()))
            for r in live[: len(live) - target]:
                r.draining = True
        top = max(top, target)
    if over_at is None:  # never over target: nothing to recover from
        recovered_at = burst_start
    return Outcome(
        recovery_s=None if recovered_at is None else round(recovered_at - burst_start, 1),
        waits=waits,
        max_replicas=top,
        replica_hours=cost / 3600,
    )


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="3 seeds (development)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--base-rps", type=float, default=0.2)
    p.add_argument("--burst-rps", type=float, default=1.2)
    p.add_argument("--warmup", type=float, default=300.0)
    p.add_argument("--burst", type=float, default=600.0)
    p.add_argument("--tail", type=float, default=900.0)
    p.add_argument("--tokens", type=float, default=500.0, help="mean generated tokens")
    p.add_argument("--tok-per-s", type=float, default=25.0, help="decode speed per sequence")
    p.add_argument("--slots", type=int, default=8, help="max_num_seqs per replica")
    p.add_argument("--cold-start", type=float, default=90.0, help="launch to READY, seconds")
    p.add_argument("--wait-target", type=float, default=5.0, help="queue wait target, seconds")
    p.add_argument("--settle", type=float, default=60.0, help="under target this long: back")
    p.add_argument("--max-replicas", type=int, default=8)
    p.add_argument("--target-qps", type=float, default=1.0)
    p.add_argument("--target-queue", type=float, default=2.0)
    p.add_argument("--target-kv", type=float, default=0.8)
    p.add_argument("--upscale-delay", type=float, default=30.0)
    p.add_argument("--downscale-delay", type=float, default=300.0)
    a = p.parse_args(argv)
    seeds = 3 if a.quick else a.seeds
    w = Workload(a.base_rps, a.burst_rps, a.warmup, a.burst, a.tail, a.tokens, a.tok_per_s)

    def policy(**targets: float) -> AutoscalePolicy:
        return AutoscalePolicy(
            min_replicas=1,
            max_replicas=a.max_replicas,
            upscale_delay_seconds=a.upscale_delay,
            downscale_delay_seconds=a.downscale_delay,
            **{"target_qps_per_replica": a.target_qps, **targets},
        )

    # what a user who knows the generation lengths would set: 80 % of a replica's rate
    tuned = round(0.8 * a.slots / (a.tokens / a.tok_per_s), 3)
    policies: dict[str, tuple[AutoscalePolicy, dict[str, Any]]] = {
        "qps": (policy(), {}),
        "qps-at-answer": (policy(), {"count_at_arrival": False}),
        "qps-tuned": (policy(target_qps_per_replica=tuned), {}),
        "queue": (policy(target_queue_per_replica=a.target_queue), {}),
        "kv": (policy(target_kv_cache_usage=a.target_kv), {}),
        # not spotd's LB today: one that holds requests while every replica's batch is full
        "queue-lb-holds": (policy(target_queue_per_replica=a.target_queue), {"lb_holds": True}),
        "fixed-max": (policy(), {"fixed": a.max_replicas}),
    }
    rows = []
    for name, (policy, extra) in policies.items():
        outs = []
        for seed in range(seeds):
            reqs = arrivals(w, random.Random(seed))
            outs.append(
                simulate(
                    w,
                    reqs,
                    policy,
                    slots=a.slots,
                    cold_start=a.cold_start,
                    wait_target=a.wait_target,
                    settle=a.settle,
                    **extra,
                )
            )
        times = [o.recovery_s for o in outs]
        done = [t for t in times if t is not None]
        rows.append(
            {
                "policy": name,
                "seeds": seeds,
                "recovered": len(done),
                # a seed that never recovered counts as +inf: the median is null when half did not
                "recovery_s_p50": _median_or_none(times),
                "recovery_s_max": max(done) if len(done) == seeds else None,
                "burst_wait_p50_s": round(statistics.median(pct(o.waits, 0.5) for o in outs), 1),
                "burst_wait_p99_s": round(statistics.median(pct(o.waits, 0.99) for o in outs), 1),
                "max_replicas_p50": statistics.median(o.max_replicas for o in outs),
                "replica_hours_p50": round(statistics.median(o.replica_hours for o in outs), 2),
            }
        )
    params = {
        k: getattr(a, k)
        for k in (
            "base_rps",
            "burst_rps",
            "warmup",
            "burst",
            "tail",
            "tokens",
            "tok_per_s",
            "slots",
            "cold_start",
            "wait_target",
            "settle",
            "max_replicas",
            "target_qps",
            "target_queue",
            "target_kv",
            "upscale_delay",
            "downscale_delay",
        )
    }
    if a.json:
        print(json.dumps({"kind": "simulation", "params": params, "rows": rows}, indent=2))
        return
    per_replica = a.slots / (a.tokens / a.tok_per_s)
    print(
        f"simulation, {seeds} seeds: {a.base_rps} → {a.burst_rps} requests/s for {a.burst:g} s, "
        f"~{a.tokens:g} tokens at {a.tok_per_s:g} tok/s, {a.slots} slots "
        f"(~{per_replica:.2f} requests/s per replica), cold start {a.cold_start:g} s, "
        f"wait target {a.wait_target:g} s"
    )
    cols = list(rows[0])
    print("  ".join(f"{c:>17}" if c != "policy" else f"{c:<13}" for c in cols))
    for r in rows:
        print("  ".join(f"{_fmt(r[c]):>17}" if c != "policy" else f"{r[c]:<13}" for c in cols))


def _median_or_none(times: list[float | None]) -> float | None:
    vals = sorted(math.inf if t is None else t for t in times)
    m = statistics.median(vals)
    return None if math.isinf(m) else round(m, 1)


def _fmt(v: object) -> str:
    return "never" if v is None else str(v)


if __name__ == "__main__":
    main()
