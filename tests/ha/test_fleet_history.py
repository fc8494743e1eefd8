"""What the chaos test reads from the fleet: when each run started and stopped, and how many
instances each key made (the fleet's own record of "nothing ran twice")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from spotd.providers.fleet.catalog import fleet_offers
from spotd.providers.fleet.model import FleetModel, ModelConfig


def spec(key: str, run: str = "sleep 100") -> dict[str, Any]:
    return {
        "key": key,
        "region": "fleet-east",
        "zone": "fleet-east-a",
        "instance_type": "cpu-1",
        "market": "spot",
        "tags": {"spotd-job": key.split("-")[0][1:]},
        "agent": {"run": run},
    }


def model(**cfg: Any) -> FleetModel:
    return FleetModel(ModelConfig(launch_jitter=0.0, **cfg), offers=fleet_offers())


def row(m: FleetModel, key: str) -> dict[str, Any]:
    (found,) = [r for r in m.history() if r["key"] == key]
    return found


def exits_then_terminated(m: FleetModel) -> None:
    list(m.advance(131.0))  # "sleep 30" from 101
    m.terminate("fleet-j1-a1-n0", now=140.0)


def noticed(m: FleetModel) -> None:
    m.preempt("j1-a1-n0", now=120.0, notice_seconds=10)


def reclaimed(m: FleetModel) -> None:
    m.preempt("j1-a1-n0", now=120.0, notice_seconds=None)


def terminated(m: FleetModel) -> None:
    m.terminate("fleet-j1-a1-n0", now=125.0)


@pytest.mark.parametrize(
    ("end", "stopped_at", "phase"),
    [
        # the run ends by itself: stopped when it exited, not when its owner terminated it
        (exits_then_terminated, 131.0, "exited"),
        # a reclaim with a notice: the agent stops the run at the notice, not at the deadline
        (noticed, 120.0, "preempted"),
        # a reclaim without one, and a terminate while it runs
        (reclaimed, 120.0, "run"),
        (terminated, 125.0, "run"),
    ],
)
def test_the_history_says_when_a_run_started_and_first_stopped(
    end: Callable[[FleetModel], None], stopped_at: float, phase: str
) -> None:
    m = model(launch_seconds=1.0)
    m.launch(spec("j1-a1-n0", "sleep 30"), now=100.0)
    assert row(m, "j1-a1-n0")["ran_at"] is None
    list(m.advance(101.0))
    end(m)
    list(m.advance(200.0))  # a notice's deadline passes too: the stop time stays the first
    got = row(m, "j1-a1-n0")
    assert (got["ran_at"], got["stopped_at"], got["phase"]) == (101.0, stopped_at, phase)


def test_an_instance_that_never_ran_has_no_run_times() -> None:
    m = model(launch_seconds=5.0)
    m.launch(spec("j2-a1-n0"), now=100.0)
    m.terminate("fleet-j2-a1-n0", now=101.0)
    list(m.advance(200.0))
    got = row(m, "j2-a1-n0")
    assert (got["ran_at"], got["stopped_at"], got["state"]) == (None, None, "TERMINATED")


def test_a_key_launched_again_after_the_fleet_forgot_it_counts_two_launches() -> None:
    m = model(launch_seconds=1.0, forget_seconds=10.0)
    m.launch(spec("j3-a1-n0"), now=100.0)
    m.launch(spec("j3-a1-n0"), now=100.5)  # idempotent: the same instance
    assert row(m, "j3-a1-n0")["launches"] == 1
    m.terminate("fleet-j3-a1-n0", now=101.0)
    list(m.advance(120.0))  # forgotten
    assert m.history() == []
    m.launch(spec("j3-a1-n0"), now=121.0)
    assert row(m, "j3-a1-n0")["launches"] == 2
    assert m.launches_by_key == {"j3-a1-n0": 2}
