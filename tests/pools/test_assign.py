"""Which queued pool job goes to which free worker (``spotd.control.pool_queue``): a table."""

from __future__ import annotations

import pytest

from spotd.control.pool_queue import (
    Assignment,
    FreeWorker,
    QueuedJob,
    SlotWorker,
    assign,
    fill_slots,
    pick_for,
)

Q = QueuedJob
W = FreeWorker


@pytest.mark.parametrize(
    ("queue", "free", "expected"),
    [
        pytest.param([], [W(1, 0.0)], [], id="nothing-queued"),
        pytest.param([Q(1, 1.0)], [], [], id="no-free-worker"),
        pytest.param(
            [Q(1, 1.0), Q(2, 2.0), Q(3, 3.0)],
            [W(7, 5.0), W(3, 9.0), W(4, 4.0, noticed=True)],
            [(1, 7), (2, 3)],
            id="docstring-example",
        ),
        pytest.param([Q(5, 3.0), Q(2, 1.0)], [W(1, 0.0)], [(2, 1)], id="oldest-job-first"),
        pytest.param(
            [Q(9, 1.0), Q(4, 1.0)],
            [W(1, 0.0), W(2, 0.0)],
            [(4, 1), (9, 2)],
            id="same-time-by-id",
        ),
        pytest.param(
            [Q(1, 1.0, live=True), Q(2, 2.0)],
            [W(1, 0.0), W(2, 0.0)],
            [(2, 1)],
            id="a-live-job-is-never-handed-out-twice",
        ),
        pytest.param([Q(1, 1.0)], [W(1, 8.0), W(2, 3.0)], [(1, 2)], id="longest-idle-worker-first"),
        pytest.param([Q(1, 1.0)], [W(1, 1.0, noticed=True)], [], id="a-noticed-worker-is-not-free"),
        pytest.param(
            [Q(3, 5.0), Q(1, 1.0)],
            [W(1, 0.0)],
            [(1, 1)],
            id="a-requeued-job-keeps-its-place",
        ),
    ],
)
def test_assign(
    queue: list[QueuedJob], free: list[FreeWorker], expected: list[tuple[int, int]]
) -> None:
    got = assign(queue, free)
    assert got == [Assignment(job=j, worker=w) for j, w in expected]
    # no job and no worker twice
    assert len({a.job for a in got}) == len(got) == len({a.worker for a in got})


@pytest.mark.parametrize(
    ("worker", "expected"),
    [(7, 1), (3, 2), (4, None), (99, None)],
)
def test_pick_for_gives_the_asking_worker_its_own_pairing(
    worker: int, expected: int | None
) -> None:
    queue = [Q(1, 1.0), Q(2, 2.0), Q(3, 3.0)]
    free = [W(7, 5.0), W(3, 9.0), W(4, 4.0, noticed=True)]
    assert pick_for(worker, queue, free) == expected


# -- fill_slots: which slots get a new worker, which workers go --------------------------

S = SlotWorker


@pytest.mark.parametrize(
    ("workers", "count", "retry_setup", "fill", "cancel"),
    [
        ([], 2, False, (0, 1), ()),  # a new pool
        ([S(0, 4, True), S(1, 5, True)], 2, False, (), ()),  # full
        ([S(0, 4, True), S(1, 5, False)], 2, False, (1,), ()),  # a worker ended: replaced
        ([S(1, 5, False), S(1, 8, True), S(0, 4, True)], 2, False, (), ()),  # replaced already
        # a worker that failed its setup: left empty, but for an apply
        ([S(0, 4, True), S(1, 5, False, failed_setup=True)], 2, False, (), ()),
        ([S(0, 4, True), S(1, 5, False, failed_setup=True)], 2, True, (1,), ()),
        # an older failed setup says nothing once a later worker ended otherwise
        ([S(0, 3, False, failed_setup=True), S(0, 6, False)], 1, False, (0,), ()),
        # resized down: the workers past the count go, ended ones are left alone
        (
            [S(0, 4, True), S(1, 5, True), S(2, 6, True), S(3, 7, False)],
            2,
            False,
            (),
            ((6, "2 workers"),),
        ),
        # two daemons filled slot 0 at once: the oldest stays, whatever order the rows come in
        (
            [S(0, 9, True), S(0, 4, True), S(1, 5, True)],
            2,
            False,
            (),
            ((9, "slot 0 has a worker already (job 4)"),),
        ),
        # ... and the slot is not filled again when the newest of them ended
        ([S(0, 4, True), S(0, 9, False)], 1, False, (), ()),
        # the module docstring's example
        (
            [S(0, 4, True), S(0, 9, True), S(1, 5, False), S(2, 6, True)],
            2,
            False,
            (1,),
            ((6, "2 workers"), (9, "slot 0 has a worker already (job 4)")),
        ),
    ],
)
def test_fill_slots(
    workers: list[SlotWorker],
    count: int,
    retry_setup: bool,
    fill: tuple[int, ...],
    cancel: tuple[tuple[int, str], ...],
) -> None:
    plan = fill_slots(workers, count, retry_setup=retry_setup)
    assert plan.fill == fill
    assert plan.cancel == cancel
