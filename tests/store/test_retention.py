"""Retention at the store: bounded deletes of old events and zone events, and the jobs whose
attempt logs may go — on SQLite and PostgreSQL (see conftest)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spotd.store import Store
from spotd.types import JobStatus


@pytest.mark.parametrize(
    ("ats", "before", "limit", "deleted", "left"),
    [
        ([1, 2, 3, 4], 3.0, 10, 2, [3, 4]),  # strictly older than the cutoff
        ([1, 2, 3, 4], 3.0, 1, 1, [2, 3, 4]),  # a batch: the oldest first
        ([1, 2, 3, 4], 0.5, 10, 0, [1, 2, 3, 4]),  # nothing that old
        ([1, 2, 3, 4], 9.0, 3, 3, [4]),  # a full batch: the caller asks again
        ([], 9.0, 3, 0, []),
    ],
)
def test_prune_events_deletes_a_bounded_batch_of_the_oldest(
    store: Store, ats: list[float], before: float, limit: int, deleted: int, left: list[float]
) -> None:
    for at in ats:
        store.add_event(kind="note", message=f"at {at}", now=float(at))
    assert store.prune_events(before=before, limit=limit) == deleted
    assert [e.at for e in store.events()] == left


@pytest.mark.parametrize(
    ("ats", "before", "limit", "deleted", "left"),
    [
        ([5, 1, 3], 4.0, 10, 2, [5]),  # written out of order: by age, not by id
        ([5, 1, 3], 4.0, 1, 1, [3, 5]),
        ([5, 1, 3], 1.0, 10, 0, [1, 3, 5]),
    ],
)
def test_prune_zone_events_deletes_by_age(
    store: Store, ats: list[float], before: float, limit: int, deleted: int, left: list[float]
) -> None:
    for at in ats:
        store.add_zone_event(provider="local", region="r", zone="z", kind="preempted", at=at)
    assert store.prune_zone_events(before=before, limit=limit) == deleted
    assert [z.at for z in store.zone_events(since=0)] == left


def test_pruning_a_large_backlog_in_batches(store: Store) -> None:
    for i in range(25):
        store.add_event(kind="note", message="old", now=float(i))
    store.add_event(kind="note", message="new", now=100.0)
    batches = []
    while (n := store.prune_events(before=50.0, limit=10)) > 0:
        batches.append(n)
    assert batches == [10, 10, 5]
    assert [e.message for e in store.events()] == ["new"]


@pytest.mark.parametrize(
    ("status", "ended_at", "before", "listed"),
    [
        (JobStatus.SUCCEEDED, 10.0, 20.0, True),
        (JobStatus.SUCCEEDED, 30.0, 20.0, False),  # ended too recently
        (JobStatus.CANCELLED, 10.0, 20.0, True),
        (JobStatus.RUNNING, None, 2e9, False),  # a live job keeps its logs, however old
    ],
)
def test_jobs_ended_before(
    store: Store,
    make_job: Callable[..., Any],
    status: JobStatus,
    ended_at: float | None,
    before: float,
    listed: bool,
) -> None:
    job = make_job()
    other = make_job("other")
    if status != JobStatus.PENDING:
        path = {
            JobStatus.SUCCEEDED: [JobStatus.STARTING, JobStatus.RUNNING, JobStatus.SUCCEEDED],
            JobStatus.CANCELLED: [JobStatus.CANCELLING, JobStatus.CANCELLED],
            JobStatus.RUNNING: [JobStatus.STARTING, JobStatus.RUNNING],
        }[status]
        prev = JobStatus.PENDING
        for to in path:
            extra = {"ended_at": ended_at} if to == status and ended_at is not None else {}
            store.transition_job(job.id, from_=[prev], to=to, reason="t", now=1.0, **extra)
            prev = to
    got = store.jobs_ended_before([job.id, other.id], before=before)
    assert got == ([job.id] if listed else [])


# -- one retention pass, end to end: old rows and logs go, recent ones stay -----------------

DAY = 86400.0


async def test_a_retention_pass_keeps_what_is_recent(
    store: Store, make_job: Callable[..., Any], tmp_path: Path
) -> None:
    from spotd.config import load_settings
    from spotd.control.retention import Pruned, Retention
    from spotd.store import AsyncStore

    now = 1_700_000_000.0
    settings = load_settings(tmp_path / "home", env={})  # defaults: 30, 14 and 14 days
    for age_days in (45, 31, 29, 1):
        store.add_event(kind="note", message=f"{age_days}d", now=now - age_days * DAY)
    for age_days in (20, 15, 13, 0.5):
        store.add_zone_event(
            provider="local", region="r", zone="z", kind="ran", at=now - age_days * DAY
        )
    old, recent, live = make_job("old"), make_job("recent"), make_job("live")
    for job, ended in ((old, now - 20 * DAY), (recent, now - 2 * DAY)):
        store.transition_job(
            job.id, from_=[JobStatus.PENDING], to=JobStatus.CANCELLING, reason="t", now=ended
        )
        store.transition_job(
            job.id,
            from_=[JobStatus.CANCELLING],
            to=JobStatus.CANCELLED,
            reason="t",
            now=ended,
            ended_at=ended,
        )
    for job in (old, recent, live):
        for a in (1, 2):
            d = settings.logs_dir / f"j{job.id}-a{a}"
            d.mkdir(parents=True)
            (d / "node-0.log").write_text("hello\n")
    (settings.logs_dir / f"s{old.id}").mkdir()  # a service's logs are not an attempt's

    astore = AsyncStore(store)
    retention = Retention(
        settings=settings, store=astore, stop=asyncio.Event(), clock=lambda: now, batch=2
    )
    assert await retention.once() == Pruned(events=2, zone_events=2, log_dirs=2)
    assert [e.message for e in store.events() if e.kind == "note"] == ["29d", "1d"]
    assert [round((now - z.at) / DAY, 1) for z in store.zone_events(since=0)] == [13, 0.5]
    left = sorted(p.name for p in settings.logs_dir.iterdir())
    assert left == sorted(
        [f"j{j.id}-a{a}" for j in (recent, live) for a in (1, 2)] + [f"s{old.id}"]
    )
    assert await retention.once() == Pruned()  # nothing more to do


def test_version_5_indexes_events_by_age(store: Store) -> None:
    """A version-4 database gets the index retention deletes by."""
    from sqlalchemy import inspect, text

    from spotd.store.migrations import MIGRATIONS

    def indexes() -> set[str]:
        with store.engine.connect() as conn:
            return {str(ix["name"]) for ix in inspect(conn).get_indexes("event")}

    assert "ix_event_at" in indexes()  # a fresh database has it
    with store.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_event_at"))
        dict(MIGRATIONS)[5](conn)
    assert "ix_event_at" in indexes()
