"""Which checkpoint reports become the job's progress (``spotd.control.deadline``).

The running attempt's report sets the work done; an older attempt's counts only if it says
more and the newer attempt has not reported (the checkpoint store keeps the newest attempt's
snapshot); a heartbeat repeating a sync already seen changes nothing; a job without
``expected_duration`` has nothing to scale by. And the checkpoints a return to spot waits
for: a return a restart interrupted is ended, or handed over if the provider had accepted
it; after a restart, or on another daemon, a repeated old sync is not the fresh checkpoint a
return moves at, and the back-off from refused returns goes on, read back from the attempt
rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from spotd.control.attempts import job_view
from spotd.control.deadline import Deadline, next_look, pace, refused_of
from spotd.recovery import returns, strategies
from spotd.recovery.history import ZoneEvent
from spotd.recovery.strategies import JobView, Tuning
from spotd.spec import Task
from spotd.store import AsyncStore, AttemptRow, JobRow
from spotd.types import AttemptStatus, EndReason, JobStatus, RecoveryStrategy, ZoneEventKind
from tests.factories import attempt_row, intent
from tests.recovery.helpers import req, three_regions, zk

DEADLINE = {"strategy": "DEADLINE", "expected_duration": "1000s", "deadline": "1h"}


async def _job(store: AsyncStore, current_attempt: int) -> JobRow:
    job = await store.create_job(
        name="j",
        task_id_prefix="spotd-h-j",
        spec_json="{}",
        spec_redacted_json="{}",
        resources="cpu",
        submitted_at=0.0,
    )
    return await store.transition_job(
        job.id,
        from_=[JobStatus.PENDING],
        to=JobStatus.STARTING,
        reason="test",
        now=1.0,
        current_attempt=current_attempt,
    )


async def _running_on_demand(store: AsyncStore, *, deadline: float) -> tuple[JobRow, AttemptRow]:
    """A DEADLINE job RUNNING on its first attempt, on-demand."""
    job = await _job(store, current_attempt=1)
    return await _run(store, job, 1, at=2.0, deadline=deadline, market="on-demand")


async def _run(
    store: AsyncStore, job: JobRow, n: int, *, at: float, deadline: float, market: str = "spot"
) -> tuple[JobRow, AttemptRow]:
    """Attempt ``n`` of the STARTING ``job`` runs from ``at``, and the job with it."""
    a = await store.create_attempt(intent(job.id, n, now=at, market=market))
    job = await store.transition_job(
        job.id,
        from_=[JobStatus.STARTING],
        to=JobStatus.RUNNING,
        reason="running",
        now=at,
        deadline=deadline,
    )
    a = await store.transition_attempt(
        a.id, from_=[AttemptStatus.PROVISIONING], to=AttemptStatus.RUNNING, reason="up", now=at
    )
    return job, a


def _paced(*, work: float) -> JobView:
    """A 5000 s DEADLINE job due 10000 s after submission, paced by its checkpoints; 60 s
    restarts (the line: 0.5 s of work per second)."""
    return JobView(
        strategy=RecoveryStrategy.DEADLINE,
        request=req(use_spot=True),
        num_nodes=1,
        submitted_at=0.0,
        deadline=10_000.0,
        expected_duration=5_000.0,
        work_done=work,
        progress_from_checkpoints=True,
        restart_overhead=60.0,
        safety_margin=30.0,
    )


def _deadline(store: AsyncStore) -> Deadline:
    async def never(*_: Any) -> Any:
        raise AssertionError("not asked when recording progress")

    return Deadline(
        store=store,
        attempts=None,  # type: ignore[arg-type]  # ending attempts is not under test here
        job_view=never,
        placeable=never,  # type: ignore[arg-type]
        history=never,
    )


@pytest.mark.parametrize(
    ("reports", "work"),
    [
        ([(2, 0.30, 10.0)], 300.0),  # the running attempt
        ([(2, 0.30, 10.0), (2, 0.25, 20.0)], 250.0),  # its newer checkpoint, even if less
        ([(2, 0.30, 10.0), (2, 0.90, 10.0)], 300.0),  # the same sync repeated: ignored
        ([(2, 0.30, 10.0), (1, 0.40, 15.0)], 300.0),  # older, after the newer reported
        ([(1, 0.40, 10.0), (1, 0.35, 12.0)], 400.0),  # older, saying less: not counted
        ([(1, 0.40, 10.0)], 400.0),  # an older attempt's final snapshot, saying more
    ],
)
async def test_which_reports_count(
    store: AsyncStore, reports: list[tuple[int, float, float]], work: float
) -> None:
    job = await _job(store, current_attempt=2)
    task = Task.model_validate({"run": "x", "job_recovery": DEADLINE})
    d = _deadline(store)
    for attempt, fraction, at in reports:
        await d.checkpointed(job.id, lambda _: task, attempt, fraction, at, received_at=at + 1.0)
    assert (await store.require_job(job.id)).work_done_seconds == work


async def test_a_job_without_expected_duration_records_nothing(store: AsyncStore) -> None:
    job = await _job(store, current_attempt=1)
    task = Task.model_validate({"run": "x"})
    assert not await _deadline(store).checkpointed(
        job.id, lambda _: task, 1, 0.5, 10.0, received_at=11.0
    )
    assert (await store.require_job(job.id)).work_done_seconds == 0.0


class _Ends:
    """The attempts' provider-facing half, recording what it is asked to end and stop."""

    def __init__(self) -> None:
        self.ended: list[tuple[str, EndReason]] = []
        self.terminated: list[str] = []

    async def end(self, aid: str, end: EndReason, detail: str, now: float) -> None:
        self.ended.append((aid, end))

    async def terminate(self, aid: str) -> None:
        self.terminated.append(aid)


