"""What the Slurm provider makes of Slurm's words, without a cluster.

squeue output (22.05's JSON, 23.x's list-valued states, the --format fallback), the state
mapping, sbatch error classification, the generated catalog, and the per-node wrapper that turns
``SLURM_*`` into ``SPOTD_NODE_*``. A multi-node gang is checked through a fake command runner
(the provider's own ``_run`` seam), since the test cluster has a single node.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from spotd.providers.base import (
    TAG_HOME,
    TAG_KEY,
    TAG_NODE,
    InstanceSpec,
    InvalidRequest,
    ProviderUnavailable,
    QuotaExceeded,
)
from spotd.providers.slurm import (
    SlurmConfigError,
    SlurmJob,
    SlurmProvider,
    classify_error,
    decode_comment,
    encode_comment,
    expand_nodelist,
    instance_state,
    node_entry,
    parse_partitions,
    parse_squeue_format,
    parse_squeue_json,
)
from spotd.types import AgentConfig, InstanceState, Market


def job(*states: str, reason: str = "None", restarts: int = 0) -> SlurmJob:
    return SlurmJob(
        job_id="7",
        name="spotd-j1-a1-n0",
        states=states,
        reason=reason,
        partition="debug",
        restarts=restarts,
        comment="",
    )


@pytest.mark.parametrize(
    ("states", "restarts", "expected", "reason_has"),
    [
        (("PENDING",), 0, InstanceState.PENDING, "PENDING"),
        (("CONFIGURING",), 0, InstanceState.PENDING, "CONFIGURING"),
        (("RUNNING",), 0, InstanceState.RUNNING, ""),
        (("PREEMPTED",), 0, InstanceState.PREEMPTED, "PREEMPTED"),
        (("NODE_FAIL",), 0, InstanceState.PREEMPTED, "NODE_FAIL"),
        (("BOOT_FAIL",), 0, InstanceState.PREEMPTED, "BOOT_FAIL"),
        (("SUSPENDED",), 0, InstanceState.PREEMPTED, "SUSPENDED"),
        (("REQUEUED",), 0, InstanceState.PREEMPTED, "REQUEUED"),
        (("PENDING", "REQUEUED"), 0, InstanceState.PREEMPTED, "REQUEUED"),  # 23.x style
        (("PENDING",), 1, InstanceState.PREEMPTED, "requeued 1x"),  # requeued, waiting again
        (("RUNNING",), 2, InstanceState.PREEMPTED, "requeued 2x"),  # rerun behind our back
        (("COMPLETED",), 0, InstanceState.TERMINATED, "COMPLETED"),
        (("COMPLETING",), 0, InstanceState.TERMINATED, "COMPLETING"),
        (("CANCELLED",), 0, InstanceState.TERMINATED, "CANCELLED"),
        (("FAILED",), 0, InstanceState.TERMINATED, "FAILED"),
        (("TIMEOUT",), 0, InstanceState.TERMINATED, "TIMEOUT"),
        (("OUT_OF_MEMORY",), 0, InstanceState.TERMINATED, "OUT_OF_MEMORY"),
    ],
)
def test_slurm_states_map_to_instance_states(states, restarts, expected, reason_has):
    state, reason = instance_state(job(*states, restarts=restarts))
    assert state == expected
    assert reason_has in reason


def test_the_slurm_reason_is_kept():
    assert instance_state(job("NODE_FAIL", reason="NodeDown")) == (
        InstanceState.PREEMPTED,
        "NODE_FAIL (NodeDown)",
    )


def test_squeue_json_of_22_05_and_23_x():
    old = {
        "errors": [],
        "jobs": [
            {
                "job_id": 3,
                "name": "spotd-x",
                "job_state": "NODE_FAIL",
                "state_reason": "NodeDown",
                "partition": "debug",
                "restart_cnt": 0,
                "comment": "c",
            }
        ],
    }
    new = {
        "errors": [],
        "jobs": [
            {
                "job_id": 4,
                "name": "spotd-y",
                "job_state": ["PENDING", "REQUEUED"],
                "state_reason": "None",
                "partition": "batch",
                "restart_cnt": 1,
                "comment": None,
            }
        ],
    }
    [a] = parse_squeue_json(json.dumps(old))
    [b] = parse_squeue_json(json.dumps(new))
    assert (a.job_id, a.states, a.reason, a.comment) == ("3", ("NODE_FAIL",), "NodeDown", "c")
    assert (b.job_id, b.states, b.restarts, b.comment) == ("4", ("PENDING", "REQUEUED"), 1, "")


def test_squeue_json_errors_mean_the_controller_is_unavailable():
    # what 22.05 prints (exit status 0) when slurmctld cannot be reached
    text = json.dumps(
        {
            "errors": [
                {
                    "description": "Failed while looking for jobs",
                    "error_number": -1,
                    "source": "slurm_load_jobs",
                }
            ],
            "jobs": [],
        }
    )
    with pytest.raises(ProviderUnavailable, match="Failed while looking for jobs"):
        parse_squeue_json(text)
    with pytest.raises(ProviderUnavailable):
        parse_squeue_json("squeue: error: not json")


def test_squeue_format_fallback_keeps_a_comment_with_the_separator():
    comment = encode_comment({TAG_HOME: "h|x"}, ["k-n0"])
    [j] = parse_squeue_format(f"12|spotd-k-n0|RUNNING|None|debug|localhost|{comment}\n\ngarbage\n")
    assert (j.job_id, j.states, j.partition, j.nodes) == ("12", ("RUNNING",), "debug", "localhost")
    assert decode_comment(j.comment) == ({TAG_HOME: "h|x"}, ["k-n0"])


def test_comment_round_trip_and_foreign_comments():
    tags = {TAG_HOME: "abc", "spotd-job": "3", TAG_NODE: "0", TAG_KEY: "j3-a1-n0"}
    assert decode_comment(encode_comment(tags, ["j3-a1-n0"])) == (
        {TAG_HOME: "abc", "spotd-job": "3"},
        ["j3-a1-n0"],
    )
    for foreign in ("", "my experiment", "{}", '{"spotd": 99, "tags": {}, "keys": ["a"]}', "[1]"):
        assert decode_comment(foreign) is None


SUBMIT_FAILED = "sbatch: error: Batch job submission failed: "
QOS_LIMIT = (
    "sbatch: error: QOSMaxSubmitJobPerUserLimit\n"
    + SUBMIT_FAILED
    + "Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)"
)


@pytest.mark.parametrize(
    ("stderr", "error"),
    [
        (SUBMIT_FAILED + "Invalid partition name specified", InvalidRequest),
        (SUBMIT_FAILED + "Requested node configuration is not available", InvalidRequest),
        ("sbatch: error: Invalid generic resource (gres) specification", InvalidRequest),
        (SUBMIT_FAILED + "Invalid qos specification", InvalidRequest),
        (QOS_LIMIT, QuotaExceeded),
        ("sbatch: error: AssocMaxJobsLimit", QuotaExceeded),
        (
            SUBMIT_FAILED + "Unable to contact slurm controller (connect failure)",
            ProviderUnavailable,
        ),
        (SUBMIT_FAILED + "Socket timed out on send/recv operation", ProviderUnavailable),
        ("sbatch: error: something nobody has seen before", ProviderUnavailable),
    ],
)
def test_sbatch_errors_are_classified(stderr, error):
    assert type(classify_error("sbatch", stderr)) is error


def test_catalog_from_config_spot_only_for_preemptible_partitions():
    parts = parse_partitions(
        {
            "debug": {"cpus": 2, "memory_gb": 1},
            "scav": {
                "cpus": 8,
                "memory_gb": 32,
                "gpus": 1,
                "gpu": "A100",
                "price": 0.5,
                "preemptible": True,
            },
        }
    )
    p = SlurmProvider(root=Path("/nonexistent"), partitions=parts)
    by_region = {e.region: e for e in p.catalog()}
    assert by_region["debug"].zone == "debug"
    assert (by_region["debug"].ondemand_price, by_region["debug"].spot_price) == (0.0, None)
    assert by_region["debug"].instance_type == "debug-2cpu"
    assert by_region["scav"].spot_price == 0.5
    assert (by_region["scav"].accelerator, by_region["scav"].accelerator_count) == ("A100", 1)


@pytest.mark.parametrize(
    ("cfg", "words"),
    [
        ({}, "partitions"),
        ({"partitions": {"debug": {"cpus": 2}}}, "memory_gb"),
        ({"partitions": {"debug": {"cpus": 2, "memory_gb": 1, "cpu": 3}}}, "unknown key 'cpu'"),
        ({"partitions": {"debug": {"cpus": -1, "memory_gb": 1}}}, "debug.cpus"),
        ({"partitions": {"debug": {"cpus": 1, "memory_gb": 1, "gpus": 1}}}, "gpu"),
        ({"partitions": {"debug": {"cpus": 1, "memory_gb": 1}}, "clusterz": 1}, "clusterz"),
    ],
)
def test_bad_config_is_named(cfg, words):
    with pytest.raises(SlurmConfigError, match=words):
        SlurmProvider.from_config(cfg, default_root=Path("/tmp/x"))


def test_nodelist_expansion():
    assert expand_nodelist("gpu[01-03,07],cpu7,n[8-10]") == [
        "gpu01",
        "gpu02",
        "gpu03",
        "gpu07",
        "cpu7",
        "n8",
        "n9",
        "n10",
    ]
    assert expand_nodelist("localhost") == ["localhost"]


def _agent(key: str, rank: int, n: int, root: Path) -> AgentConfig:
    return AgentConfig(
        instance_key=key,
        attempt_id="j1-a1",
        job_id=1,
        task_id="t",
        attempt=1,
        node_rank=rank,
        num_nodes=n,
        setup=None,
        run="true",
        envs={"SPOTD_NODE_IPS": "127.0.0.1\n127.0.0.1"},
        daemon_url="unix:/nowhere",
        token="x",
        checkpoint_store=str(root / "ckpt"),
    )


def test_node_entry_takes_rank_and_ips_from_slurm(tmp_path: Path):
    for r in range(2):
        d = tmp_path / f"n{r}"
        d.mkdir()
        (d / "agent.json").write_text(
            json.dumps({"num_nodes": 2, "node_rank": r, "envs": {"SPOTD_NODE_IPS": "x\nx"}})
        )
    node_dir = node_entry(
        tmp_path, {"SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "localhost,127.0.0.1"}
    )
    assert node_dir == tmp_path / "n1"
    cfg = json.loads((node_dir / "agent.json").read_text())
    assert cfg["node_rank"] == 1
    assert cfg["envs"]["SPOTD_NODE_IPS"] == "127.0.0.1\n127.0.0.1"


class FakeSlurm(SlurmProvider):
    """The provider with its command runner replaced: records argv, plays sbatch/squeue."""

    def __init__(self, root: Path) -> None:
        super().__init__(
            root=root,
            partitions=parse_partitions(
                {"debug": {"cpus": 1, "memory_gb": 0.25, "preemptible": True}}
            ),
        )
        self.calls: list[tuple[str, ...]] = []
        self.jobs: list[dict[str, object]] = []

    async def _run(self, *argv: str) -> tuple[int, str, str]:
        self.calls.append(argv)
        await asyncio.sleep(0.01)
        if argv[0] == "squeue":
            return 0, json.dumps({"errors": [], "jobs": self.jobs}), ""
        if argv[0] == "sbatch":
            opts = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)
            self.jobs.append(
                {
                    "job_id": 40 + len(self.jobs),
                    "name": opts["job-name"],
                    "job_state": "RUNNING",
                    "partition": opts["partition"],
                    "comment": opts["comment"],
                    "restart_cnt": 0,
                }
            )
            return 0, f"{self.jobs[-1]['job_id']}\n", ""
        return 0, "", ""


async def test_a_gang_is_one_sbatch_with_srun_across_its_nodes(tmp_path: Path):
    p = FakeSlurm(tmp_path)

    def spec(rank: int) -> InstanceSpec:
        key = f"j1-a1-n{rank}"
        return InstanceSpec(
            key=key,
            region="debug",
            zone="debug",
            instance_type="debug-1cpu",
            market=Market.SPOT,
            tags={TAG_HOME: "h", TAG_KEY: key, TAG_NODE: str(rank)},
            agent=_agent(key, rank, 3, tmp_path),
        )

    ids = await asyncio.gather(*(p.launch(spec(r)) for r in range(3)))
    assert ids == ["40:0", "40:1", "40:2"]
    sbatch = [c for c in p.calls if c[0] == "sbatch"]
    assert len(sbatch) == 1
    argv = sbatch[0]
    assert "--job-name=spotd-j1-a1" in argv and "--nodes=3" in argv and "--no-requeue" in argv
    assert "srun --nodes=3 --ntasks=3 --ntasks-per-node=1" in argv[-1]
    for r in range(3):
        assert (
            json.loads((tmp_path / "h" / "spotd-j1-a1" / f"n{r}" / "agent.json").read_text())[
                "node_rank"
            ]
            == r
        )
    listed = {o.key: o for o in await p.list_instances()}
    assert set(listed) == {"j1-a1-n0", "j1-a1-n1", "j1-a1-n2"}
    assert listed["j1-a1-n2"].tags[TAG_NODE] == "2" and listed["j1-a1-n2"].id == "40:2"
    # a retried launch (after a daemon restart) finds the job instead of submitting again
    assert await FakeSlurm.launch(p, spec(1)) == "40:1"
    assert len([c for c in p.calls if c[0] == "sbatch"]) == 1


async def test_on_demand_is_refused_in_a_preemptible_partition(tmp_path: Path):
    p = FakeSlurm(tmp_path)
    s = InstanceSpec(
        key="j1-a1-n0",
        region="debug",
        zone="debug",
        instance_type="debug-1cpu",
        market=Market.ON_DEMAND,
        tags={TAG_HOME: "h"},
        agent=_agent("j1-a1-n0", 0, 1, tmp_path),
    )
    with pytest.raises(InvalidRequest, match="spot only"):
        await p.launch(s)
    with pytest.raises(InvalidRequest, match="not offered"):
        await p.launch(
            InstanceSpec(
                key="k",
                region="nope",
                zone="nope",
                instance_type="x",
                market=Market.SPOT,
                tags={},
                agent=s.agent,
            )
        )


async def test_a_rejected_job_does_not_stand_for_a_launch_but_a_finished_one_does(tmp_path):
    p = FakeSlurm(tmp_path)
    s = InstanceSpec(
        key="j1-a1-n0",
        region="debug",
        zone="debug",
        instance_type="debug-1cpu",
        market=Market.SPOT,
        tags={TAG_HOME: "h", TAG_KEY: "j1-a1-n0"},
        agent=_agent("j1-a1-n0", 0, 1, tmp_path),
    )
    comment = encode_comment(s.tags, [s.key])
    base = {"name": "spotd-j1-a1-n0", "partition": "debug", "comment": comment, "restart_cnt": 0}
    # sbatch records a job it rejects (BadConstraints): it never had a node
    p.jobs.append({**base, "job_id": 7, "job_state": "FAILED", "nodes": ""})
    # another daemon's job of the same name
    p.jobs.append(
        {
            **base,
            "job_id": 8,
            "job_state": "RUNNING",
            "nodes": "localhost",
            "comment": encode_comment({TAG_HOME: "other"}, [s.key]),
        }
    )
    assert await p.launch(s) == "42"
    p.jobs[-1].update(job_state="COMPLETED", nodes="localhost")
    assert await p.launch(s) == "42"  # it ran: launching again would run the node twice
