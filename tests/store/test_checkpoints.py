"""The newest checkpoint reported for a job, on its row (``Store.record_checkpoint``), as two
daemons on one database record it: a report older than the row's never moves it back."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Connection

from spotd.store import Store
from spotd.types import JobStatus


def _record(store: Store, job_id: int, attempt: int, synced_at: float, work: float) -> bool:
    return store.record_checkpoint(
        job_id, attempt=attempt, synced_at=synced_at, received_at=synced_at + 1.0, work_done=work
    )


@pytest.mark.parametrize(
    ("current", "reports", "want"),
    [
        # (the job's current attempt, reports in the order recorded, the row after them):
        # each report is (attempt, synced_at, work done, recorded?); the row is
        # (checkpoint_attempt, checkpoint_synced_at, checkpoint_received_at, work_done_seconds)
        (1, [(1, 100.0, 10.0, True)], (1, 100.0, 101.0, 10.0)),
        (1, [(1, 100.0, 10.0, True), (1, 200.0, 20.0, True)], (1, 200.0, 201.0, 20.0)),
        # a later daemon recorded the newer one first: the older one is refused
        (1, [(1, 200.0, 20.0, True), (1, 100.0, 10.0, False)], (1, 200.0, 201.0, 20.0)),
        (1, [(1, 100.0, 10.0, True), (1, 100.0, 10.0, False)], (1, 100.0, 101.0, 10.0)),
        # an older attempt's report after the newer attempt's, whatever its sync time
        (2, [(2, 50.0, 13.0, True), (1, 300.0, 15.0, False)], (2, 50.0, 51.0, 13.0)),
        # an older attempt's last snapshot before the newer attempt reports: recorded, and
        # its work counts only if it says more
        (2, [(1, 300.0, 15.0, True)], (1, 300.0, 301.0, 15.0)),
        (2, [(1, 300.0, 8.0, True)], (1, 300.0, 301.0, 12.0)),
        # the current attempt may report less work than an older one did (it resumed from
        # less)
        (2, [(1, 100.0, 20.0, True), (2, 10.0, 5.0, True)], (2, 10.0, 11.0, 5.0)),
        # an attempt later than the row's current one (placed, the row not moved yet) too
        (1, [(1, 100.0, 20.0, True), (2, 10.0, 5.0, True)], (2, 10.0, 11.0, 5.0)),
    ],
)
def test_the_row_keeps_the_newest_checkpoint(
    store: Store,
    open_store: Callable[[], Store],
    make_job: Any,
    clock: Any,
    current: int,
    reports: list[tuple[int, float, float, bool]],
    want: tuple[int, float, float, float],
) -> None:
    a, b = store, open_store()  # two daemons on one database, taking turns
    job = make_job()
    a.update_job_fields(job.id, now=clock(), current_attempt=current, work_done_seconds=12.0)
    got = [
        _record((a, b)[i % 2], job.id, n, at, work) for i, (n, at, work, _) in enumerate(reports)
    ]
    assert got == [recorded for *_, recorded in reports]
    row = b.require_job(job.id)
    seen = (
        row.checkpoint_attempt,
        row.checkpoint_synced_at,
        row.checkpoint_received_at,
        row.work_done_seconds,
    )
    assert seen == want


def test_an_ended_job_records_nothing(store: Store, clock: Any, make_job: Any) -> None:
    job = make_job()
    store.transition_job(
        job.id, from_=[JobStatus.PENDING], to=JobStatus.CANCELLED, reason="x", now=clock()
    )
    assert not _record(store, job.id, 1, 100.0, 10.0)
    assert store.require_job(job.id).checkpoint_synced_at is None


class _Holding(Store):
    """A store whose write transactions wait, their statements run and the row locked,
    until ``release`` is set: another daemon's write arrives meanwhile."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.holding = False  # from the next write on
        self.written = threading.Event()
        self.release = threading.Event()

    @contextmanager
    def _write(self, *, fenced: bool = True) -> Iterator[Connection]:
        with super()._write(fenced=fenced) as conn:
            yield conn
            if self.holding:
                self.written.set()
                self.release.wait(timeout=30.0)


@pytest.mark.parametrize(
    ("first", "second", "want"),
    [
        ((1, 200.0, 20.0), (1, 100.0, 10.0), (True, False, 200.0, 20.0)),
        ((1, 100.0, 10.0), (1, 200.0, 20.0), (True, True, 200.0, 20.0)),
    ],
)
def test_two_daemons_recording_at_once_keep_the_newest(
    db_url: str,
    store: Store,
    make_job: Any,
    clock: Any,
    first: tuple[int, float, float],
    second: tuple[int, float, float],
    want: tuple[bool, bool, float, float],
) -> None:
    """Daemon A's write is in its transaction (the row written, not committed) when daemon
    B's arrives: B's is decided on the row as A leaves it, so an older report that was read
    as newer before A committed does not overwrite A's. (B is given half a second to reach
    A's lock; on a machine too slow for that the case only runs the two in turn, which
    passes either way: it cannot fail wrongly.)"""
    a, b = _Holding.open(db_url), store
    try:
        job = make_job()
        b.update_job_fields(job.id, now=clock(), current_attempt=1)
        got: dict[str, bool] = {}
        a.holding = True
        held = threading.Thread(target=lambda: got.update(a=_record(a, job.id, *first)))
        held.start()
        assert a.written.wait(timeout=30.0)
        racing = threading.Thread(target=lambda: got.update(b=_record(b, job.id, *second)))
        racing.start()
        racing.join(timeout=0.5)  # B waits for A's transaction (the row lock, or SQLite's)
        a.release.set()
        held.join(timeout=30.0)
        racing.join(timeout=30.0)
        row = b.require_job(job.id)
        assert (got["a"], got["b"], row.checkpoint_synced_at, row.work_done_seconds) == want
    finally:
        a.release.set()
        a.close()
