"""Crash-safety suite: SIGKILL the daemon at random moments while jobs run and get preempted.

Runs a workload of managed jobs (the deterministic example trainer) and one service (three
stub replicas behind spotd's load balancer) under steady load from a separate process, then,
until every job is done or the kill budget is spent, repeatedly:

  - SIGKILLs the daemon at a random moment and restarts it at once;
  - preempts a random running job's instance (with a notice, without one, or SIGKILL of its
    process group), or SIGKILLs a random service replica.

At the end it checks what a user would notice and prints a verdict:

  1. every job SUCCEEDED with the digest of an uninterrupted run;
  2. no instance process is left that the store does not know (none at all once jobs are over);
  3. never two live attempts of one job (each attempt ended before the next was created);
  4. every daemon restart came back (socket answering) and adopted the running jobs;
  5. the service answered throughout: not one failed plain request (streams cut by a replica
     kill are counted and reported, since no proxy can save a stream whose server died).

  python chaos/crash_safety.py            # 20 jobs, 50 daemon kills
  python chaos/crash_safety.py --quick    # 6 jobs, 10 kills (what CI runs)

Exit status 0 only if every check passed. Everything runs on this machine and loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spotd.sdk.client_serve import serve_status, serve_up  # noqa: E402
from spotd.sdk.local import DaemonUnreachable  # noqa: E402
from tests.conftest import DaemonProc, kill_instance_groups  # noqa: E402
from tests.e2e.helpers import digest_of, expected_digest  # noqa: E402

TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}


def job_yaml(i: int, steps: int) -> str:
    return f"""
name: crash-{i}
resources: {{cpus: 1+, use_spot: true}}
workdir: {ROOT / "examples"}
envs: {{TRAIN_STEPS: {steps}, STEP_SECONDS: 0.05, CKPT_EVERY: 5}}
job_recovery: {{strategy: EAGER_NEXT_REGION, give_up_after: 10m}}
run: python3 train.py
"""


def live_instance_pids(home: Path) -> dict[str, int]:
    """Every live process that belongs to an instance: agents by their meta file, and any
    process (a job, an orphan) whose working directory is inside an instance's directory."""
    out = {}
    inst = str(home / "local" / "instances")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (cwd.startswith(inst) or (" (deleted)" in cwd and inst in cwd)):
            out[f"pid {proc.name} in {cwd}"] = int(proc.name)
    for meta in (home / "local" / "instances").glob("*/meta.json"):
        try:
            m = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(m["pid"], 0)
        except ProcessLookupError:
            continue
        out[m["key"]] = m["pid"]
    return out


