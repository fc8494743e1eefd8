"""Recovery benchmark: how fast a managed job notices a preemption and runs again.

Starts a real daemon (its own SPOTD_HOME, the embedded local provider), runs one long job and
preempts it COUNT times of each kind:

  kill    the instance's whole process group is SIGKILLed (no notice)
  notice  a spot notice of NOTICE seconds, then the machine is reclaimed

and measures, per preemption:

  (a) kill -> detected      the attempt is marked ended by the daemon
  (b) kill -> running       the job's next attempt has its run command going
  (c) notice -> running     the replacement is running (and whether before the deadline)
  (d) work lost (steps)     steps executed by the old attempt that the new one must redo

The reference measured in the same run is a fresh launch of the same job (submit -> running):
a recovery cannot be faster than a cold start, so (b) over that ratio is what detection and
re-placement cost. ``--json`` prints the raw numbers.
Targets on the local provider: (a) <= 1 s median, (b) <= 3 s median, (c) before the deadline,
(d) at most one checkpoint interval.

The multi-node rows (``--multinode N``, 0 skips them): a 4-node job, one node SIGKILLed N
times; per loss the instances launched and kill -> running again (every node running its
command), with partial recovery (only the lost node is replaced) against the reference
measured in the same run: a second daemon with ``SPOTD_NODE_REPLACEMENTS=0``, which
relaunches every node as spotd did before.

  python bench/recovery.py [--count 20] [--notice 5] [--multinode 5] [--multinode-only]
                           [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import DaemonProc, kill_instance_groups  # noqa: E402

STEP_SECONDS = 0.05
CKPT_EVERY = 10  # a checkpoint every 0.5 s


def job_yaml(steps: int) -> str:
    return f"""
name: bench-recovery
resources: {{cpus: 1+, use_spot: true}}
workdir: {ROOT / "examples"}
envs: {{TRAIN_STEPS: {steps}, STEP_SECONDS: {STEP_SECONDS}, CKPT_EVERY: {CKPT_EVERY},
        VERBOSE_STEPS: "1"}}
run: python3 train.py
"""


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def attempt_log(c, jid: int, n: int) -> str:
    return b"".join([x async for x in c.logs(jid, attempt=n)]).decode(errors="replace")


async def wait(c, jid: int, pred, timeout: float = 60.0, poll: float = 0.01) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await c.job(jid)
        if pred(job):
            return job
        await asyncio.sleep(poll)
    raise RuntimeError(f"timeout; job {jid} is {job['status']}")


async def wait_progress(c, jid: int, n: int, steps: int) -> None:
    """Wait until attempt n has executed ``steps`` steps past where it started."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = await attempt_log(c, jid, n)
        start = re.search(r"resumed from step (\d+)", text)
        base = int(start.group(1)) if start else 0
        done = [int(m) for m in re.findall(r"^at step (\d+)", text, re.M)]
        if done and max(done) - base >= steps:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("no progress")


MULTINODE = 4
MODES = ("partial", "full")  # partial recovery, and every node relaunched (the reference)


def gang_yaml(steps: int) -> str:
    return f"""
name: bench-multinode
num_nodes: {MULTINODE}
resources: {{cpus: 1+, use_spot: true}}
workdir: {ROOT / "examples"}
envs: {{TRAIN_STEPS: {steps}, STEP_SECONDS: {STEP_SECONDS}, CKPT_EVERY: {CKPT_EVERY}}}
run: python3 train.py
"""


async def launches(c) -> int:
    """Instances the daemon asked its providers for so far (its Prometheus counter)."""
    text = await c.request("GET", "/metrics")
    m = re.search(r'spotd_provider_calls_total\{call="launch",provider="local"\} (\S+)', text)
    return int(float(m.group(1))) if m else 0


def live_node_key(home: Path, jid: int, rank: int) -> str:
    """The key of the job's live instance of ``rank`` (a replacement's is ``...-n2-g1``)."""
    pattern = re.compile(rf"^local-(j{jid}-a\d+-n{rank}(?:-g\d+)?)$")
    found = (pattern.match(d.name) for d in (home / "local" / "instances").iterdir())
    keys = [m.group(1) for m in found if m]
    return max(keys, key=lambda k: (int(k.split("-a")[1].split("-")[0]), len(k), k))