@pytest.mark.parametrize("made", [True, False], ids=["launched", "in-flight"])
async def test_a_return_a_restart_interrupted_is_finished_and_handed_over(
    store: AsyncStore, made: bool
) -> None:
    """The spot attempt was written beside the on-demand one, and the daemon stopped before
    the hand-over, with the provider's answer recorded or still in flight: the spot attempt
    may have run since (and saved checkpoints the checkpoint store will not let the on-demand
    attempt overwrite), so the next step finishes its launch (``Attempts.launch_nodes`` finds
    a node the provider made by its key) and hands the job over."""
    job, od = await _running_on_demand(store, deadline=10_000.0)
    spot = await store.create_attempt(intent(job.id, 2, now=3.0))
    if made:
        await store.set_instance_id(f"j{job.id}-a2-n0", "i-spot", now=4.0)
    launches = _Launches()
    d = _on_the_line(store, launches)
    task = Task.model_validate({"run": "x", "job_recovery": DEADLINE})
    assert await _move(d, job, task, od, now=10.0)
    assert launches.launched == [spot.id] and launches.terminated == [od.id]
    moved = await store.require_job(job.id)
    assert (moved.current_attempt, moved.status) == (spot.attempt, JobStatus.STARTING)
    assert (await store.require_attempt(od.id)).end_reason == EndReason.MIGRATED
    assert (await store.require_attempt(spot.id)).ended_at is None
    events = [e.message for e in await store.events(job_id=job.id)]
    assert any("resuming a return to spot that a restart interrupted" in m for m in events)


async def test_a_return_a_restart_interrupted_that_is_refused_leaves_the_job(
    store: AsyncStore,
) -> None:
    """The same, and the provider refuses the launch: the spot attempt ends LAUNCH_FAILED and
    the job stays on on-demand."""
    job, od = await _running_on_demand(store, deadline=10_000.0)
    spot = await store.create_attempt(intent(job.id, 2, now=3.0))
    launches = _Refuses(store)
    d = _on_the_line(store, launches)
    task = Task.model_validate({"run": "x", "job_recovery": DEADLINE})
    assert not await _move(d, job, task, od, now=10.0)
    assert launches.launched[0] == spot.id and od.id not in launches.terminated
    assert (await store.require_attempt(spot.id)).end_reason == EndReason.LAUNCH_FAILED
    stayed = await store.require_job(job.id)
    assert (stayed.current_attempt, stayed.status) == (od.attempt, JobStatus.RUNNING)


class _Launches(_Ends):
    """``_Ends`` that also launches: every spot launch beside on-demand is accepted."""

    class _Counter:
        def labels(self, *_: str) -> _Launches._Counter:
            return self

        def inc(self) -> None:
            pass

    def __init__(self) -> None:
        super().__init__()
        self.launched: list[str] = []
        self.metrics = type("M", (), {"attempts": self._Counter()})()

    async def launch_nodes(self, job: JobRow, task: Task, aid: str) -> str | None:
        self.launched.append(aid)
        return None


