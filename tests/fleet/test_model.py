"""The fleet's cloud model on a fake clock: launches, reclaims, notices, the agent's news."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from spotd.providers.fleet.catalog import fleet_offers
from spotd.providers.fleet.model import FleetModel, ModelConfig, Refused, job_plan
from spotd.providers.fleet.trace import load_region_traces, steps_between
from spotd.types import InstanceState


@pytest.mark.parametrize(
    ("run", "plan"),
    [
        ("sleep 30", (30.0, 0)),
        ("sleep infinity", (math.inf, 0)),
        ("python train.py; sleep 2.5; exit 3", (2.5, 3)),
        ("sleep 1 && sleep 2", (3.0, 0)),
        ("echo hi", (0.0, 0)),
        (None, (0.0, 0)),
        ("exit 1; exit 7", (0.0, 7)),
    ],
)
def test_a_run_script_says_how_long_the_job_runs_and_how_it_exits(
    run: str | None, plan: tuple[float, int]
) -> None:
    assert job_plan(run) == plan


def spec(key: str, *, market: str = "spot", run: str = "sleep 100", zone: str = "a") -> Any:
    return {
        "key": key,
        "region": "fleet-east",
        "zone": f"fleet-east-{zone}",
        "instance_type": "cpu-1",
        "market": market,
        "tags": {"spotd-home": "h"},
        "agent": {"run": run, "heartbeat_seconds": 5.0},
    }


def model(**cfg: Any) -> FleetModel:
    return FleetModel(ModelConfig(launch_jitter=0.0, **cfg), offers=fleet_offers())


def states(m: FleetModel) -> dict[str, str]:
    return {i.key: str(i.state) for i in m.instances()}


def test_an_instance_is_pending_for_the_launch_latency_then_its_agent_reports_run() -> None:
    m = model(launch_seconds=2.0)
    m.launch(spec("j1-a1-n0"), now=100.0)
    assert list(m.advance(101.9)) == [] and states(m) == {"j1-a1-n0": "PENDING"}
    news = list(m.advance(102.0))
    assert [(i.key, i.phase) for i in news] == [("j1-a1-n0", "run")]
    assert states(m) == {"j1-a1-n0": "RUNNING"}


def test_launch_is_idempotent_and_refuses_what_the_zone_does_not_sell() -> None:
    m = model()
    assert m.launch(spec("k"), now=0).id == m.launch(spec("k"), now=1).id
    with pytest.raises(Refused) as e:
        m.launch({**spec("x"), "instance_type": "nope"}, now=0)
    assert e.value.kind == "invalid"


def test_a_run_ends_with_its_exit_code_reported_once() -> None:
    m = model(launch_seconds=1.0)
    inst = m.launch(spec("k", run="sleep 10; exit 4"), now=0)
    list(m.advance(1.0))
    assert inst.report() == ("run", None, None)
    news = list(m.advance(11.0))
    assert news == [inst] and inst.report() == ("exited", 4, None)


CHECKPOINTS = "sleep 10  # writes spotd-progress with each checkpoint"


def _checkpointing(key: str, attempt: int, rank: int = 0) -> Any:
    s = spec(key, run=CHECKPOINTS)
    s["agent"] |= {
        "checkpoint_sync_seconds": 0.5,
        "checkpoint_store": "/ckpt/j7",
        "attempt": attempt,
        "node_rank": rank,
    }
    return s


def test_a_run_that_checkpoints_reports_its_syncs_and_the_next_attempt_resumes() -> None:
    m = model(launch_seconds=1.0)
    plain = m.launch(spec("j8-a1-n0", run="sleep 100"), now=0)
    other = m.launch(_checkpointing("j7-a1-n1", 1, rank=1), now=0)  # node 0 checkpoints
    first = m.launch(_checkpointing("j7-a1-n0", 1), now=0)
    list(m.advance(1.0))  # both run from t = 1
    assert m.checkpoint(first, 1.4) is None  # no sync yet
    assert m.checkpoint(first, 4.2) == (4.0, 0.3)  # the newest sync: 3 s of 10
    assert m.checkpoint(plain, 4.2) is None  # a run that does not name spotd-progress
    assert m.checkpoint(other, 4.2) is None
    m.kill(first.id, now=5.3)  # lost: what it synced by 5.0 is in the store
    assert m.checkpoint(first, 9.0) == (5.0, 0.4)
    second = m.launch(_checkpointing("j7-a2-n0", 2), now=6.0)
    list(m.advance(7.0))
    assert second.resumed == 0.4
    assert m.checkpoint(second, 8.0) == (8.0, 0.5)
    # an older attempt's sync never overwrites a newer one's: a third attempt resumes at 0.5
    m.checkpoint(first, 9.0)
    m.terminate(second.id, now=8.2)
    third = m.launch(_checkpointing("j7-a3-n0", 3), now=9.0)
    beside = m.launch(_checkpointing("j7-a3-n1", 3, rank=1), now=9.0)
    news = list(m.advance(10.0))
    assert third.resumed == 0.5
    # and both its nodes run only the rest: 5 of their 10 s
    assert sorted(i.key for i in news) == ["j7-a3-n0", "j7-a3-n1"]
    assert not {third.key, beside.key} & {i.key for i in m.advance(14.9)}
    assert [i.report() for i in m.advance(15.0)] == [("exited", 0, None)] * 2


def test_a_notice_is_listed_then_the_instance_is_reclaimed_at_its_deadline() -> None:
    m = model(launch_seconds=0.0)
    inst = m.launch(spec("k"), now=0)
    list(m.advance(0.0))
    m.preempt(inst.id, now=5.0, notice_seconds=30.0)
    assert inst.state == InstanceState.NOTICE and inst.notice_deadline == 35.0
    assert inst.report() == ("preempted", None, 35.0)  # the agent checkpointed and says so
    list(m.advance(34.9))
    assert inst.state == InstanceState.NOTICE
    list(m.advance(35.0))
    assert inst.state == InstanceState.PREEMPTED and m.preempted_at == {"k": 5.0}


def test_a_terminated_instance_gets_no_more_events_and_leaves_the_listing_later() -> None:
    m = model(launch_seconds=0.0, forget_seconds=60.0)
    inst = m.launch(spec("k", run="sleep 10"), now=0)
    list(m.advance(0.0))
    m.terminate(inst.id, now=1.0)
    m.terminate(inst.id, now=2.0)  # a no-op
    assert list(m.advance(20.0)) == []  # its run's end is never reported: the machine is gone
    assert [i.key for i in m.list_region("fleet-east")] == ["k"]
    list(m.advance(61.0))
    assert m.list_region("fleet-east") == []
    assert m.list_calls["fleet-east"] == 2


def test_a_rate_preempts_spot_instances_only_and_is_repeatable_by_seed() -> None:
    def run(seed: int) -> dict[str, str]:
        m = model(launch_seconds=0.0, preempt_rate_per_hour=3600.0, seed=seed)
        for n in range(20):
            m.launch(spec(f"s{n}", run="sleep infinity"), now=0)
            m.launch(spec(f"o{n}", market="on-demand", run="sleep infinity"), now=0)
        list(m.advance(10.0))  # a mean life of one second: ten are plenty
        return states(m)

    got = run(1)
    assert got == run(1)
    assert all(s == "PREEMPTED" for k, s in got.items() if k.startswith("s"))
    assert all(s == "RUNNING" for k, s in got.items() if k.startswith("o"))


def test_a_stockout_refuses_its_market_in_its_region_until_it_ends() -> None:
    m = model()
    m.stockout("fleet-east", now=0.0, seconds=10.0, market="spot")
    with pytest.raises(Refused) as e:
        m.launch(spec("a"), now=5.0)
    assert e.value.kind == "capacity"
    m.launch(spec("b", market="on-demand"), now=5.0)
    m.launch(spec("c"), now=10.5)
    with pytest.raises(KeyError):
        m.stockout("mars", now=0.0, seconds=1.0, market=None)


def test_a_keep_alive_is_due_once_per_period_unless_news_came_first() -> None:
    m = model(launch_seconds=0.0)
    inst = m.launch(spec("k"), now=0)
    list(m.advance(0.0))
    m.beat_later(inst, 5.0)
    m.beat_later(inst, 7.0)  # a report went out at 2.0: the keep-alive moves
    assert list(m.advance(6.0)) == []
    assert list(m.advance(7.0)) == [inst]


@pytest.mark.parametrize(
    ("data", "t0", "t1", "steps"),
    [
        ([4, 4, 2, 2], 0, 35, [(0.0, True), (0.5, True), (0.0, True)]),
        ([1, 0, 1], 0, 25, [(1.0, False), (0.0, True)]),
        ([1, 0], 15, 25, [(0.0, True)]),  # it loops: tick 2 reads data[0] again
    ],
)
def test_a_trace_reclaims_the_share_its_availability_drops(
    tmp_path: Path, data: list[int], t0: float, t1: float, steps: list[tuple[float, bool]]
) -> None:
    (tmp_path / "z.json").write_text(json.dumps({"metadata": {"gap_seconds": 10}, "data": data}))
    (trace,) = load_region_traces(tmp_path, ["fleet-east"])
    got = [(s.reclaim_share, s.available) for s in steps_between(trace, t0, t1)]
    assert got == steps


def test_a_share_of_a_regions_running_spot_instances_is_reclaimed() -> None:
    m = model(launch_seconds=0.0)
    for n in range(10):
        m.launch(spec(f"s{n}", run="sleep infinity"), now=0)
    list(m.advance(0.0))
    assert m.reclaim_share("fleet-east", 0.3, now=1.0) == 3
    assert sorted(states(m).values()).count("PREEMPTED") == 3


def test_a_listing_since_a_revision_carries_only_what_changed_and_every_key() -> None:
    m = model(launch_seconds=1.0, forget_seconds=5.0)
    a = m.launch(spec("a"), now=0)
    m.launch(spec("b"), now=0)
    keys, changed = m.changed_since("fleet-east", -1)
    assert keys == ["a", "b"] and [i.key for i in changed] == ["a", "b"]
    rev = m.rev
    assert m.changed_since("fleet-east", rev) == (["a", "b"], [])
    list(m.advance(1.0))  # both RUNNING now
    m.preempt(a.id, now=2.0, notice_seconds=None)
    rev2 = m.rev
    keys, changed = m.changed_since("fleet-east", rev)
    assert [(i.key, str(i.state)) for i in changed] == [("a", "PREEMPTED"), ("b", "RUNNING")]
    list(m.advance(8.0))  # a is forgotten: gone from the keys, nothing "changed" to say so
    assert m.changed_since("fleet-east", rev2) == (["b"], [])