async def run(args: argparse.Namespace) -> list[str]:
    rng = random.Random(args.seed)
    home = Path(f"/tmp/spotd-crash-{os.getpid()}")
    shutil.rmtree(home, ignore_errors=True)
    d = DaemonProc(home)
    d.start()
    failures: list[str] = []
    crashed = True  # until the run completes: keep the home for inspection on an exception
    # long enough that every kill lands while jobs run (a kill cycle takes ~1-2 s)
    n = int(args.kills * 1.6 / 0.05)
    steps = {i: rng.randrange(int(0.7 * n), int(1.1 * n)) for i in range(args.jobs)}
    kills = preempts = 0
    restart_times: list[float] = []
    try:
        load = None
        stop_file = home / "stop-load"
        async with d.client() as c:
            if args.service:
                yaml_text = (ROOT / "examples/serve_stub.yaml").read_text()
                await serve_up(c, yaml_text, filename="serve_stub.yaml", name="crash-svc")
                deadline = time.monotonic() + 120
                svc: dict = {}
                while time.monotonic() < deadline:
                    svc = await serve_status(c, "crash-svc")
                    if sum(r["status"] == "READY" for r in svc["replicas"]) >= 3:
                        break
                    await asyncio.sleep(0.5)
                else:
                    failures.append(f"service never had 3 READY replicas: {svc}")
                load = subprocess.Popen(
                    [
                        sys.executable,
                        str(ROOT / "tests/services/loadgen.py"),
                        svc["endpoint"],
                        "--concurrency",
                        "4",
                        "--stream-every",
                        "10",
                        "--max-requests",
                        "500000",
                        "--max-seconds",
                        str(args.max_seconds + args.finish_timeout),
                        "--stop-file",
                        str(stop_file),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
            ids = {}
            for i in range(args.jobs):
                ids[i] = (await c.launch(job_yaml(i, steps[i]), filename=f"crash-{i}.yaml"))["id"]
        t_end = time.monotonic() + args.max_seconds
        while kills < args.kills and time.monotonic() < t_end:
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            if args.service and rng.random() < 0.15:
                async with d.client() as c:
                    svc = await serve_status(c, "crash-svc")
                    ready = [r for r in svc["replicas"] if r["status"] == "READY"]
                    if len(ready) >= 3 and ready[0]["instance_id"]:
                        victim = rng.choice(ready)
                        await c.chaos("kill-instance", target=victim["instance_id"])
                        preempts += 1
            elif rng.random() < 0.5:
                async with d.client() as c:
                    running = [j for j in await c.jobs() if j["status"] == "RUNNING"]
                    if running:
                        j = rng.choice(running)
                        kind = rng.choice(["notice", "preempt", "kill"])
                        try:
                            if kind == "notice":
                                await c.chaos(
                                    "preempt",
                                    target=str(j["id"]),
                                    notice_seconds=rng.choice([2, 5]),
                                )
                            elif kind == "preempt":
                                await c.chaos("preempt", target=str(j["id"]))
                            else:
                                await c.chaos("kill-instance", target=str(j["id"]))
                            preempts += 1
                        except Exception as exc:  # noqa: BLE001 - the instance may be gone already
                            print(f"  (chaos on job {j['id']} skipped: {exc})", file=sys.stderr)
            await asyncio.sleep(rng.uniform(0.0, 0.8))
            d.kill9()
            kills += 1
            t0 = time.monotonic()
            d.start()
            restart_times.append(time.monotonic() - t0)
            try:
                async with d.client() as c:
                    done = sum(1 for j in await c.jobs() if j["status"] in TERMINAL)
            except DaemonUnreachable as exc:  # say what the daemon did, not only the client
                assert d.proc is not None
                raise RuntimeError(
                    f"the daemon restarted after kill {kills} does not answer ({exc}); its "
                    f"exit code: {d.proc.poll()}; its log:\n{d.log_tail(3000)}"
                ) from exc
            print(
                f"kill {kills:2d}: restarted in {restart_times[-1]:.2f}s; "
                f"{done}/{args.jobs} jobs done; {preempts} preemptions so far",
                file=sys.stderr,
            )
            if done == args.jobs:
                break
        async with d.client() as c:
            deadline = time.monotonic() + args.finish_timeout
            while time.monotonic() < deadline:
                jobs = await c.jobs()
                if all(j["status"] in TERMINAL for j in jobs):
                    break
                await asyncio.sleep(0.5)
            jobs = {j["id"]: j for j in await c.jobs()}
            for i, jid in ids.items():
                job = jobs[jid]
                if job["status"] != "SUCCEEDED":
                    failures.append(f"job {jid} ended {job['status']}: {job['message']}")
                    continue
                text = b"".join([x async for x in c.logs(jid)]).decode(errors="replace")
                if digest_of(text) != expected_digest(steps[i]):
                    failures.append(
                        f"job {jid}: wrong digest after {job['preemptions']} preemptions"
                    )
                atts = job["attempts"]
                for a, b in itertools.pairwise(atts):
                    if a["ended_at"] is None or a["ended_at"] > b["created_at"] + 1e-6:
                        failures.append(
                            f"job {jid}: attempts {a['attempt']} and {b['attempt']} "
                            "were live at the same time"
                        )
        if load is not None:
            stop_file.write_text("stop")
            out, _ = load.communicate(timeout=60)
            stats = json.loads(out)
            print(
                f"service under load: {stats['ok']} plain and {stats['stream_ok']} streamed "
                f"requests answered, {stats['failed']} plain failed, "
                f"{stats['stream_failed']} streams cut by replica kills"
            )
            if stats["failed"]:
                failures.append(f"{stats['failed']} plain requests failed: {stats['errors'][:5]}")
            if stats["ok"] == 0:
                failures.append("the service answered nothing")
            async with d.client() as c:
                await c.request("POST", "/v1/services/crash-svc/down")
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    if not live_instance_pids(home):
                        break
                    await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # let the reaper terminate the last attempts' instances
        left = live_instance_pids(home)
        if left:
            failures.append(f"instance processes left after every job ended: {sorted(left)}")
        total_preemptions = sum(j["preemptions"] for j in jobs.values())
        crashed = False
        print(
            f"\n{len(ids)} jobs, {kills} daemon SIGKILLs (restart median "
            f"{sorted(restart_times)[len(restart_times) // 2]:.2f}s), {preempts} chaos "
            f"injections, {total_preemptions} preemptions recovered"
        )
    finally:
        d.stop()
        kill_instance_groups(home)
        if not failures and not crashed:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"state kept for inspection in {home}", file=sys.stderr)
    return failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--finish-timeout", type=float, default=180.0)
    ap.add_argument("--quick", action="store_true", help="6 jobs, 10 kills")
    ap.add_argument(
        "--service",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run a service under load (default: yes)",
    )
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.kills = 6, 10
    failures = asyncio.run(run(args))
    if failures:
        print("FAIL:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print(
        "PASS: every job finished with its correct result; no leaked instance; "
        "no overlapping attempts"
    )


if __name__ == "__main__":
    main()
