"""Project limits in the store: what a project holds, and the check and insert in one
transaction (``create_job``, ``create_service(admit=...)``); schema version 4."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from spotd.store import (
    LATEST_VERSION,
    NotFound,
    OverQuota,
    ProjectRow,
    ProjectUsage,
    ServiceStatus,
    Store,
)
from spotd.types import JobStatus

JOB = {
    "name": "train",
    "task_id_prefix": "spotd-abcd-j",
    "spec_json": "{}",
    "spec_redacted_json": "{}",
    "resources": "cpu",
}


def _job(store: Store, clock: Any, *, project: str = "ml", gpus: float = 0.0, **kw: Any) -> Any:
    return store.create_job(**JOB, submitted_at=clock(), project=project, gpus=gpus, **kw)


def _service(store: Store, clock: Any, name: str, *, project: str = "ml", **kw: Any) -> Any:
    port = 20000 + len(store.list_services(live_only=False)) * 2
    return store.create_service(
        name=name,
        spec_json="{}",
        spec_redacted_json="{}",
        lb_port=port,
        lb_control_port=port + 1,
        lb_token=f"t-{name}",
        target=1,
        now=clock(),
        project=project,
        **kw,
    )


def _project(store: Store, clock: Any, name: str = "ml", **limits: Any) -> ProjectRow:
    return store.create_project(
        name=name,
        gpu_quota=limits.pop("gpu_quota", None),
        token_hash=f"h-{name}",
        now=clock(),
        **limits,
    )


def test_usage_counts_active_jobs_and_live_services_of_the_project(
    store: Store, clock: Any
) -> None:
    _project(store, clock)
    a = _job(store, clock, gpus=4)
    _job(store, clock, gpus=0)
    done = _job(store, clock, gpus=8)
    store.transition_job(
        done.id, from_=[JobStatus.PENDING], to=JobStatus.CANCELLED, reason="x", now=clock()
    )
    _job(store, clock, project="other", gpus=16)
    _service(store, clock, "llm", gpus=2)
    down = _service(store, clock, "old", gpus=8)
    store.transition_service(
        down.id, from_=[ServiceStatus.STARTING], to=ServiceStatus.DOWN, reason="x", now=clock()
    )
    assert store.project_usage("ml") == ProjectUsage(
        gpus=6, jobs=2, gpu_jobs=1, services=1, gpu_services=1
    )
    assert store.project_usage("nobody") == ProjectUsage()
    assert store.require_job(a.id).gpus == 4


def _refuse_over(quota: float, gpus: float) -> Callable[[ProjectRow | None, ProjectUsage], Any]:
    def admit(row: ProjectRow | None, usage: ProjectUsage) -> OverQuota | None:
        assert row is not None and row.name == "ml"
        if usage.gpus + gpus > quota:
            return OverQuota(f"over: {usage.gpus} + {gpus}", {"in_use": usage.gpus})
        return None

    return admit


def test_within_quota_inserts_or_refuses_writing_nothing(store: Store, clock: Any) -> None:
    _project(store, clock)
    job = store.create_job(
        admit=_refuse_over(8, 8), **JOB, submitted_at=clock(), project="ml", gpus=8
    )
    assert (job.project, job.gpus, job.status) == ("ml", 8, JobStatus.PENDING)
    events_before = len(store.events())
    with pytest.raises(OverQuota, match=r"over: 8.0 \+ 1") as exc:
        store.create_job(
            admit=_refuse_over(8, 1), **JOB, submitted_at=clock(), project="ml", gpus=1
        )
    assert exc.value.details == {"in_use": 8.0}
    assert [j.id for j in store.list_jobs()] == [job.id]
    assert len(store.events()) == events_before


def test_admit_sees_no_row_for_a_project_without_one(store: Store, clock: Any) -> None:
    seen: list[ProjectRow | None] = []

    def admit(row: ProjectRow | None, usage: ProjectUsage) -> None:
        seen.append(row)

    store.create_job(admit=admit, **JOB, submitted_at=clock(), project="default")
    assert seen == [None]


def test_a_service_is_admitted_in_its_insert(store: Store, clock: Any) -> None:
    _project(store, clock)

    def one_service(row: ProjectRow | None, usage: ProjectUsage) -> OverQuota | None:
        return OverQuota("one service", {}) if usage.services >= 1 else None

    svc = _service(store, clock, "a", gpus=1, admit=one_service)
    assert (svc.project, svc.gpus) == ("ml", 1)
    with pytest.raises(OverQuota, match="one service"):
        _service(store, clock, "b", admit=one_service)
    assert [s.name for s in store.list_services(live_only=False)] == ["a"]


def test_limits_are_created_updated_and_unlimited_by_none(store: Store, clock: Any) -> None:
    p = _project(store, clock, gpu_quota=8, max_jobs=3)
    assert (p.gpu_quota, p.max_jobs, p.max_nodes_per_job, p.max_services) == (8, 3, None, None)
    p = store.update_project("ml", now=clock(), max_nodes_per_job=2, gpu_quota=None)
    assert (p.gpu_quota, p.max_jobs, p.max_nodes_per_job, p.max_services) == (None, 3, 2, None)
    assert store.events()[-1].kind == "project.update"
    with pytest.raises(TypeError, match="not project limits"):
        store.update_project("ml", now=clock(), token_hash="x")
    with pytest.raises(NotFound):
        store.update_project("nope", now=clock(), max_jobs=1)


def test_version_4_reserves_the_gpus_of_active_jobs_by_the_old_rule(
    open_store: Callable[[], Store], clock: Any
) -> None:
    """A version-3 database (no limits, no reservations) opened by this spotd."""
    old = open_store()
    spec = {"num_nodes": 2, "resources": {"accelerators": "A100:4"}, "run": "x"}
    active = old.create_job(**{**JOB, "spec_json": json.dumps(spec)}, submitted_at=clock())
    ended = old.create_job(**{**JOB, "spec_json": json.dumps(spec)}, submitted_at=clock())
    old.transition_job(
        ended.id, from_=[JobStatus.PENDING], to=JobStatus.CANCELLED, reason="x", now=clock()
    )
    unreadable = old.create_job(**{**JOB, "spec_json": '{"resources": 7}'}, submitted_at=clock())
    with old.engine.begin() as conn:
        for ddl in (
            "DROP INDEX ix_job_project",
            "DROP INDEX ix_service_project",
            "ALTER TABLE job DROP COLUMN gpus",
            "ALTER TABLE service DROP COLUMN project",
            "ALTER TABLE service DROP COLUMN gpus",
            "ALTER TABLE project DROP COLUMN max_jobs",
            "ALTER TABLE project DROP COLUMN max_nodes_per_job",
            "ALTER TABLE project DROP COLUMN max_services",
            "DROP INDEX ix_event_at",  # version 5
            "ALTER TABLE instance DROP COLUMN agent_json",  # version 6
            "ALTER TABLE instance DROP COLUMN bootstrapped_at",
            "ALTER TABLE instance DROP COLUMN launched_at",  # version 10
            "ALTER TABLE job DROP COLUMN checkpoint_attempt",  # version 13
            "ALTER TABLE job DROP COLUMN checkpoint_synced_at",
            "ALTER TABLE job DROP COLUMN checkpoint_received_at",
            "ALTER TABLE daemon DROP COLUMN ready_at",  # version 14
        ):
            conn.execute(text(ddl))
        conn.execute(text("UPDATE schema_version SET version = 3"))
    old.close()
    new = open_store()
    assert new.schema_version() == LATEST_VERSION >= 4
    assert new.require_job(active.id).gpus == 8  # A100:4 × 2 nodes
    assert new.require_job(ended.id).gpus == 0  # it holds nothing any more
    assert new.require_job(unreadable.id).gpus == 0
    # version 13: no checkpoint reported yet, and the columns take one
    assert new.require_job(active.id).checkpoint_synced_at is None
    new.update_job_fields(active.id, now=clock(), checkpoint_attempt=1, checkpoint_synced_at=5.0)
    got = new.require_job(active.id)
    assert (got.checkpoint_attempt, got.checkpoint_synced_at) == (1, 5.0)
    _project(new, clock, max_jobs=1)
    assert (p := new.get_project("ml")) is not None and p.max_jobs == 1
    assert new.daemons() == []  # version 14: the daemon table reads (ready_at) on the old database
