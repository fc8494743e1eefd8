"""The cluster's loops (spotd.control.cluster) on a real store: renewals, losing the lease,
takeovers and leadership. SQLite plays the shared database (the lease functions are the same;
the wake-up listener, PostgreSQL's LISTEN, is exercised by the HA tier in tests/ha)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from spotd.config import Settings
from spotd.control.cluster import Cluster, surplus, wake_target
from spotd.control.jobs import Controller
from spotd.metrics import DaemonMetrics
from spotd.store import AsyncStore
from spotd.store.leases import Takeover
from spotd.types import JobStatus


@pytest.mark.parametrize(
    ("payload", "want"),
    [("j12", ("j", 12)), ("s3", ("s", 3)), ("x1", None), ("j", None), ("j1a", None), ("", None)],
)
def test_wake_payloads(payload: str, want: tuple[str, int] | None) -> None:
    assert wake_target(payload) == want


@pytest.mark.parametrize(
    ("mine", "total", "live", "at_most", "hand_over"),
    [
        (10, 10, 1, 50, 0),  # alone: everything is its share
        (10, 10, 2, 50, 5),  # a second daemon joined: half goes
        (100, 100, 3, 50, 50),  # a third of 100 is 34: 66 over, 50 at a time
        (6, 10, 2, 50, 0),  # one over a share of 5 is not worth moving
        (7, 10, 2, 50, 2),  # two over is
        (37, 100, 3, 50, 0),  # 3 over a share of 34 is within a tenth of it: stays
        (40, 100, 3, 50, 6),
        (3, 4, 2, 50, 0),  # the last job does not go back and forth
        (0, 0, 2, 50, 0),
    ],
)
def test_surplus(mine: int, total: int, live: int, at_most: int, hand_over: int) -> None:
    assert surplus(mine, total, live, at_most=at_most) == hand_over


def _settings(tmp_path: Path, daemon_id: str, lease: float) -> Settings:
    return Settings(
        home=tmp_path / daemon_id,
        db_url=f"sqlite:///{tmp_path / 'state.db'}",
        ha=True,
        daemon_id=daemon_id,
        lease_seconds=lease,
    )


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[list[AsyncStore]]:
    opened = [await AsyncStore.open(f"sqlite:///{tmp_path / 'state.db'}") for _ in range(2)]
    try:
        yield opened
    finally:
        for s in opened:
            await s.close()


async def _job(store: AsyncStore, name: str) -> int:
    row = await store.create_job(
        name=name,
        task_id_prefix="t-",
        spec_json="{}",
        spec_redacted_json="{}",
        resources="cpu",
        submitted_at=time.time(),
    )
    return row.id


def _cluster(
    tmp_path: Path,
    store: AsyncStore,
    daemon_id: str,
    lease: float,
    taken: list[Takeover] | None = None,
) -> Cluster:
    return Cluster(
        settings=_settings(tmp_path, daemon_id, lease),
        store=store,
        on_takeover=(taken.append if taken is not None else lambda t: None),
        on_wake=lambda k, i: None,
    )


async def _until(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_daemon_whose_work_was_taken_over_loses_its_lease(
    tmp_path: Path, stores: list[AsyncStore]
) -> None:
    a_store, b_store = stores
    taken: list[Takeover] = []
    a = _cluster(tmp_path, a_store, "a", 1.0)
    b = _cluster(tmp_path, b_store, "b", 30.0, taken)
    await a.join()
    await b.join()
    jobs = [await _job(a_store, f"j{i}") for i in range(3)]
    renewed = a._renewed
    renew = asyncio.create_task(a._renew_loop())
    takeover: asyncio.Task[None] | None = None
    try:
        assert await _until(lambda: a._renewed > renewed)  # a renews: nothing to take
        assert (await b_store.take_over()).jobs == () and not a.lost.is_set()
        assert b.leading() is False and a.leading() is False  # neither has looked yet
        renew.cancel()  # a stops renewing (paused): b takes over after the lease
        takeover = asyncio.create_task(b._takeover_loop())
        assert await _until(lambda: bool(taken))
        assert sorted(taken[0].jobs) == jobs and taken[0].from_ == ("a",)
        assert b.leading()
        a._renewed = time.monotonic()  # a wakes up, believing its lease fresh
        renew = asyncio.create_task(a._renew_loop())
        assert await _until(a.lost.is_set)
        assert "taken over" in a.reason
    finally:
        renew.cancel()
        if takeover is not None:
            takeover.cancel()
        b.lost.set()


async def test_a_daemon_paused_for_a_whole_lease_stops_without_asking(
    tmp_path: Path, stores: list[AsyncStore]
) -> None:
    """Even before anyone took over: a view older than the lease is never acted on."""
    a = _cluster(tmp_path, stores[0], "a", 1.0)
    await a.join()
    a._renewed = time.monotonic() - 5.0  # as after a SIGSTOP of 5 s
    task = asyncio.create_task(a._renew_loop())
    try:
        assert await _until(a.lost.is_set)
        assert a.reason.startswith("no renewal for")
    finally:
        task.cancel()


async def test_a_clean_stop_hands_the_work_over_at_the_next_pass(
    tmp_path: Path, stores: list[AsyncStore]
) -> None:
    a_store, b_store = stores
    taken: list[Takeover] = []
    a = _cluster(tmp_path, a_store, "a", 30.0)
    b = _cluster(tmp_path, b_store, "b", 30.0, taken)
    await a.join()
    await b.join()
    job = await _job(a_store, "j")
    await a.leave()
    task = asyncio.create_task(b._takeover_loop())
    try:
        assert await _until(lambda: bool(taken), timeout=5)  # not 30 s: the lease was given up
        assert taken[0].jobs == (job,)
    finally:
        b.lost.set()
        task.cancel()


async def test_a_job_is_handed_over_by_its_own_worker_between_two_steps(
    tmp_path: Path, stores: list[AsyncStore]
) -> None:
    """The cluster loop only marks the job; its worker, at the top of its loop (never inside
    a step), clears the owner and stops. A job that changed meanwhile is not handed over."""
    store = stores[0]
    settings = _settings(tmp_path, "a", 30.0)
    await store.join_cluster("a", url="", lease_seconds=30.0)
    ctl = Controller(settings=settings, store=store, providers={}, metrics=DaemonMetrics())
    steps: list[int] = []
    inside, finish = asyncio.Event(), asyncio.Event()

    async def step(job: object, watched: object = None) -> float:
        steps.append(job.id)  # type: ignore[attr-defined]
        inside.set()
        await finish.wait()  # a step in flight until the test lets it end
        return 3600.0

    ctl._step = step  # type: ignore[method-assign]
    moving, staying = await _job(store, "moving"), await _job(store, "staying")
    for j in (moving, staying):
        await store.transition_job(
            j, from_=[JobStatus.PENDING], to=JobStatus.RUNNING, reason="up", now=time.time()
        )
        ctl.spawn_worker(j)
    try:
        await asyncio.wait_for(inside.wait(), 5)
        ctl.release([moving], "evening the load")
        # only marked: the worker, blocked inside its step, has not taken the mark yet
        assert ctl.releasing == {moving: "evening the load"}
        assert (await store.require_job(moving)).owner == "a"
        finish.set()
        assert await _until(lambda: ctl.workers.size() == 1)
        assert (await store.require_job(moving)).owner is None
        assert steps.count(moving) == 1  # no step after the hand-over

        # cancelled through another daemon before the worker got to it: it stays here
        await store.transition_job(
            staying,
            from_=[JobStatus.RUNNING],
            to=JobStatus.CANCELLING,
            reason="user",
            now=time.time(),
        )
        before = steps.count(staying)
        ctl.release([staying], "evening the load")
        assert await _until(lambda: steps.count(staying) > before)
        assert (await store.require_job(staying)).owner == "a" and ctl.workers.size() == 1
    finally:
        ctl.stop.set()
        await ctl.shutdown()


async def test_a_clean_stop_hands_over_only_to_another_ready_daemon(
    tmp_path: Path, stores: list[AsyncStore]
) -> None:
    """What decides whether a clean stop ends its services' LBs (``lbkeeper.hand_over``): the
    last daemon standing keeps them for its restart, as a daemon alone does."""
    a_store, b_store = stores
    a = _cluster(tmp_path, a_store, "a", 30.0)
    b = _cluster(tmp_path, b_store, "b", 30.0)
    await a.join()
    a.live = (await a_store.take_over()).live
    assert a.live == ("a",) and not a.others_take_over()  # alone
    await b.join()
    a.live = (await a_store.take_over()).live
    assert not a.others_take_over()  # b joined but is still starting
    await b_store.take_over()
    a.live = (await a_store.take_over()).live
    assert a.live == ("a", "b") and a.others_take_over()
    a.lost.set()
    assert not a.others_take_over()  # fenced: nothing is handed over by a stop