async def _move(d: Deadline, job: JobRow, task: Task, attempt: AttemptRow, now: float) -> bool:
    """``d.move`` given the job's row as its worker reads it at each step (the newest
    checkpoint reported, from whichever daemon recorded it)."""
    return await d.move(await d.store.require_job(job.id), task, attempt, now)


def _on_the_line(
    store: AsyncStore,
    launches: _Launches,
    zones: list[ZoneEvent] | None = None,
    lag: list[float] | None = None,
    tuning: Tuning | None = None,
) -> Deadline:
    """A controller whose job is exactly on the uniform-progress line (``_paced``), or
    ``lag[0]`` seconds of work behind it, in three regions with the zone history ``zones``
    (none if not given; both read at each look), launching through ``launches``."""

    async def on_the_line(job: JobRow, task: Task, now: float) -> JobView:
        return _paced(work=now / 2 - (lag or [0.0])[0])

    async def history(now: float) -> list[Any]:
        return list(zones or [])

    return Deadline(
        store=store,
        attempts=launches,  # type: ignore[arg-type]
        job_view=on_the_line,
        placeable=lambda project, task: three_regions(),
        history=history,
        tuning=tuning,
    )


async def _checkpoint(d: Deadline, job: JobRow, task: Task, at: float) -> None:
    """Attempt 1 of ``job`` synced a checkpoint at ``at``, as far along as its line."""
    assert await d.checkpointed(job.id, lambda _: task, 1, at / 10_000, at, received_at=at)


async def _decided_then_refused_everywhere(
    d: Deadline, job: JobRow, task: Task, od: AttemptRow, zones: list[ZoneEvent]
) -> None:
    """A return decided at the checkpoint of t = 2000; every spot zone refused a launch at
    t = 2010 (other jobs'); the next checkpoint at t = 2020."""
    await _checkpoint(d, job, task, 2_000.0)
    assert not await _move(d, job, task, od, now=2_000.0)  # decided
    zones.extend(
        ZoneEvent(zk(e.zone), ZoneEventKind.LAUNCH_FAILED, 2_010.0) for e in three_regions()
    )
    await _checkpoint(d, job, task, 2_020.0)


@pytest.mark.parametrize(("hold", "tried"), [(30.0, False), (5.0, True)])
async def test_a_return_keeps_the_daemons_zone_hold(
    store: AsyncStore, hold: float, tried: bool
) -> None:
    """Every spot zone refused a launch 10 s ago: a return tries spot only if the daemon's
    zone hold (``zone_hold_seconds``, 30 s by default) has passed."""
    job, od = await _running_on_demand(store, deadline=10_000.0)
    task = Task.model_validate({"run": "x", "job_recovery": DEADLINE})
    zones: list[ZoneEvent] = []
    launches = _Launches()
    d = _on_the_line(store, launches, zones, tuning=Tuning(hold_seconds=hold))
    await _decided_then_refused_everywhere(d, job, task, od, zones)
    assert await _move(d, job, task, od, now=2_020.0) is tried
    assert (len(launches.launched) == 1) is tried


@pytest.mark.parametrize("meanwhile", ["held", "falls-behind", "spot-gone"])
async def test_a_return_waits_out_a_hold_without_being_decided_again(
    store: AsyncStore, meanwhile: str
) -> None:
    """A return decided; then every spot zone is held (other jobs' refusals): it is not tried,
    and not called off either, so it is not decided and announced again when the hold ends; it
    moves at the first checkpoint after the hold, not at one synced during it. Unless, during
    the hold, the job falls behind its line (by more than a restart) or its catalog loses spot:
    then it is called off, and decided, and announced, again once that is over."""
    job, od = await _running_on_demand(store, deadline=10_000.0)
    task = Task.model_validate({"run": "x", "job_recovery": DEADLINE})
    zones: list[ZoneEvent] = []
    lag = [0.0]
    launches = _Launches()
    d = _on_the_line(store, launches, zones, lag)
    no_spot = [dataclasses.replace(e, spot_price=None) for e in three_regions()]
    await _decided_then_refused_everywhere(d, job, task, od, zones)
    lag[0] = 100.0 if meanwhile == "falls-behind" else 0.0
    if meanwhile == "spot-gone":
        d.placeable = lambda project, task: no_spot
    assert not await _move(d, job, task, od, now=2_020.0)
    called_off = meanwhile != "held"
    assert d.pending(job.id, od.attempt) is not called_off and launches.launched == []
    zones.clear()  # the hold is over; the checkpoint synced during it is not the one
    lag[0] = 0.0
    d.placeable = lambda project, task: three_regions()
    assert not await _move(d, job, task, od, now=2_050.0)
    await _checkpoint(d, job, task, 2_060.0)
    assert await _move(d, job, task, od, now=2_060.0)
    assert len(launches.launched) == 1 and launches.terminated == [od.id]
    said = [e.message for e in await store.events(job_id=job.id)]
    decided = 2 if called_off else 1
    assert sum("trying spot beside the on-demand attempt" in m for m in said) == decided, said


