"""Listing jobs, tailing events, reading zone history."""

from __future__ import annotations

from typing import Any

from spotd.store import Store
from spotd.types import JobStatus


def test_list_jobs_newest_first_filtered_and_limited(
    store: Store, make_job: Any, clock: Any
) -> None:
    jobs = [make_job(f"job{i}") for i in range(4)]
    store.transition_job(
        jobs[1].id,
        from_=[JobStatus.PENDING],
        to=JobStatus.CANCELLING,
        reason="cancel",
        now=clock.tick(),
    )
    store.transition_job(
        jobs[1].id,
        from_=[JobStatus.CANCELLING],
        to=JobStatus.CANCELLED,
        reason="done",
        now=clock.tick(),
    )
    store.transition_job(
        jobs[2].id, from_=[JobStatus.PENDING], to=JobStatus.STARTING, reason="go", now=clock.tick()
    )
    assert [j.name for j in store.list_jobs()] == ["job3", "job2", "job1", "job0"]
    assert [j.name for j in store.list_jobs(limit=2)] == ["job3", "job2"]
    assert [j.name for j in store.list_jobs(statuses=[JobStatus.PENDING])] == ["job3", "job0"]
    assert [j.name for j in store.list_jobs(statuses=["CANCELLED"])] == ["job1"]  # type: ignore[list-item]
    assert store.list_jobs(statuses=[]) == []
    assert [j.name for j in store.active_jobs()] == ["job0", "job2", "job3"]  # oldest first
    assert store.job_counts() == {
        JobStatus.PENDING: 2,
        JobStatus.CANCELLED: 1,
        JobStatus.STARTING: 1,
    }
    assert store.get_job(999) is None


def test_job_page_of_deadline_jobs_only(
    store: Store, make_job: Any, make_attempt: Any, clock: Any
) -> None:
    """What ``/metrics`` reads for the pace gauges: DEADLINE jobs only, with their attempts
    and without the instances (a pace does not read them)."""
    paced = make_job("paced", deadline=clock() + 3600.0)
    plain = make_job("plain")
    make_attempt(paced.id)
    make_attempt(plain.id)
    page = store.job_page(deadline_only=True, nodes=False)
    assert [j.name for j in page.jobs] == ["paced"]
    assert [a.attempt for a in page.attempts[paced.id]] == [1]
    assert page.nodes == {}
    [current] = page.attempts[paced.id]
    assert [n.node_rank for n in store.job_page(deadline_only=True).nodes[current.id]] == [0, 1]
    assert [j.name for j in store.job_page().jobs] == ["plain", "paced"]


def test_events_tail_by_id_and_by_job(store: Store, make_job: Any, clock: Any) -> None:
    j1, j2 = make_job(), make_job()
    store.add_event(
        kind="chaos.preempt",
        message="chaos: preempt i-1",
        now=clock.tick(),
        job_id=j1.id,
        data={"ids": ["i-1"], "notice": 5.0},
    )
    store.add_event(kind="instance.leak", message="terminated i-9", now=clock.tick())
    every = store.events()
    assert [e.kind for e in every] == ["job.status", "job.status", "chaos.preempt", "instance.leak"]
    assert [e.id for e in every] == sorted(e.id for e in every)
    assert every[2].data == {"ids": ["i-1"], "notice": 5.0} and every[3].job_id is None
    assert store.events(since_id=every[1].id) == every[2:]
    assert store.events(since_id=every[1].id, limit=1) == every[2:3]
    assert [e.kind for e in store.events(job_id=j1.id)] == ["job.status", "chaos.preempt"]
    assert [e.kind for e in store.events(job_id=j2.id)] == ["job.status"]


def test_zone_history_since(store: Store, clock: Any) -> None:
    t0 = clock()
    for i, kind in enumerate(["PREEMPTED", "STOCKOUT", "PREEMPTED"]):
        store.add_zone_event(
            provider="local",
            region="local-east",
            zone=f"local-east-{'abc'[i]}",
            kind=kind,
            at=t0 + 10 * i,
            detail=f"d{i}",
        )
    old = store.zone_events(since=0)
    assert [(z.zone, z.kind, z.at) for z in old] == [
        ("local-east-a", "PREEMPTED", t0),
        ("local-east-b", "STOCKOUT", t0 + 10),
        ("local-east-c", "PREEMPTED", t0 + 20),
    ]
    assert store.zone_events(since=t0 + 10) == old[1:]
    assert store.zone_events(since=t0 + 21) == []
