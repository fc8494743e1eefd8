"""`make run`: the main job on the embedded default, surviving two preemptions.

Starts a daemon with its own data directory (.spotd-demo), launches examples/train.yaml as a
managed job, preempts it once with a notice and once without (the way a spot market does),
follows it to the end, checks its digest against an uninterrupted run, and prints the job
table and its event log. Every user-visible step is the real `spotctl` command, echoed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOME = ROOT / ".spotd-demo"
ENV = dict(os.environ, SPOTD_HOME=str(HOME))
SPOTCTL = [sys.executable, "-m", "spotd.cli"]


def say(msg: str) -> None:
    print(f"\n\033[1;36m==> {msg}\033[0m", flush=True)


def spotctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    print(f"$ spotctl {' '.join(args)}", flush=True)
    return subprocess.run([*SPOTCTL, *args], env=ENV, cwd=ROOT, check=check, text=True)


def expected_digest(yaml_env: dict[str, str]) -> str:
    """The digest of an uninterrupted run, computed here without sleeping."""
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, **yaml_env, "STEP_SECONDS": "0", "SPOTD_CHECKPOINT_DIR": d}
        out = subprocess.run(
            [sys.executable, str(ROOT / "examples/train.py")],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("DIGEST"))


async def wait_for(client, job_id: int, pred, what: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await client.job(job_id)
        if pred(job):
            return job
        await asyncio.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


async def log_text(client, job_id: int) -> str:
    return b"".join([c async for c in client.logs(job_id)]).decode(errors="replace")


async def until_step(client, job_id: int, attempt: int, step: int) -> None:
    """Wait until the given attempt has checkpointed at least ``step``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = b"".join([c async for c in client.logs(job_id, attempt=attempt)]).decode()
        steps = [int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("step ")]
        if steps and max(steps) >= step:
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"attempt {attempt} never reached step {step}")


async def main() -> None:
    from spotd.sdk.client import Client

    if HOME.exists():
        subprocess.run([*SPOTCTL, "daemon", "stop"], env=ENV, capture_output=True)
        shutil.rmtree(HOME)
    say("Start the daemon (embedded local provider: 3 regions with different spot prices)")
    spotctl("daemon", "start")
    say("Validate the task and show where it would run")
    spotctl("check", "examples/train.yaml")
    spotctl("jobs", "launch", "examples/train.yaml", "--dry-run")

    say("Launch the managed job")
    os.environ["SPOTD_HOME"] = str(HOME)
    async with Client.connect(autostart=False) as c:
        launched = subprocess.run(
            [*SPOTCTL, "jobs", "launch", "examples/train.yaml", "-d", "-y", "-o", "json"],
            env=ENV,
            cwd=ROOT,
            check=True,
            text=True,
            capture_output=True,
        )
        import json

        job_id = json.loads(launched.stdout)["id"]
        print(f"job {job_id} submitted")
        job = await wait_for(c, job_id, lambda j: j["status"] == "RUNNING", "RUNNING")
        print(f"RUNNING in {job['region']}/{job['zone']} ({job['market']})")
        await until_step(c, job_id, 1, 20)

        for n, notice in ((1, 5.0), (2, None)):
            before = await c.job(job_id)
            kind = f"with a {notice:g}s notice" if notice else "without notice"
            say(f"Preemption {n}: reclaim the spot instance {kind}")
            args = ["chaos", "preempt", str(job_id)] + (["--notice", str(notice)] if notice else [])
            t0 = time.monotonic()
            spotctl(*args)
            had = len(before["attempts"])
            job = await wait_for(
                c,
                job_id,
                lambda j, a=had: len(j["attempts"]) > a and j["status"] == "RUNNING",
                "the relaunch",
            )
            print(
                f"relaunched {time.monotonic() - t0:.1f}s later: {before['region']} -> "
                f"{job['region']}/{job['zone']} ({job['market']}); "
                f"previous attempt ended {job['attempts'][-2]['end_reason']}: "
                f"{job['attempts'][-2]['end_detail']}"
            )
            await until_step(c, job_id, len(job["attempts"]), 35 + 20 * (n - 1))

        say("Follow the job to the end")
        spotctl("jobs", "logs", str(job_id), "--follow")
        job = await c.wait(job_id, timeout=120)
        logs = await log_text(c, job_id)

    say("The job table and the event log")
    spotctl("jobs", "queue")
    spotctl("jobs", "events", str(job_id))

    import yaml

    task = yaml.safe_load((ROOT / "examples/train.yaml").read_text())
    envs = {k: str(v) for k, v in task["envs"].items()}
    want = expected_digest(envs)
    got = next((ln.split()[1] for ln in logs.splitlines() if ln.startswith("DIGEST")), None)
    say("Result")
    print(
        f"status {job['status']} after {job['preemptions']} preemptions, "
        f"{len(job['attempts'])} attempts"
    )
    print(f"digest {got}\nexpect {want} (uninterrupted run)")
    spotctl("daemon", "stop")
    if job["status"] != "SUCCEEDED" or got != want:
        raise SystemExit("demo FAILED: the job did not finish with the uninterrupted digest")
    print(
        "\033[1;32mOK: survived two preemptions with the same result as an uninterrupted run\033[0m"
    )


if __name__ == "__main__":
    asyncio.run(main())