async def test_a_return_is_tried_at_the_checkpoint_the_rule_holds_at(store: AsyncStore) -> None:
    """On on-demand the checkpointed work stands still between checkpoints while the line
    rises, so the rule that holds at a checkpoint may not hold a minute later. The return is
    tried at the look that first sees the checkpoint at which the rule holds (as the
    simulator tries it), not decided there and tried at a later checkpoint, which a rule
    true only at checkpoints would never reach: it was called off between them, decided
    again at the next, and the job stayed on on-demand to the end."""
    job, od = await _running_on_demand(store, deadline=10_000.0)
    task = Task.model_validate({"run": "x", "job_recovery": DEADLINE})
    lag = [100.0]  # behind the line by more than a restart (60 s): no return
    launches = _Launches()
    d = _on_the_line(store, launches, lag=lag)
    await _checkpoint(d, job, task, 1_900.0)
    assert not await _move(d, job, task, od, now=1_900.0)
    assert not await _move(d, job, task, od, now=1_960.0)
    assert not d.pending(job.id, od.attempt) and launches.launched == []
    lag[0] = 0.0  # the checkpoint at 2000 puts the job on the line
    await _checkpoint(d, job, task, 2_000.0)
    assert await _move(d, job, task, od, now=2_000.0)
    assert len(launches.launched) == 1 and launches.terminated == [od.id]
    said = [e.message for e in await store.events(job_id=job.id)]
    assert not any("trying spot beside" in m for m in said), said  # tried, not announced


async def test_a_first_look_decides_and_waits_for_a_checkpoint(store: AsyncStore) -> None:
    """A daemon's first look at an on-demand attempt (after a restart, or on the daemon the
    job moved to) has seen no earlier checkpoint of it: the one the row holds may be long
    old, so the return is decided and announced, and tried at the next checkpoint."""
    job, od = await _running_on_demand(store, deadline=10_000.0)
    task = Task.model_validate({"run": "x", "job_recovery": DEADLINE})
    launches = _Launches()
    d = _on_the_line(store, launches)
    await _checkpoint(d, job, task, 2_000.0)
    assert not await _move(d, job, task, od, now=2_500.0)
    assert d.pending(job.id, od.attempt) and launches.launched == []
    await _checkpoint(d, job, task, 2_600.0)
    assert await _move(d, job, task, od, now=2_600.0)
    said = [e.message for e in await store.events(job_id=job.id)]
    assert (
        sum("trying spot beside the on-demand attempt at the next checkpoint" in m for m in said)
        == 1
    )


