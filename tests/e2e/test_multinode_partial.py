"""A multi-node job keeps its healthy nodes when one is lost: one replacement, one restart.

A real daemon on the local provider runs a 4-node job (each node prints its rank, the node
count, the node addresses and its generation, then trains with checkpoints). Node 2's
instance is SIGKILLed: the daemon launches exactly one instance (node 2's replacement) in
the same attempt, the three healthy instances keep running, the run restarts on all four
with the new node list, and the job finishes with the uninterrupted result. A notice on one
node (``spotctl chaos preempt --notice``) replaces it the same way, at once, and every node
resumes from the final checkpoint the noticed node synced. With partial
recovery off (``SPOTD_NODE_REPLACEMENTS=0``) the same loss relaunches every node; and when
the zone refuses the replacement, the whole job moves to another region, as before.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProc, kill_instance_groups
from tests.e2e.helpers import expected_digest, logs, wait_job, wait_log

pytestmark = pytest.mark.slow

TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}
STEPS = 120


def gang_yaml(nodes: int) -> str:
    return f"""
name: gang
num_nodes: {nodes}
resources:
  cpus: 1+
  use_spot: true
workdir: examples
envs:
  TRAIN_STEPS: {STEPS}
  STEP_SECONDS: 0.05
  CKPT_EVERY: 5
run: |
  echo "GANG rank=$SKYPILOT_NODE_RANK of=$SKYPILOT_NUM_NODES gen=${{SPOTD_GENERATION:-0}} \\
  ips=$(echo "$SKYPILOT_NODE_IPS" | paste -sd, -)"
  python3 train.py
"""


def _daemon(extra_env: dict[str, str] | None = None) -> Iterator[DaemonProc]:
    home = Path(f"/tmp/spotd-mn{os.getpid()}-{time.monotonic_ns() % 10**9}")
    d = DaemonProc(home, extra_env=extra_env)
    d.start()
    try:
        yield d
    finally:
        d.stop()
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def partial_daemon() -> Iterator[DaemonProc]:
    yield from _daemon()


@pytest.fixture
def full_relaunch_daemon() -> Iterator[DaemonProc]:
    yield from _daemon({"SPOTD_NODE_REPLACEMENTS": "0"})


async def _launches(c: Any) -> int:
    """How many instances the daemon asked its providers for (its Prometheus counter)."""
    text = await c.request("GET", "/metrics")
    found = re.search(r'spotd_provider_calls_total\{call="launch",provider="local"\} (\S+)', text)
    return int(float(found.group(1))) if found else 0


async def test_one_lost_node_is_replaced_and_the_run_restarts_on_every_node(partial_daemon):
    async with partial_daemon.client() as c:
        job = await c.launch(gang_yaml(4), filename="gang.yaml")
        jid = job["id"]
        await wait_job(c, jid, lambda j: j["status"] == "RUNNING", what="4 nodes running")
        await wait_log(c, jid, "step 10 ", attempt=1)
        assert await _launches(c) == 4
        await c.chaos("kill-instance", target=f"j{jid}-a1-n2")
        await wait_log(c, jid, "(node-2-g1) GANG rank=2 of=4 gen=1", attempt=1)
        job = await wait_job(c, jid, lambda j: j["status"] in TERMINAL, timeout=120)
        text = await logs(c, jid, attempt=1)
        events = await c.events(jid)
        launched = await _launches(c)
    said = [f"{e['kind']}: {e['message']}" for e in events]  # what a failure shows
    assert job["status"] == "SUCCEEDED", (job, said)
    # four, then node 2's replacement: no other node was launched again
    assert launched == 5, said
    assert len(job["attempts"]) == 1 and job["attempts"][0]["end_reason"] == "SUCCEEDED", said
    assert job["preemptions"] == 1 and job["recoveries"] == 1, said
    replaced = [e for e in events if e["kind"] == "node.replaced"]
    assert len(replaced) == 1, said
    assert f"j{jid}-a1-n2" in replaced[0]["message"] and "node 2" in replaced[0]["message"]
    ips = ",".join(["127.0.0.1"] * 4)
    for rank in range(4):
        # the kept nodes ran twice on the same instance (same log), the replacement once
        log_name = "node-2-g1" if rank == 2 else f"node-{rank}"
        assert f"({log_name}) GANG rank={rank} of=4 gen=1 ips={ips}" in text, text[-3000:]
        if rank != 2:
            assert f"(node-{rank}) GANG rank={rank} of=4 gen=0 ips={ips}" in text
    # every node resumed from a checkpoint and finished with the uninterrupted result
    assert text.count("resumed from step") >= 4
    digests = re.findall(r"DIGEST (\w+)", text)
    assert digests and set(digests) == {expected_digest(STEPS)} and len(digests) == 4


async def test_with_partial_recovery_off_a_lost_node_relaunches_every_node(full_relaunch_daemon):
    async with full_relaunch_daemon.client() as c:
        job = await c.launch(gang_yaml(2), filename="gang.yaml")
        jid = job["id"]
        await wait_job(c, jid, lambda j: j["status"] == "RUNNING", what="2 nodes running")
        await wait_log(c, jid, "step 10 ", attempt=1)
        await c.chaos("kill-instance", target=f"j{jid}-a1-n1")
        job = await wait_job(c, jid, lambda j: j["status"] in TERMINAL, timeout=120)
        events = await c.events(jid)
        launched = await _launches(c)
    assert job["status"] == "SUCCEEDED", job
    assert launched == 4  # two, then two again
    assert [a["end_reason"] for a in job["attempts"]] == ["PREEMPTED", "SUCCEEDED"]
    assert not [e for e in events if e["kind"] == "node.replaced"]
    assert any("partial recovery is off" in e["message"] for e in events)


async def test_a_replacement_the_zone_refuses_moves_the_whole_job(partial_daemon):
    async with partial_daemon.client() as c:
        job = await c.launch(gang_yaml(2), filename="gang.yaml")
        jid = job["id"]
        job = await wait_job(c, jid, lambda j: j["status"] == "RUNNING", what="2 nodes running")
        await wait_log(c, jid, "step 10 ", attempt=1)
        first = job["attempts"][0]
        await c.chaos("stockout", target=first["region"], seconds=60)
        await c.chaos("kill-instance", target=f"j{jid}-a1-n1")
        job = await wait_job(c, jid, lambda j: j["status"] in TERMINAL, timeout=120)
        events = await c.events(jid)
    assert job["status"] == "SUCCEEDED", job
    kinds = [e["kind"] for e in events]
    assert "node.replaced" in kinds  # tried in the zone first...
    ends = [(a["end_reason"], a["end_detail"]) for a in job["attempts"]]
    # ...which refused: the attempt ended as preempted (it ran: its cost counts), and the
    # whole job was placed again in another region
    assert ends[0][0] == "PREEMPTED" and "replacement" in ends[0][1], ends
    assert ends[-1][0] == "SUCCEEDED"
    assert job["attempts"][-1]["region"] != first["region"]


def _node_lines(text: str, log_name: str) -> list[str]:
    """The lines of one node's log (``(node-1) ...``), its prefix cut."""
    prefix = f"({log_name}) "
    return [line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)]


