"""A managed job from launch to its end, through the real daemon, agents and CLI."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.helpers import digest_of, expected_digest, logs, train_yaml, wait_job

TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}


async def test_job_runs_to_success_on_the_cheapest_spot_zone(daemon):
    async with daemon.client() as c:
        plan = await c.launch(train_yaml(steps=10), filename="t.yaml", dry_run=True)
        job = await c.launch(train_yaml(steps=10), filename="t.yaml")
        job = await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL, what="the end")
        assert job["status"] == "SUCCEEDED", job
        first = plan["candidates"][0]
        assert (job["region"], job["zone"], job["market"]) == (
            first["region"],
            first["zone"],
            "spot",
        )
        assert job["recoveries"] == 0
        [attempt] = job["attempts"]
        assert attempt["end_reason"] == "SUCCEEDED"
        assert attempt["price_per_hour"] == first["price_per_hour"]
        assert digest_of(await logs(c, job["id"])) == expected_digest(10)


async def test_job_sees_spotd_and_skypilot_environment(daemon):
    yaml = """
name: envcheck
num_nodes: 2
resources: {cpus: 1+}
envs: {GREETING: hello, MUST_GIVE: null}
setup: echo "setup-ran"
run: >-
  echo "rank=$SKYPILOT_NODE_RANK/$SKYPILOT_NUM_NODES sp=$SPOTD_NODE_RANK job=$SPOTD_JOB_ID
  task=$SKYPILOT_TASK_ID attempt=$SPOTD_ATTEMPT greet=$GREETING given=$MUST_GIVE
  ckpt=${SPOTD_CHECKPOINT_DIR:+set} ips=$(echo $SKYPILOT_NODE_IPS | wc -w)"