@pytest.mark.parametrize("ahead", [0.0, 200.0, -200.0])
@pytest.mark.parametrize("elsewhere", [False, True], ids=["restarted", "reports-elsewhere"])
async def test_a_return_moves_at_a_fresh_checkpoint_whoever_received_it(
    store: AsyncStore, ahead: float, elsewhere: bool
) -> None:
    """A daemon recorded a sync and stopped; the one that runs the job now (restarted, or
    another daemon on the same database) decides a return, and the agent's next heartbeat
    repeats that old sync. The return waits for a newer one (moving at the old one would
    throw away what ran since), then launches spot beside on-demand and hands over, whichever
    way the agent's clock is off (``ahead`` of the daemons' by so many seconds, or behind).
    ``elsewhere``: every report reaches another daemon than the one that runs the job (with
    several daemons an agent reports to whichever its ``daemon_url`` reaches); the job's row
    carries it."""
    job, od = await _running_on_demand(store, deadline=10_000.0)
    task = Task.model_validate({"run": "x", "job_recovery": DEADLINE})
    launches = _Launches()
    gone = _on_the_line(store, launches)
    assert await gone.checkpointed(
        job.id, lambda _: task, 1, 0.2, 2_100.0 + ahead, received_at=2_101.0
    )
    d = _on_the_line(store, launches)  # restarted, or the daemon the job moved to
    reports = _on_the_line(store, _Launches()) if elsewhere else d
    assert not await _move(d, job, task, od, now=2_200.0)  # decided
    assert not await reports.checkpointed(  # the repeated old sync: nothing new
        job.id, lambda _: task, 1, 0.2, 2_100.0 + ahead, received_at=2_201.0
    )
    assert not await _move(d, job, task, od, now=2_201.0)
    assert launches.launched == []
    assert await reports.checkpointed(  # a fresh checkpoint: the job's worker is woken
        job.id, lambda _: task, 1, 0.22, 2_250.0 + ahead, received_at=2_251.0
    )
    assert await _move(d, job, task, od, now=2_251.0)
    assert len(launches.launched) == 1 and launches.terminated == [od.id]
    moved = await store.require_job(job.id)
    assert moved.current_attempt == 2 and moved.status == JobStatus.STARTING


@pytest.mark.parametrize(
    ("now", "work", "ahead", "slack"),
    [
        (0.0, 0.0, 0.0, 5_000.0),  # just submitted: on the line, all the slack
        (4_000.0, 2_000.0, 0.0, 3_000.0),  # 40 % done at 40 % of the time
        (4_000.0, 1_900.0, -100.0, 2_900.0),  # behind the line
        (4_000.0, 2_500.0, 500.0, 3_500.0),  # ahead of it
        (12_000.0, 4_000.0, -1_000.0, -3_000.0),  # past the deadline, work left: late
    ],
)
def test_pace_is_work_against_the_line_and_the_slack_left(
    now: float, work: float, ahead: float, slack: float
) -> None:
    """``_paced``: 5000 s of work due 10000 s after submission."""
    p = pace(_paced(work=work), now)
    assert p is not None and (p.ahead, p.slack) == (ahead, slack)
    shown = p.json()
    assert shown["progress"] == work / 5_000.0 and shown["progress_from"] == "checkpoint"


def test_no_pace_without_a_deadline() -> None:
    view = JobView(
        strategy=RecoveryStrategy.EAGER_NEXT_REGION,
        request=req(use_spot=True),
        num_nodes=1,
        submitted_at=0.0,
    )
    assert pace(view, 100.0) is None


async def _spot_without_checkpoints(
    store: AsyncStore, reads: list[float]
) -> tuple[JobRow, AttemptRow, Task, Callable[[], Deadline]]:
    """A spot DEADLINE job due at t = 1550 without checkpoints, on its second attempt since
    t = 500, the first having run 450 s; and controllers over the store whose full views are
    logged in ``reads`` (nothing is due to end: no launches)."""
    job = await _job(store, current_attempt=2)
    first = await store.create_attempt(intent(job.id, 1, now=10.0))
    for to, at, end in (
        (AttemptStatus.RUNNING, 10.0, None),
        (AttemptStatus.ENDED, 460.0, EndReason.PREEMPTED),
    ):
        first = await store.transition_attempt(
            first.id, from_=[first.status], to=to, reason="t", now=at, end_reason=end
        )
    job, spot = await _run(store, job, 2, at=500.0, deadline=1550.0)
    task = Task.model_validate(
        {"run": "x", "resources": {"use_spot": True}, "job_recovery": DEADLINE}
    )

    async def view(j: JobRow, t: Task, now: float) -> JobView:
        reads.append(now)
        return job_view(j, t, await store.attempts(j.id), now)

    def deadline() -> Deadline:
        return Deadline(
            store=store,
            attempts=None,  # type: ignore[arg-type]  # no move is due: nothing ends
            job_view=view,
            placeable=None,  # type: ignore[arg-type]
            history=None,  # type: ignore[arg-type]
        )

    return job, spot, task, deadline