async def run_multinode(args: argparse.Namespace, mode: str) -> dict[str, list[float]]:
    """A 4-node job, one node SIGKILLed ``args.multinode`` times: instances launched and
    kill -> running again, with partial recovery (``mode`` "partial") or without ("full":
    ``SPOTD_NODE_REPLACEMENTS=0``, every node relaunched, the reference)."""
    home = Path(f"/tmp/spotd-bench-mn-{mode}-{os.getpid()}")
    shutil.rmtree(home, ignore_errors=True)
    limit = "0" if mode == "full" else str(args.multinode + 1)
    d = DaemonProc(home, extra_env={"SPOTD_NODE_REPLACEMENTS": limit})
    d.start()
    out: dict[str, list[float]] = {"running": [], "launched": []}
    try:
        async with d.client() as c:
            job = await c.launch(gang_yaml(100_000), filename="bench.yaml")
            jid = job["id"]
            job = await wait(c, jid, lambda j: j["status"] == "RUNNING")
            for i in range(args.multinode):
                await asyncio.sleep(1.0)  # let the run make some progress
                rank = 1 + i % (MULTINODE - 1)
                before, recoveries = await launches(c), job["recoveries"]
                t0 = time.time()
                await c.chaos("kill-instance", target=live_node_key(home, jid, rank))
                job = await wait(
                    c,
                    jid,
                    lambda j, r=recoveries: j["recoveries"] > r and j["status"] == "RUNNING",
                )
                running = time.time() - t0
                launched = await launches(c) - before
                out["running"].append(running)
                out["launched"].append(float(launched))
                print(
                    f"  {mode:7s} #{i + 1:2d}: node {rank} killed; running again {running:5.2f}s,"
                    f" {launched} instance(s) launched",
                    file=sys.stderr,
                )
            await c.cancel(jid)
    finally:
        d.stop()
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)
    return out


