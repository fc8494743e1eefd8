"""Which rows are an attempt's nodes after replacements, and what each is called."""

from __future__ import annotations

import pytest

from spotd.control.node_keys import (
    current_nodes,
    generation_of,
    node_envs,
    node_log_name,
    replacement_key,
)
from spotd.store import InstanceRow


def row(key: str, rank: int) -> InstanceRow:
    return InstanceRow(
        key=key,
        attempt_id="j3-a1",
        job_id=3,
        node_rank=rank,
        provider="local",
        instance_id=f"local-{key}",
        region="r",
        zone="z",
        state="RUNNING",
        token=f"t-{key}",
        created_at=0.0,
        last_heartbeat_at=None,
        phase="run",
        exit_code=None,
        notice_deadline=None,
        log_offset=0,
        terminated=False,
        terminated_at=None,
    )


@pytest.mark.parametrize(
    ("key", "generation"),
    [("j3-a1-n0", 0), ("j3-a1-n2-g1", 1), ("j3-a12-n10-g12", 12), ("s1-r4", 0), ("j3-a1-g", 0)],
)
def test_generation_of(key: str, generation: int) -> None:
    assert generation_of(key) == generation


def test_replacement_key_round_trips() -> None:
    key = replacement_key("j3-a1", 2, 4)
    assert key == "j3-a1-n2-g4" and generation_of(key) == 4


def test_current_nodes_take_each_ranks_newest_replacement() -> None:
    rows = [
        row("j3-a1-n0", 0),
        row("j3-a1-n1", 1),
        row("j3-a1-n1-g1", 1),
        row("j3-a1-n2", 2),
        row("j3-a1-n1-g3", 1),
        row("j3-a1-n2-g2", 2),
    ]
    assert [r.key for r in current_nodes(rows)] == ["j3-a1-n0", "j3-a1-n1-g3", "j3-a1-n2-g2"]
    assert current_nodes([]) == []


def test_a_replacement_logs_and_starts_apart_from_the_node_it_replaced() -> None:
    assert node_log_name("j3-a1-n1", 1) == "node-1.log"
    assert node_log_name("j3-a1-n1-g2", 1) == "node-1-g2.log"
    assert node_envs("j3-a1-n1") == {}
    assert node_envs("j3-a1-n1-g2") == {"SPOTD_GENERATION": "2"}