"""
    async with daemon.client() as c:
        job = await c.launch(yaml, filename="e.yaml", env={"MUST_GIVE": "yes"})
        job = await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL)
        assert job["status"] == "SUCCEEDED", job
        text = await logs(c, job["id"])
    for rank in (0, 1):
        assert (
            f"rank={rank}/2 sp={rank} job={job['id']} task={job['task_id']} attempt=1 "
            f"greet=hello given=yes ckpt=set ips=2" in text
        )
    assert text.count("setup-ran") == 2


async def test_setup_failure_is_not_retried(daemon):
    yaml = (
        "resources: {cpus: 1+}\nsetup: exit 3\nrun: echo never\n"
        "job_recovery: {max_restarts_on_errors: 5}\n"
    )
    async with daemon.client() as c:
        job = await c.launch(yaml, filename="s.yaml")
        job = await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL)
    assert job["status"] == "FAILED_SETUP"
    assert len(job["attempts"]) == 1
    assert "setup exited with 3" in job["message"]


async def test_user_failure_not_retried_without_restarts(daemon):
    async with daemon.client() as c:
        job = await c.launch(
            train_yaml(steps=10, extra_envs="  FAIL_AT_STEP: 3", max_restarts=0), filename="f.yaml"
        )
        job = await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL)
    assert job["status"] == "FAILED"
    assert [a["end_reason"] for a in job["attempts"]] == ["USER_FAILED"]
    assert job["preemptions"] == 0


async def test_user_failure_restarted_up_to_max_restarts(daemon):
    async with daemon.client() as c:
        job = await c.launch(
            train_yaml(steps=10, extra_envs="  FAIL_AT_STEP: 3", max_restarts=2), filename="f.yaml"
        )
        job = await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL)
    assert job["status"] == "FAILED"
    assert [a["end_reason"] for a in job["attempts"]] == ["USER_FAILED"] * 3
    assert job["user_restarts"] == 2 and job["preemptions"] == 0


async def test_cancel_terminates_instances(daemon):
    async with daemon.client() as c:
        job = await c.launch(train_yaml(steps=1000, step_seconds=0.1), filename="c.yaml")
        await wait_job(c, job["id"], lambda j: j["status"] == "RUNNING")
        await c.cancel(job["id"])
        job = await wait_job(c, job["id"], lambda j: j["status"] == "CANCELLED")
    assert job["attempts"][-1]["end_reason"] == "CANCELLED"
    instances = list((daemon.home / "local" / "instances").glob("*/meta.json"))
    assert instances == []


def test_cli_queue_json_and_table(daemon):
    r = daemon.spotctl(
        "jobs",
        "launch",
        "examples/train.yaml",
        "-d",
        "-y",
        "--env",
        "TRAIN_STEPS=3",
        "--env",
        "STEP_SECONDS=0",
    )
    assert r.returncode == 0, r.stderr
    r = daemon.spotctl("jobs", "queue", "-o", "json")
    assert r.returncode == 0, r.stderr
    [job] = json.loads(r.stdout)
    assert {"id", "name", "status", "recoveries", "attempts"} <= set(job)
    assert job["name"] == "train-demo"
    r = daemon.spotctl("jobs", "queue")
    assert "train-demo" in r.stdout and "RECOVERIES" in r.stdout
    r = daemon.spotctl("jobs", "events", str(job["id"]), "-o", "json")
    assert r.returncode == 0, r.stderr
    events = json.loads(r.stdout)
    assert events and {"at", "kind", "attempt_id", "message"} <= set(events[0])
    r = daemon.spotctl("jobs", "events", str(job["id"]))
    assert r.returncode == 0 and "ATTEMPT" in r.stdout and events[0]["kind"] in r.stdout, r


async def test_any_of_entries_keep_inheriting_top_level_fields(daemon):
    """The stored task must rebuild exactly: `use_spot` at the top applies to every any_of
    entry on every attempt (a plain model dump loses that inheritance)."""
    yaml = (
        "resources:\n  use_spot: true\n  any_of:\n    - {cpus: 2}\n    - {cpus: 4}\nrun: echo ok\n"
    )
    async with daemon.client() as c:
        job = await c.launch(yaml, filename="a.yaml")
        job = await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL)
    assert job["status"] == "SUCCEEDED"
    assert job["attempts"][0]["market"] == "spot"


async def test_cli_launch_is_one_request_and_prints_the_plan_it_used(daemon):
    r = daemon.spotctl(
        "jobs",
        "launch",
        "examples/train.yaml",
        "-d",
        "-y",
        "--env",
        "TRAIN_STEPS=1",
        "--env",
        "STEP_SECONDS=0",
    )
    assert r.returncode == 0, r.stderr
    assert "Placement for train-demo" in r.stdout and "chosen" in r.stdout
    assert "Job submitted: id" in r.stdout
    r = daemon.spotctl(
        "jobs",
        "launch",
        "examples/train.yaml",
        "-d",
        "-y",
        "-o",
        "json",
        "--env",
        "TRAIN_STEPS=1",
        "--env",
        "STEP_SECONDS=0",
    )
    answer = json.loads(r.stdout)
    assert answer["name"] == answer["plan"]["name"] == "train-demo"
    assert answer["plan"]["candidates"][0]["market"] == "spot"
    async with daemon.client() as c:
        metrics = await c.request("GET", "/metrics")
    assert _launch_requests(metrics, code=201) == 2
    assert _launch_requests(metrics, code=200) == 0, "a dry run went first"


def _launch_requests(metrics: str, *, code: int) -> float:
    for line in metrics.splitlines():
        if (
            line.startswith("spotd_api_requests_total{")
            and f'code="{code}"' in line
            and 'route="/v1/jobs"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _launch_paced_and_plain(c, *, steps: int, step_seconds: float) -> tuple[dict, dict]:
    """A DEADLINE job (an hour to its deadline, 10 min of expected work) and a job without."""
    paced = train_yaml(steps=steps, step_seconds=step_seconds, recovery="DEADLINE").replace(
        "  strategy: DEADLINE\n",
        "  strategy: DEADLINE\n  deadline: 1h\n  expected_duration: 10m\n",
    )
    job = await c.launch(paced, filename="paced.yaml")
    plain = await c.launch(train_yaml(steps=steps, step_seconds=step_seconds), filename="p.yaml")
    return job, plain


async def test_a_deadline_job_shows_its_pace_in_the_api_and_the_cli(daemon):
    """A DEADLINE job carries ``pace`` (progress against its uniform-progress line, slack);
    examples/train.py writes no progress file, so it is paced by wall time and says so. A job
    without a deadline has none."""
    async with daemon.client() as c:
        job, plain = await _launch_paced_and_plain(c, steps=3, step_seconds=0)
        job = await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL, what="the end")
        plain = await wait_job(c, plain["id"], lambda j: j["status"] in TERMINAL, what="the end")
    assert job["status"] == "SUCCEEDED", job
    pace = job["pace"]
    assert pace["progress_from"] == "wall time", pace
    assert pace["expected_duration_seconds"] == 600.0
    assert 0.0 < pace["progress"] < 1.0 and 0.0 < pace["work_done_seconds"] < 600.0, pace
    # the deadline is an hour away and little work is left: most of the slack remains
    assert 2_400.0 < pace["slack_seconds"] < 3_000.0, pace
    assert plain["pace"] is None
    r = daemon.spotctl("jobs", "queue", "-v")
    assert r.returncode == 0, r.stderr
    assert "PACE" in r.stdout and "(wall time)" in r.stdout, r.stdout


def _gauge(text: str, name: str, job_id: int) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("job") == str(job_id):
                return sample.value
    return None


async def test_a_running_deadline_job_has_pace_gauges_until_it_ends(daemon):
    """What an operator alerts on (``spotd_job_deadline_slack_seconds < 0``: it will be late):
    the scrape shows the slack the API shows, for a DEADLINE job while it runs, and nothing
    for it once it has ended or for a job without a deadline."""
    async with daemon.client() as c:
        job, plain = await _launch_paced_and_plain(c, steps=400, step_seconds=0.1)
        await wait_job(c, job["id"], lambda j: j["status"] == "RUNNING", what="running")
        await wait_job(c, plain["id"], lambda j: j["status"] == "RUNNING", what="running")
        text = await c.request("GET", "/metrics")
        shown = (await c.job(job["id"]))["pace"]
        assert _gauge(text, "spotd_job_deadline_slack_seconds", plain["id"]) is None
        slack = _gauge(text, "spotd_job_deadline_slack_seconds", job["id"])
        # read a moment apart (while it runs on wall time its slack holds still)
        assert slack == pytest.approx(shown["slack_seconds"], abs=10.0), (slack, shown)
        assert _gauge(text, "spotd_job_progress_ratio", job["id"]) == pytest.approx(
            shown["progress"], abs=0.02
        )
        assert _gauge(text, "spotd_job_deadline_ahead_of_line_seconds", job["id"]) is not None
        for j in (job, plain):
            await c.cancel(j["id"])
            await wait_job(c, j["id"], lambda x: x["status"] in TERMINAL, what="the end")
        text = await c.request("GET", "/metrics")
    assert _gauge(text, "spotd_job_deadline_slack_seconds", job["id"]) is None
