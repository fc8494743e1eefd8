"""A real ``spotd`` daemon configured with AWS against moto on loopback.

The daemon talks EC2 and S3 over HTTP to a ``ThreadedMotoServer`` in this test process; the
test plays the machines (``tests/aws/player.py``): for each instance moto reports running it
starts the agent on this machine from the instance's own user-data — an honest stand-in for
user-data, which moto cannot run — and kills it when moto reports the instance gone. Agents
call the daemon's TCP API and checkpoint to moto's S3. Spot interruptions are staged on moto's
backend (terminated, ``Server.SpotInstanceTermination``) since moto never interrupts anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioboto3
import pytest

from spotd.config import load_settings
from spotd.providers.aws import AwsConfig, AwsProvider, load_aws_catalog
from spotd.providers.base import TAG_HOME, TAG_KEY, InstanceSpec
from spotd.types import AgentConfig, Market
from tests.aws.motoserver import AMI, Moto, aws_env, moto_server  # noqa: F401
from tests.aws.player import InstancePlayer
from tests.conftest import DaemonProc
from tests.e2e.helpers import digest_of, expected_digest, logs, wait_job, wait_log

pytestmark = [pytest.mark.aws, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
REGIONS = ("us-west-2", "us-east-1", "eu-west-1")
TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AwsDaemon:
    """A daemon whose aws provider points at moto, and the pieces a test needs around it."""

    def __init__(self, m: Moto, tmp: Path) -> None:
        self.moto = m
        self.bucket = f"spotd-ckpt-{uuid.uuid4().hex[:8]}"
        port = free_port()
        self.aws_cfg = {
            "regions": list(REGIONS),
            "endpoint_url": m.url,
            "image_id": AMI,
            "daemon_url": f"http://127.0.0.1:{port}",
            "notice_url": "http://127.0.0.1:9",
            "checkpoint_store": f"s3://{self.bucket}/ckpt",
        }
        home = Path(f"/tmp/spotd-a{os.getpid()}-{time.monotonic_ns() % 10**9}")
        self.env = {
            **aws_env(m),
            "SPOTD_TCP": f"127.0.0.1:{port}",
            "SPOTD_API_TOKEN": "t0ken",
            "SPOTD_OBSERVE_INTERVAL": "0.3",
            "SPOTD_PROVIDERS_JSON": json.dumps({"aws": self.aws_cfg}),
        }
        self.proc = DaemonProc(home, self.env)
        self.home_tag = load_settings(home, env=self.proc.env).home_tag
        self.agents_root = tmp / "instances"
        self.agent_env = aws_env(m)

    def player(self) -> InstancePlayer:
        return InstancePlayer(
            url=self.moto.url,
            home_tag=self.home_tag,
            regions=REGIONS,
            root=self.agents_root,
            env=self.agent_env,
        )

    def ours(self) -> list[tuple[str, Any]]:
        """(region, moto instance) for every instance tagged with this daemon's home."""
        return [
            (r, i)
            for r in REGIONS
            for i in self.moto.instances(r)
            if tags(i).get(TAG_HOME) == self.home_tag
        ]

    def by_key(self, key: str) -> list[tuple[str, Any]]:
        return [(r, i) for r, i in self.ours() if tags(i).get(TAG_KEY) == key]


def tags(inst: Any) -> dict[str, str]:
    return {t["key"]: t["value"] for t in inst.get_tags()}


@pytest.fixture
async def aws_daemon(moto_server: Moto, tmp_path: Path) -> AsyncIterator[AwsDaemon]:  # noqa: F811
    d = AwsDaemon(moto_server, tmp_path)
    async with aioboto3.Session().client("s3", endpoint_url=moto_server.url) as s3:
        await s3.create_bucket(Bucket=d.bucket)
    d.proc.start()
    try:
        yield d
    finally:
        d.proc.stop()
        print(d.proc.log_tail(6000))  # shown when the test failed
        shutil.rmtree(d.proc.home, ignore_errors=True)


def job_yaml(steps: int, name: str = "train-aws") -> str:
    return f"""
name: {name}
resources:
  accelerators: T4:1
  use_spot: true
workdir: {ROOT / "examples"}
envs:
  TRAIN_STEPS: {steps}
  STEP_SECONDS: 0.1
  CKPT_EVERY: 5
job_recovery:
  strategy: EAGER_NEXT_REGION
run: python3 train.py
"""


