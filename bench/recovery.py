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

  python bench/recovery.py [--count 20] [--notice 5] [--quick] [--json]
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
    args = ap.parse_args()
    if args.quick:
        args.count = 5
    r = asyncio.run(run(args))
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
    table = [
        {
            "metric": name,
            "n": len(xs),
            "median": statistics.median(xs) if xs else None,
            "p95": pct(xs, 0.95),
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
                    "raw": r,
                },
                indent=2,
            )
        )
        return
    print(
        f"\nspotd recovery benchmark: {args.count} preemptions of each kind, local provider, "
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