async def test_the_last_full_view_on_spot_spares_the_next_reads(store: AsyncStore) -> None:
    """A spot DEADLINE job without checkpoints, whose first attempt ran 450 s: the job row
    alone says the switch may be due, so the controller reads the attempts once, finds 500 s
    of slack and remembers it; the next look needs no read. A checkpoint that changes the
    work forgets it (less work done would mean less slack)."""
    reads: list[float] = []
    job, spot, task, deadline = await _spot_without_checkpoints(store, reads)
    d = deadline()
    assert next_look(job, task, spot, 1000.0) == 0.0  # 550 - (1000 - 500) < 90
    assert not await _move(d, job, task, spot, 1000.0)
    assert reads == [1000.0]
    assert d.known_slack(job, spot) == (1000.0, pytest.approx(550.0 - (1000.0 - 950.0)))
    assert not await _move(d, job, task, spot, 1001.0)
    assert reads == [1000.0]  # not read again
    assert (next_look(job, task, spot, 1001.0, known=d.known_slack(job, spot)) or 0) > 0
    await d.checkpointed(job.id, lambda _: task, 2, 0.5, 1002.0, received_at=1003.0)
    assert d.known_slack(job, spot) is None


async def test_a_checkpoint_another_daemon_recorded_voids_the_remembered_slack(
    store: AsyncStore,
) -> None:
    """As above, but the job's first checkpoint reaches another daemon (several daemons on
    one database: the agent reports to any of them), which records less work (450 s) than
    the wall time the view counted (940 s): the daemon that runs the job no longer trusts
    the slack it remembers, reads the attempts again at its next look, and moves the job to
    on-demand once that slack requires it, where the remembered slack would have had it
    wait on spot past the point of no return."""
    job, spot, task, deadline = await _spot_without_checkpoints(store, [])
    runs, other = deadline(), deadline()
    assert not await _move(runs, job, task, spot, 1000.0)
    assert runs.known_slack(job, spot) is not None
    # the other daemon records the checkpoint: 0.45 of 1000 s of work
    assert await other.checkpointed(job.id, lambda _: task, 2, 0.45, 1001.0, received_at=1001.0)
    job = await store.require_job(job.id)
    assert job.work_done_seconds == pytest.approx(450.0)
    assert runs.known_slack(job, spot) is None
    # 1550 - 1002 - (1000 - 450) = -2 of slack: it must leave spot at this look
    assert next_look(job, task, spot, 1002.0, known=runs.known_slack(job, spot)) == 0.0


class _Refuses(_Launches):
    """``_Launches`` whose spot launches beside on-demand are all refused, until ``accept``;
    a refused attempt is ended in the store, as ``Attempts`` does."""

    accept = False

    def __init__(self, store: AsyncStore) -> None:
        super().__init__()
        self.store = store

    async def launch_nodes(self, job: JobRow, task: Task, aid: str) -> str | None:
        self.launched.append(aid)
        if self.accept:
            return None
        detail = "InsufficientInstanceCapacity"
        await self.store.transition_attempt(
            aid,
            from_=[AttemptStatus.PROVISIONING],
            to=AttemptStatus.ENDED,
            reason="refused",
            now=0.0,
            end_reason=EndReason.LAUNCH_FAILED,
            end_detail=detail,
        )
        return detail


async def test_refused_returns_back_off_to_a_later_checkpoint(store: AsyncStore) -> None:
    """A job on the line through a spot stockout, checkpointing every 600 s: a return is tried
    at the first two checkpoints, then the first one synced 10 min after the last refused
    round, then 20, then 40 (``returns.backoff``); each round tries ``RETURN_TRIES`` zones. The
    heartbeats carrying the syncs land 0.2-50 s after them, unevenly (a slow one after the
    second round): the back-off reads the sync times, so that moves no try (read by when the
    controller looked, the third try would slip a checkpoint). The events say when the next
    try comes."""
    job, od = await _running_on_demand(store, deadline=10_000.0)
    task = Task.model_validate({"run": "x", "job_recovery": DEADLINE})
    launches = _Refuses(store)
    d = _on_the_line(store, launches)
    assert not await d.move(
        await store.require_job(job.id), task, od, now=2_200.0
    )  # decided: waits for a checkpoint
    tried = []
    for i, delay in enumerate((3.0, 50.0, 0.2, 1.0, 0.5, 3.0, 0.2)):
        at = 2_250.0 + 600.0 * i
        await d.checkpointed(job.id, lambda _: task, 1, at / 2 / 5_000.0, at, received_at=at + 1.0)
        before = len(launches.launched)
        assert not await _move(d, job, task, od, now=at + delay)
        if len(launches.launched) > before:
            assert len(launches.launched) - before == strategies.RETURN_TRIES
            tried.append(i)
    assert tried == [0, 1, 2, 4]  # waits after them: 0, 0, 600, 1200 s
    events = [e.message for e in await store.events(job_id=job.id)]
    assert sum("trying again at the next checkpoint" in m for m in events) == 1, events
    for wait, rounds in ((10, 2), (20, 3), (40, 4)):
        said = f"at least {wait} min after the last refused one ({rounds} returns in a row"
        assert sum(said in m for m in events) == 1, events