def _resumed_after_restart(lines: list[str]) -> int:
    """The step a node's generation-1 run resumed from."""
    at = next(i for i, line in enumerate(lines) if " gen=1 " in line and "GANG" in line)
    found = next(
        re.search(r"resumed from step (\d+)", line) for line in lines[at:] if "resumed" in line
    )
    assert found is not None, lines[at:]
    return int(found.group(1))


async def test_a_notice_on_one_node_replaces_it_and_every_node_resumes_from_its_final_checkpoint(
    partial_daemon,
):
    async with partial_daemon.client() as c:
        job = await c.launch(gang_yaml(2), filename="gang.yaml")
        jid = job["id"]
        await wait_job(c, jid, lambda j: j["status"] == "RUNNING", what="2 nodes running")
        await wait_log(c, jid, "step 10 ", attempt=1)
        cli = partial_daemon.spotctl("chaos", "preempt", f"j{jid}-a1-n1", "--notice", "30")
        assert cli.returncode == 0 and "notice" in cli.stdout, cli
        await wait_log(c, jid, "(node-1-g1) GANG rank=1 of=2 gen=1", attempt=1)
        job = await wait_job(c, jid, lambda j: j["status"] in TERMINAL, timeout=120)
        text = await logs(c, jid, attempt=1)
        events = await c.events(jid)
        launched = await _launches(c)
    said = [f"{e['kind']}: {e['message']}" for e in events]
    assert job["status"] == "SUCCEEDED", (job, said)
    # two, then node 1's replacement alone; node 0 kept running on its instance
    assert launched == 3, said
    assert len(job["attempts"]) == 1 and job["attempts"][0]["end_reason"] == "SUCCEEDED", said
    assert job["preemptions"] == 1 and job["recoveries"] == 1, said
    replaced = [e for e in events if e["kind"] == "node.replaced"]
    assert len(replaced) == 1, said
    message = replaced[0]["message"]
    assert f"j{jid}-a1-n1" in message and "node 1" in message and "notice" in message, message
    assert not [e for e in events if e["kind"] == "nodes.relaunch"], said
    # the noticed node checkpointed on its notice and synced that as its final snapshot...
    noticed = _node_lines(text, "node-1")
    final = [
        int(m.group(1)) for line in noticed if (m := re.search(r"SIGTERM at step (\d+)", line))
    ]
    assert len(final) == 1, noticed
    assert any("checkpoint synced after notice" in line for line in noticed), noticed
    # ...and both nodes' next run resumed from exactly that step, then finished right
    assert _resumed_after_restart(_node_lines(text, "node-0")) == final[0], text[-3000:]
    assert _resumed_after_restart(_node_lines(text, "node-1-g1")) == final[0], text[-3000:]
    digests = re.findall(r"DIGEST (\w+)", text)
    assert digests == [expected_digest(STEPS)] * 2, text[-3000:]
