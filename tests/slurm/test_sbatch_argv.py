"""The sbatch command for one attempt, built without Slurm: one row per partition or gang
shape that changes what Slurm is asked for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from spotd.providers.base import TAG_HOME, TAG_KEY, InstanceSpec
from spotd.providers.slurm import decode_comment, job_name, parse_partitions, sbatch_argv
from spotd.types import AgentConfig, Market

JOB_DIR = Path("/shared/spotd/h/spotd-j1-a1")


def spec(key: str = "j1-a1-n0", num_nodes: int = 1, rank: int = 0) -> InstanceSpec:
    agent = AgentConfig(
        instance_key=key,
        attempt_id="j1-a1",
        job_id=1,
        task_id="t",
        attempt=1,
        node_rank=rank,
        num_nodes=num_nodes,
        setup=None,
        run="true",
        daemon_url="unix:/s",
        token="x",
        checkpoint_store="/c",
    )
    return InstanceSpec(
        key=key,
        region="p",
        zone="p",
        instance_type="p-2cpu",
        market=Market.ON_DEMAND,
        tags={TAG_HOME: "h", TAG_KEY: key},
        agent=agent,
    )


def argv_for(part: dict[str, Any], s: InstanceSpec, extra: tuple[str, ...] = ()) -> list[str]:
    p = parse_partitions({"p": part})[0]
    name, prefix = job_name(s)
    return sbatch_argv(
        s, p, name=name, prefix=prefix, job_dir=JOB_DIR, python="/py", extra_args=extra
    )


@pytest.mark.parametrize(
    ("part", "present", "absent"),
    [
        (
            {"cpus": 2, "memory_gb": 1.5},
            ["--cpus-per-task=2", "--mem=1536M"],
            ["--gres", "--qos", "--time"],
        ),
        ({"cpus": 0.5, "memory_gb": 0.0001}, ["--cpus-per-task=1", "--mem=1M"], []),
        ({"cpus": 8, "memory_gb": 32, "gpus": 2, "gpu": "A100"}, ["--gres=gpu:A100:2"], []),
        (
            {"cpus": 2, "memory_gb": 1, "qos": "high", "time_limit": "1:00:00"},
            ["--qos=high", "--time=1:00:00"],
            ["--gres"],
        ),
    ],
)
def test_the_partition_shape_becomes_the_request(
    part: dict[str, Any], present: list[str], absent: list[str]
) -> None:
    argv = argv_for(part, spec())
    assert argv[:2] == ["sbatch", "--parsable"]
    assert "--no-requeue" in argv and "--partition=p" in argv and "--nodes=1" in argv
    for arg in present:
        assert arg in argv
    for prefix in absent:
        assert not any(a.startswith(prefix) for a in argv)
    assert argv[-1] == f"--wrap=exec /py -m spotd.providers.slurm node {JOB_DIR}"


def test_a_gang_is_one_job_running_srun_with_every_key_in_its_comment() -> None:
    argv = argv_for({"cpus": 1, "memory_gb": 1}, spec("j1-a1-n1", num_nodes=3, rank=1))
    assert "--job-name=spotd-j1-a1" in argv and "--nodes=3" in argv
    assert argv[-1].startswith("--wrap=exec srun --nodes=3 --ntasks=3 --ntasks-per-node=1")
    comment = next(a for a in argv if a.startswith("--comment="))[len("--comment=") :]
    decoded = decode_comment(comment)
    assert decoded == ({TAG_HOME: "h"}, ["j1-a1-n0", "j1-a1-n1", "j1-a1-n2"])
    assert json.loads(comment)["spotd"] == 1


def test_extra_arguments_come_before_the_partitions_and_the_wrap_last() -> None:
    part = {"cpus": 1, "memory_gb": 1, "sbatch_args": ["--account=p"]}
    argv = argv_for(part, spec(), extra=("--account=ml", "--exclusive"))
    assert argv[-4:-1] == ["--account=ml", "--exclusive", "--account=p"]
    assert argv[-1].startswith("--wrap=")


def test_a_one_node_job_is_named_for_its_key() -> None:
    assert job_name(spec("j7-a2-n0")) == ("spotd-j7-a2-n0", "j7-a2-n0")