async def test_an_accepted_return_or_a_new_on_demand_attempt_ends_the_back_off(
    store: AsyncStore,
) -> None:
    """Two refused rounds beside on-demand attempt 1 would hold the next try for 10 min; a
    new on-demand attempt starts over: its return is decided anew (not at attempt 1's mark,
    a sync by another instance's clock), its next checkpoint tries at once, and an accepted
    return moves the job."""
    job, od = await _running_on_demand(store, deadline=10_000.0)
    task = Task.model_validate({"run": "x", "job_recovery": DEADLINE})
    launches = _Refuses(store)
    d = _on_the_line(store, launches)
    assert not await _move(d, job, task, od, now=2_200.0)
    for at in (2_250.0, 2_310.0):  # two refused rounds, a minute apart
        await d.checkpointed(job.id, lambda _: task, 1, at / 2 / 5_000.0, at, received_at=at + 1.0)
        assert not await _move(d, job, task, od, now=at + 1.0)
    at = 2_370.0  # beside attempt 1 this checkpoint would be held back (due at 2_910)
    tries = len(launches.launched)
    await d.checkpointed(job.id, lambda _: task, 1, at / 2 / 5_000.0, at, received_at=at + 1.0)
    assert not await _move(d, job, task, od, now=at + 1.0)
    assert len(launches.launched) == tries
    # the job's on-demand attempt is now another one (say the first was lost and replaced)
    later = dataclasses.replace(od, attempt=9)
    launches.accept = True
    at = 2_430.0
    await d.checkpointed(job.id, lambda _: task, 9, at / 2 / 5_000.0, at, received_at=at + 1.0)
    assert not await _move(d, job, task, later, now=at + 1.0)  # decided beside attempt 9
    assert len(launches.launched) == tries
    at = 2_490.0
    await d.checkpointed(job.id, lambda _: task, 9, at / 2 / 5_000.0, at, received_at=at + 1.0)
    assert await _move(d, job, task, later, now=at + 1.0)
    assert len(launches.launched) == tries + 1


