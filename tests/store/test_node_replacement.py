"""A node replacement is one transaction; a survivor's old run cannot report past it."""

from __future__ import annotations

from typing import Any

import pytest

from spotd.store import InstanceRow, StaleTransition, Store
from spotd.types import AttemptStatus, EndReason


def beat(store: Store, key: str, phase: str, code: int | None = None) -> InstanceRow:
    return store.record_heartbeat(key, now=2e9, phase=phase, exit_code=code, notice_deadline=None)


def _replace(store: Store, aid: str, now: float) -> None:
    store.replace_nodes(
        aid,
        lost=[f"{aid}-n1"],
        replacements=[{"key": f"{aid}-n1-g1", "node_rank": 1, "token": "tok-new"}],
        restart=[f"{aid}-n0", f"{aid}-n2"],
        reason="node 1 replaced (preempted)",
        now=now,
    )


def test_replace_nodes_writes_the_intent_and_restarts_the_survivors(
    store: Store, make_job: Any, make_attempt: Any, clock: Any
) -> None:
    job = make_job()
    a = make_attempt(job.id, nodes=3)
    for r in store.instances(attempt_id=a.id):
        beat(store, r.key, "run")
    store.transition_attempt(
        a.id, from_=[AttemptStatus.PROVISIONING], to=AttemptStatus.RUNNING, reason="up", now=clock()
    )
    _replace(store, a.id, clock())
    rows = {r.key: r for r in store.instances(attempt_id=a.id)}
    assert set(rows) == {f"{a.id}-n0", f"{a.id}-n1", f"{a.id}-n2", f"{a.id}-n1-g1"}
    new = rows[f"{a.id}-n1-g1"]
    assert new.node_rank == 1 and new.instance_id is None and new.phase is None
    assert (new.provider, new.region, new.zone) == ("local", "local-east", "local-east-a")
    assert rows[f"{a.id}-n0"].phase == rows[f"{a.id}-n2"].phase == "restarting"
    assert rows[f"{a.id}-n1"].phase == "run"  # the lost node's last word stays as history
    attempt = store.require_attempt(a.id)
    assert attempt.status == AttemptStatus.PROVISIONING and attempt.started_at is not None
    kinds = [e.kind for e in store.events(job_id=job.id)]
    assert "node.replaced" in kinds
    replaced = next(e for e in store.events(job_id=job.id) if e.kind == "node.replaced")
    assert "node 1 replaced" in replaced.message and replaced.attempt_id == a.id


def test_an_ended_attempt_gets_no_replacement(
    store: Store, make_job: Any, make_attempt: Any, clock: Any
) -> None:
    job = make_job()
    a = make_attempt(job.id, nodes=2)
    store.transition_attempt(
        a.id,
        from_=[AttemptStatus.PROVISIONING],
        to=AttemptStatus.ENDED,
        reason="gone",
        now=clock(),
        end_reason=EndReason.PREEMPTED,
    )
    with pytest.raises(StaleTransition):
        _replace(store, a.id, clock())
    assert len(store.instances(attempt_id=a.id)) == 2  # nothing half-written


def test_a_restarting_node_reports_only_its_restart(
    store: Store, make_job: Any, make_attempt: Any, clock: Any
) -> None:
    job = make_job()
    a = make_attempt(job.id, nodes=3)
    _replace(store, a.id, clock())
    key = f"{a.id}-n0"
    # the old run's heartbeat, in flight when the replacement was decided: dropped
    row = beat(store, key, "run", 143)
    assert (row.phase, row.exit_code) == ("restarting", None)
    assert row.last_heartbeat_at is not None  # the agent is alive all the same
    row = beat(store, key, "waiting")
    assert row.phase == "waiting"
    row = beat(store, key, "run")
    assert row.phase == "run"
    row = beat(store, key, "exited", 0)
    assert (row.phase, row.exit_code) == ("exited", 0)