async def eventually(pred: Any, *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_tagged_instances_unknown_to_the_store_are_reaped(aws_daemon: AwsDaemon) -> None:
    cfg = AwsConfig.from_mapping(aws_daemon.aws_cfg)
    stray_maker = AwsProvider(cfg, load_aws_catalog(cfg, None))
    agent = AgentConfig(
        instance_key="j999-a1-n0",
        attempt_id="j999-a1",
        job_id=999,
        task_id="t",
        attempt=1,
        node_rank=0,
        num_nodes=1,
        setup=None,
        run="true",
    )
    spec = InstanceSpec(
        key="j999-a1-n0",
        region="us-east-1",
        zone="us-east-1b",
        instance_type="g4dn.xlarge",
        market=Market.SPOT,
        agent=agent,
        tags={TAG_HOME: aws_daemon.home_tag, TAG_KEY: "j999-a1-n0"},
    )
    try:
        await stray_maker.launch(spec)
    finally:
        await stray_maker.close()
    [(_, inst)] = aws_daemon.by_key("j999-a1-n0")
    await eventually(lambda: inst.state == "terminated", timeout=20, what="the stray reaped")
    assert "reaping unknown instance" in aws_daemon.proc.log_tail(20000)


async def test_spot_interruption_recovers_into_the_next_cheapest_region(
    aws_daemon: AwsDaemon, tmp_path: Path
) -> None:
    steps = 60
    spec_path = tmp_path / "train.yaml"
    spec_path.write_text(job_yaml(steps))
    # --dry-run lists the candidates, with prices: with a cloud enabled, the local provider's
    # simulated types are not among them unless the task asks for `infra: local` (issue #14)
    r = aws_daemon.proc.spotctl("jobs", "launch", str(spec_path), "--dry-run", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert {c["provider"] for c in json.loads(r.stdout)["candidates"]} == {"aws"}
    r = aws_daemon.proc.spotctl(
        "jobs", "launch", str(spec_path), "--infra", "aws", "--dry-run", "-o", "json"
    )
    plan = json.loads(r.stdout)["candidates"]
    assert {c["provider"] for c in plan} == {"aws"}
    by_price = list(dict.fromkeys(c["region"] for c in plan if c["market"] == "spot"))
    async with aws_daemon.player():
        r = aws_daemon.proc.spotctl(
            "jobs", "launch", str(spec_path), "--infra", "aws", "-d", "-y", "-o", "json"
        )
        assert r.returncode == 0, r.stderr
        jid = json.loads(r.stdout)["id"]
        async with aws_daemon.proc.client() as c:
            job = await wait_job(
                c, jid, lambda j: j["status"] == "RUNNING", timeout=60, what="attempt 1 running"
            )
            first = job["attempts"][0]
            assert (first["provider"], first["region"], first["market"]) == (
                "aws",
                by_price[0],
                "spot",
            )
            await wait_log(c, jid, "step 10 ", attempt=1)
            manifest = f"ckpt/{job['task_id']}/manifest.json"
            async with aioboto3.Session().client("s3") as s3:
                deadline = time.monotonic() + 30
                while True:  # a checkpoint has reached S3
                    listed = await s3.list_objects_v2(Bucket=aws_daemon.bucket, Prefix=manifest)
                    if listed.get("KeyCount") or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
            assert listed.get("KeyCount"), "no checkpoint manifest in S3"
            [(region, inst)] = aws_daemon.by_key(f"j{jid}-a1-n0")
            aws_daemon.moto.stage_spot_interruption(region, inst.id)
            job = await wait_job(
                c, jid, lambda j: j["status"] in TERMINAL, timeout=90, what="the job to finish"
            )
            text = await logs(c, jid)
    assert job["status"] == "SUCCEEDED", job
    assert job["preemptions"] == 1 and len(job["attempts"]) == 2
    a1, a2 = job["attempts"]
    assert a1["end_reason"] == "PREEMPTED"
    assert "Server.SpotInstanceTermination" in (a1["end_detail"] or "")
    assert a2["region"] == next(r for r in by_price if r != a1["region"]), (by_price, a2)
    assert "resumed from step" in text and "checkpoint restored" in text
    assert digest_of(text) == expected_digest(steps)


async def test_daemon_killed_between_intent_and_create_relaunches_without_duplicate(
    aws_daemon: AwsDaemon, tmp_path: Path
) -> None:
    """RunInstances creates the machine, then the daemon is SIGKILLed before the answer: the
    restarted daemon finishes the launch it had written down and finds that machine."""
    created = threading.Event()
    with aws_daemon.moto.run_instances_stalls(lambda _r: created.set()) as release:
        async with aws_daemon.proc.client() as c:
            job = await c.launch(job_yaml(5, "crash"), filename="c.yaml", infra="aws")
        assert await asyncio.to_thread(created.wait, 30), "RunInstances never reached moto"
        aws_daemon.proc.kill9()
        release.set()
    assert len(aws_daemon.ours()) == 1
    aws_daemon.proc.start()
    async with aws_daemon.player(), aws_daemon.proc.client() as c:
        job = await wait_job(
            c, job["id"], lambda j: j["status"] in TERMINAL, timeout=60, what="the job to finish"
        )
        text = await logs(c, job["id"])
    assert job["status"] == "SUCCEEDED", job
    assert len(job["attempts"]) == 1
    assert len(aws_daemon.ours()) == 1, "the relaunch found the instance: no duplicate"
    assert digest_of(text) == expected_digest(5)