@pytest.mark.parametrize("ahead", [0.0, -120.0, 600.0])
@pytest.mark.parametrize("elsewhere", [False, True], ids=["restarted", "reports-elsewhere"])
async def test_a_restarted_daemon_keeps_backing_off(
    store: AsyncStore, ahead: float, elsewhere: bool
) -> None:
    """Three refused rounds, then the daemon restarts: the new one reads the rounds back from
    the attempt rows and waits the 20 min the third round set, instead of trying at the next
    checkpoint (a daemon restarted in a loop would otherwise never back off). The rows hold
    the daemon's clock, the checkpoints the agent's: with the agent's clock ``ahead`` of the
    daemon's by so many seconds (or behind) the try still comes at the checkpoint it would
    have without the restart, neither one sooner nor one later. The first heartbeat after the
    restart repeats a sync from ten minutes before, which changes nothing. ``elsewhere``: after
    the restart every report reaches another daemon, and the one that runs the job reads the
    checkpoints, and how long after its sync each was received, from the job's row."""
    job, od = await _running_on_demand(store, deadline=10_000.0)
    task = Task.model_validate({"run": "x", "job_recovery": DEADLINE})
    launches = _Refuses(store)
    d = _on_the_line(store, launches)

    def beat(i: int) -> tuple[float, float]:  # checkpoint i: synced (agent), received (daemon)
        at = 2_250.0 + 600.0 * i
        return at, at - ahead + 1.0

    assert not await _move(d, job, task, od, now=2_200.0 - ahead)
    for i in range(3):  # checkpoints 600 s apart: rounds at the first, second and third
        at, received = beat(i)
        await d.checkpointed(job.id, lambda _: task, 1, at / 2 / 5_000.0, at, received_at=received)
        assert not await _move(d, job, task, od, now=received + 1.0)
    assert len(launches.launched) == 3 * strategies.RETURN_TRIES
    restarted = _on_the_line(store, launches)
    reports = _on_the_line(store, _Launches()) if elsewhere else restarted
    at, _ = beat(2)  # the agent's first heartbeat repeats its last sync, from 3_450
    assert not await reports.checkpointed(
        job.id, lambda _: task, 1, at / 2 / 5_000.0, at, received_at=4_040.0 - ahead
    )
    assert not await restarted.move(
        await store.require_job(job.id), task, od, now=4_041.0 - ahead
    )  # decided again
    # the decision's event says so too: the third round's refusal said it first
    events = [e.message for e in await store.events(job_id=job.id)]
    said = "at least 20 min after the last refused one (3 returns in a row refused)"
    assert sum(said in m for m in events) == 2, events
    tried = []
    for i in range(3, 6):
        at, received = beat(i)
        await reports.checkpointed(
            job.id, lambda _: task, 1, at / 2 / 5_000.0, at, received_at=received
        )
        before = len(launches.launched)
        assert not await restarted.move(
            await store.require_job(job.id), task, od, now=received + 1.0
        )
        if len(launches.launched) > before:
            tried.append(i)
    assert tried == [4]  # 20 min after the third round, as without the restart
    rounds = returns.Refused(od.attempt, 4, beat(4)[1] + 1.0)  # on the daemon's clock
    assert refused_of(await store.attempts(job.id), od) == rounds


def _tried(attempt: int, at: float, *, end: EndReason | None, market: str = "spot") -> AttemptRow:
    return attempt_row(attempt, market, at if end else None, end, created_at=at)


FAILED = EndReason.LAUNCH_FAILED
OD = _tried(3, 0.0, end=None, market="on-demand")


@pytest.mark.parametrize(
    ("rows", "want"),
    [
        ([], None),  # no round yet
        ([_tried(2, 5.0, end=FAILED)], None),  # before the on-demand attempt: another story
        ([_tried(4, 10.0, end=FAILED)], returns.Refused(3, 1, 10.0)),
        (  # three tries in one round, then a round of one
            [_tried(n, 10.0, end=FAILED) for n in (4, 5, 6)] + [_tried(7, 620.0, end=FAILED)],
            returns.Refused(3, 2, 620.0),
        ),
        (  # a round a restart interrupted (ended MIGRATED) is not a refusal
            [_tried(4, 10.0, end=FAILED), _tried(5, 620.0, end=EndReason.MIGRATED)],
            returns.Refused(3, 1, 10.0),
        ),
        ([_tried(4, 10.0, end=FAILED, market="on-demand")], None),  # not a return to spot
        (  # two tries refused, the third launched when the daemon stopped: not refused
            [_tried(4, 10.0, end=FAILED), _tried(5, 10.0, end=FAILED), _tried(6, 10.0, end=None)],
            None,
        ),
        (  # ... and once ended by the next step (MIGRATED), still not
            [_tried(n, 10.0, end=FAILED) for n in (4, 5)]
            + [_tried(6, 10.0, end=EndReason.MIGRATED), _tried(7, 620.0, end=FAILED)],
            returns.Refused(3, 1, 620.0),
        ),
    ],
)
def test_refused_rounds_read_back_from_the_rows(
    rows: list[AttemptRow], want: returns.Refused | None
) -> None:
    assert refused_of([OD, *rows], OD) == want


@pytest.mark.parametrize(
    ("rounds", "wait"),
    [(0, 0.0), (1, 0.0), (2, 600.0), (3, 1200.0), (4, 2400.0), (5, 3600.0), (40, 3600.0)],
)
def test_return_backoff_doubles_from_ten_minutes_to_an_hour(rounds: int, wait: float) -> None:
    assert returns.backoff(rounds) == wait