async def run(args: argparse.Namespace) -> dict:
    home = Path(f"/tmp/spotd-bench-{os.getpid()}")
    shutil.rmtree(home, ignore_errors=True)
    rng = random.Random(args.seed)
    d = DaemonProc(home)
    d.start()
    results: dict[str, list[float]] = {
        k: []
        for k in (
            "kill_detect",
            "kill_running",
            "notice_running",
            "notice_margin",
            "lost_steps_kill",
            "lost_steps_notice",
            "fresh_launch",
        )
    }
    try:
        async with d.client() as c:
            kinds = ["kill"] * args.count + ["notice"] * args.count
            if args.multinode_only:
                return results
            steps = 100_000
            for _ in range(3):  # reference: fresh launches, submit -> running
                t0 = time.time()
                ref = await c.launch(job_yaml(steps), filename="bench.yaml")
                await wait(c, ref["id"], lambda j: j["status"] == "RUNNING")
                results["fresh_launch"].append(time.time() - t0)
                await c.cancel(ref["id"])
                await wait(c, ref["id"], lambda j: j["status"] == "CANCELLED")
            job = await c.launch(job_yaml(steps), filename="bench.yaml")
            jid = job["id"]
            await wait(c, jid, lambda j: j["status"] == "RUNNING")
            for i, kind in enumerate(kinds):
                n = i + 1
                # preempt at a random point of the checkpoint cycle
                await wait_progress(c, jid, n, 12 + rng.randrange(CKPT_EVERY))
                t0 = time.time()
                if kind == "kill":
                    await c.chaos("kill-instance", target=str(jid))
                else:
                    await c.chaos("preempt", target=str(jid), notice_seconds=args.notice)
                job = await wait(
                    c, jid, lambda j, n=n: j["attempts"][n - 1]["ended_at"] is not None
                )
                detected = job["attempts"][n - 1]["ended_at"] - t0
                job = await wait(
                    c, jid, lambda j, n=n: len(j["attempts"]) > n and j["status"] == "RUNNING"
                )
                running = time.time() - t0
                if kind == "kill":
                    results["kill_detect"].append(detected)
                    results["kill_running"].append(running)
                else:
                    results["notice_running"].append(running)
                    results["notice_margin"].append(args.notice - running)
                new_n = len(job["attempts"])
                old = await attempt_log(c, jid, n)
                executed = [int(m) for m in re.findall(r"^at step (\d+)", old, re.M)]
                new = ""
                for _ in range(200):
                    new = await attempt_log(c, jid, new_n)
                    if "resumed from step" in new or "starting at step" in new:
                        break
                    await asyncio.sleep(0.02)
                m = re.search(r"resumed from step (\d+)", new)
                resumed = int(m.group(1)) if m else 0
                lost = max(0, (max(executed) if executed else 0) - resumed)
                results[f"lost_steps_{kind}"].append(float(lost))
                print(
                    f"  {kind:6s} #{n:2d}: detected {detected:5.2f}s  running {running:5.2f}s"
                    f"  lost {lost} steps",
                    file=sys.stderr,
                )
            await c.cancel(jid)
    finally:
        d.stop()
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=20, help="preemptions of each kind")
    ap.add_argument("--notice", type=float, default=5.0, help="notice length in seconds")
    ap.add_argument("--quick", action="store_true", help="5 of each kind")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--multinode", type=int, default=5, help="node losses of the 4-node job")
    ap.add_argument("--multinode-only", action="store_true", help="only the multi-node rows")
    args = ap.parse_args()
    if args.quick:
        args.count, args.multinode = 5, 2
    r = asyncio.run(run(args))
    multi = {m: asyncio.run(run_multinode(args, m)) if args.multinode else {} for m in MODES}
    rows = [
        ("reference: fresh launch -> running (s)", r["fresh_launch"], "(cold start)"),
        ("(a) kill -> detected (s)", r["kill_detect"], "<= 1 s median"),
        ("(b) kill -> running again (s)", r["kill_running"], "<= 3 s median"),
        (
            "(c) notice -> replacement running (s)",
            r["notice_running"],
            f"< notice ({args.notice:g} s)",
        ),
        ("(d) work lost, kill (steps)", r["lost_steps_kill"], f"<= {CKPT_EVERY} (1 ckpt)"),
        ("(d) work lost, notice (steps)", r["lost_steps_notice"], f"<= {CKPT_EVERY} (1 ckpt)"),
    ]
    if args.multinode:
        rows += [
            (
                f"(e) {MULTINODE}-node, kill 1 -> running, partial (s)",
                multi["partial"]["running"],
                "< full relaunch",
            ),
            (
                f"(e) {MULTINODE}-node, kill 1 -> running, full (s)",
                multi["full"]["running"],
                "(reference)",
            ),
            (
                f"(e) {MULTINODE}-node, instances launched, partial",
                multi["partial"]["launched"],
                "1",
            ),
            (
                f"(e) {MULTINODE}-node, instances launched, full",
                multi["full"]["launched"],
                f"{MULTINODE} (reference)",
            ),
        ]
    if args.multinode_only:
        rows = rows[-4:]
    table = [
        {
            "metric": name,
            "n": len(xs),
            "median": statistics.median(xs) if xs else None,
            "p95": pct(xs, 0.95),
            "p99": pct(xs, 0.99),
            "max": max(xs) if xs else None,
            "target": target,
        }
        for name, xs, target in rows
    ]
    before = sum(1 for m in r["notice_margin"] if m > 0)
    if args.json:
        print(
            json.dumps(
                {
                    "rows": table,
                    "notice_replaced_before_deadline": before,
                    "notice_count": len(r["notice_margin"]),
                    "multinode": {"nodes": MULTINODE, "losses": args.multinode, **multi},
                    "raw": r,
                },
                indent=2,
            )
        )
        return
    print(
        f"\nspotd recovery benchmark: {0 if args.multinode_only else args.count} preemptions of "
        f"each kind, {args.multinode} node losses of a {MULTINODE}-node job, local provider, "
        f"step {STEP_SECONDS}s, checkpoint every {CKPT_EVERY} steps\n"
    )
    print(f"| {'metric':40s} | {'n':>3s} | {'median':>7s} | {'p95':>7s} | {'max':>7s} | target |")
    print(f"|{'-' * 42}|{'-' * 5}|{'-' * 9}|{'-' * 9}|{'-' * 9}|--------|")
    for t in table:
        print(
            f"| {t['metric']:40s} | {t['n']:3d} | {t['median']:7.2f} | {t['p95']:7.2f} | "
            f"{t['max']:7.2f} | {t['target']} |"
        )
    print(f"\nreplacement running before the notice deadline: {before}/{len(r['notice_margin'])}")


if __name__ == "__main__":
    main()
