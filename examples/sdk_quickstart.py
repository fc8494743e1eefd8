"""spotd from Python: launch a managed job, then a service (where the daemon has services).

    .venv/bin/python examples/sdk_quickstart.py

It talks to the daemon of ``$SPOTD_HOME`` (default ``~/.spotd``), or ``$SPOTD_URL``, exactly as
``spotctl`` does, and starts a local daemon when none answers. It builds the task in Python (the
same models the YAML is validated with), launches it as a managed job on the cheapest of two
resource choices, streams its logs, waits for it and prints where it ran; then it starts a
two-replica service of stub OpenAI servers, waits for both replicas, sends one request through
the load balancer and takes the service down. Exit code 0 means the job succeeded.
"""

from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path

import spotd

HERE = Path(__file__).resolve().parent


def launch_job() -> spotd.Job:
    task = spotd.Task(
        name="sdk-quickstart",
        workdir=str(HERE),  # copied to the instance: train.py runs from there
        envs={"TRAIN_STEPS": 20, "STEP_SECONDS": 0.02, "CKPT_EVERY": 5},
        setup='echo "setup: attempt $SPOTD_ATTEMPT"',
        run="python3 train.py",
    )
    # A set is "any of these, cheapest wins"; a list would be an ordered preference.
    task.set_resources({spotd.Resources(cpus="1+", use_spot=True), spotd.Resources(cpus="2+")})
    print("task, as YAML:\n" + task.to_yaml())

    handle = spotd.jobs.launch(task)
    print(f"launched job {handle.id} ({handle.name}): {handle.status}")
    for line in spotd.jobs.logs(handle.id, follow=True):
        print(f"  | {line}")
    job = spotd.jobs.wait(handle.id, timeout=120)  # JobFailedError if it failed
    where = job.attempts[-1]
    print(
        f"job {job.id} {job.status} on {where.provider}/{where.region}/{where.zone} "
        f"({where.instance_type}, {where.market}, ${where.price_per_hour}/h), "
        f"{len(job.attempts)} attempt(s)"
    )
    return job


def launch_service() -> None:
    from spotd.sdk import serve
    from spotd.sdk.errors import ServicesUnavailableError

    task = spotd.Task(
        name="sdk-quickstart-svc",
        # a stand-in for vLLM: the OpenAI endpoints, on the port spotd gives each replica
        run="python3 -m spotd.serve.stub_replica --port $SPOTD_REPLICA_PORT",
        service=spotd.Service(
            readiness_probe={"path": "/health", "initial_delay_seconds": 30}, replicas=2
        ),
    )
    task.set_resources(spotd.Resources(cpus="1+", use_spot=True))
    try:
        svc = serve.up(task)
    except ServicesUnavailableError as exc:
        print(f"services: skipped ({exc})")
        return
    print(f"service {svc.name}: {svc.status}, endpoint {svc.endpoint}")
    try:
        deadline = time.monotonic() + 60
        while svc.ready_replicas < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            svc = serve.status(svc.name)
        for r in svc.replicas:
            print(f"  replica {r.id}: {r.status} {r.market} {r.region}/{r.zone} {r.url}")
        if svc.endpoint and svc.ready_replicas:
            with urllib.request.urlopen(svc.endpoint + "/v1/models", timeout=10) as resp:
                print(f"GET {svc.endpoint}/v1/models -> {resp.status}")
    finally:
        print(f"service {svc.name}: {serve.down(svc.name).status}")


def main() -> int:
    try:
        job = launch_job()
    except spotd.SpotdError as exc:  # InvalidTaskError, NoFeasiblePlacementError, ...
        print(f"error: {exc}", file=sys.stderr)
        return 1
    launch_service()
    return 0 if job.succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
