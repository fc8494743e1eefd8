"""DEADLINE jobs while an attempt runs: their checkpointed progress, and moves between markets.

Progress. A job says how far it got in the checkpoint itself: a file ``spotd-progress`` in
``$SPOTD_CHECKPOINT_DIR`` holding a fraction (``0.42``), a percentage (``42%``) or a step count
(``420/1000``), written with the checkpoint it describes. The agent reads it after each sync
(``spotd.agent.checkpoints.read_progress``) and reports it with ``checkpoint_synced_at`` in its
heartbeat; :meth:`Deadline.checkpointed` stores ``fraction * expected_duration`` as the job's
``work_done_seconds``. That is exactly what a relaunch resumes from. A job that never writes the
file falls back to wall time (the time its attempts ran, ``control.attempts.job_view``), which
overstates progress by whatever a preemption lost.

Which reports count: the running attempt's, and an older attempt's (a final snapshot after a
notice, landing while its replacement starts) only if it says more and no newer attempt has
reported yet: the checkpoint store refuses an older attempt's snapshot over a newer one's.

Moves, asked while the job is RUNNING (``Controller._watch``) whenever its worker looks: on
news, and when :func:`next_look` says a move could be due (not every observe interval):

- on spot, ``should_switch_to_ondemand``: end the attempt (MIGRATED) now and place the job
  again; the slack no longer allows waiting for a checkpoint;
- on on-demand, ``should_return_to_spot`` (the launch rule: on the uniform-progress line, or
  trailing it by one restart), asked at a fresh checkpoint — the first look to see a checkpoint
  newer than the one the previous look saw, as the simulator asks it at each checkpoint (the
  checkpointed work stands still between checkpoints while the line rises, so a rule that holds
  at a checkpoint may not a minute later). A rule that holds at a look that is not at a fresh
  checkpoint (the first look after a restart, or on the daemon the job moved to, whose
  checkpoint may be long old) remembers the last checkpoint seen and waits for the next one. At
  the checkpoint, *make before break*: ``strategies.return_placement`` picks a spot zone (as if
  the on-demand attempt had just ended), and the spot attempt is written and launched while the
  on-demand one keeps running. Accepted: one transaction moves the job to STARTING on the spot
  attempt and ends the on-demand one (MIGRATED, ``Store.hand_over``), whose instances are then
  terminated: the spot attempt resumes from the checkpoint, so the move loses nothing. Refused:
  the spot attempt ends LAUNCH_FAILED (the zone's stockout recorded), the next pick is tried, up
  to ``RETURN_TRIES`` in all, and then the job runs on on-demand and asks again at the next
  checkpoint: a futile return costs API calls, not an on-demand restart. After ``k >= 2``
  checkpoints in a row whose tries were all refused, the next try waits for a checkpoint synced
  at least ``returns.backoff(k)`` after the last one (10 min doubling to 1 h;
  ``spotd.recovery.returns``), so a stockout of a day costs about 27 rounds of launch calls and
  failed attempt rows instead of one every checkpoint; replaying the traces this was also
  cheaper (docs/simulate.md, "Eleventh round"). The rule is asked again at every step; if it
  stops holding, the move is called off, unless only refusals stand in its way: then it stands
  (``returns.step``). A job without checkpointed progress never returns (the rule requires it).

A daemon killed between writing the spot attempt and the hand-over finds the job RUNNING on
on-demand with a later spot attempt not ended. The next step finishes its launch (a node the
provider made before the stop is found by its key) and makes the hand-over, without asking
the rule again: while no daemon watched, the attempt may have run and saved checkpoints, and
the checkpoint store would then refuse every one of the older on-demand attempt's. A refusal
ends it, and the job stays on on-demand. If the job ended first (it finished, or was
cancelled), the reaper ends the spot attempt and terminates it (``Attempts.reap``). Attempt
numbers stay unique:
a refused return takes the next free number, and the placement that follows skips numbers
already ended (``Controller._place``).

The newest checkpoint reported is on the job's row (``checkpoint_attempt``,
``checkpoint_synced_at`` by the agent's clock, ``checkpoint_received_at`` by the daemon's),
written by whichever daemon the agent's report reached (its ``daemon_url``; with several
daemons not necessarily the one that runs the job), only if newer than the row's
(``Store.record_checkpoint``). A return waits for a sync newer than the one the row held when
it was decided (none for an attempt that has not reported: its first is fresh, even one the
agent synced while no daemon was up to hear it); so after a restart, or on another daemon the
job moved to, the agent's heartbeat repeating its last sync is not taken for the fresh
checkpoint the move waits for, and no sync time is compared with a daemon's clock.

Memory, per job: on every daemon that hears reports, the newest one it recorded (so a repeating
heartbeat costs no query; dropped by ``forget`` where the job runs, and past ``HEARD_JOBS``
jobs the one heard from longest ago); on the daemon that runs the job, a pending return, its
refusals in a row and the slack last seen on spot. The refusals are read back from the attempt
rows when memory has none (:func:`refused_of`; a restart, or the job moved): every round beside
an on-demand attempt left spot attempts numbered after it, ended LAUNCH_FAILED, written at the
same moment; so a restart does not start the back-off over (a daemon restarted in a loop would
otherwise try at every checkpoint). The rows hold when a round was decided (the daemon's
clock), not its checkpoint's sync time (the agent's): a heartbeat's delay later, and off by any
skew between the two clocks. So they are read at the try point (a fresh checkpoint) and their
times moved back by how long after its sync that checkpoint was received (its delay plus the
skew; with several daemons, also the skew between the daemon that decided the rounds and the
one that received the checkpoint). What is left is the difference between the two heartbeats'
delays and the steps that followed them, seconds either way: a try that comes out that much
late is absorbed by ``returns.EARLY_SECONDS`` (or half the wait, if shorter), one that comes
out early is early by as much.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog
from pydantic import ValidationError

from spotd.control.attempts import Attempts, attempt_intent, candidate_of, job_view, placed_at
from spotd.recovery import history as rhist
from spotd.recovery import returns, strategies
from spotd.spec import Task
from spotd.store import AsyncStore, AttemptRow, JobRow, StaleTransition
from spotd.types import (
    AttemptStatus,
    Candidate,
    CatalogEntry,
    EndReason,
    JobStatus,
    Market,
    RecoveryStrategy,
)

__all__ = ["Deadline", "Pace", "next_look", "pace", "pace_of", "refused_of"]

log = structlog.get_logger("spotd.control.deadline")

# jobs whose newest checkpoint report a daemon remembers (about 100 B each): past this, the one
# heard from longest ago is forgotten, and its next report costs one query
HEARD_JOBS = 100_000


@dataclass(frozen=True, slots=True)
class Pace:
    """Where a DEADLINE job stands against its uniform-progress line, as the API shows it."""

    work_done: float  # seconds of work done: the last checkpoint's, else the time run
    expected_duration: float
    from_checkpoints: bool  # False: wall time, which overstates what a preemption lost
    ahead: float  # work seconds ahead of the line (negative: behind)
    slack: float  # time to the deadline beyond the remaining work (negative: it will be late)
    progress: float  # work_done over expected_duration, 0-1 (``strategies.progress``)

    @property
    def progress_from(self) -> str:
        return "checkpoint" if self.from_checkpoints else "wall time"

    def json(self) -> dict[str, object]:
        return {
            "work_done_seconds": round(self.work_done, 1),
            "expected_duration_seconds": self.expected_duration,
            "progress": round(self.progress, 4),
            "progress_from": self.progress_from,
            "ahead_of_line_seconds": round(self.ahead, 1),
            "slack_seconds": round(self.slack, 1),
        }


def pace(view: strategies.JobView, now: float) -> Pace | None:
    """The job's pace (``view`` as ``control.attempts.job_view`` builds it); None for a job
    without a deadline and an expected duration."""
    if view.deadline is None or view.expected_duration is None:
        return None
    line = view.expected_duration * strategies.elapsed_fraction(view, now)
    return Pace(
        work_done=view.work_done,
        expected_duration=view.expected_duration,
        from_checkpoints=view.progress_from_checkpoints,
        ahead=view.work_done - line,
        slack=strategies.slack_seconds(view, now),
        progress=strategies.progress(view),
    )


def pace_of(
    job: JobRow, attempts: Sequence[AttemptRow], now: float, task: Task | None = None
) -> Pace | None:
    """A stored job's pace as of ``now``, or as it ended; None for a job without a deadline,
    or whose spec a former version stored and this one no longer reads. ``task``: the job's
    task as its worker parsed it (``JobMemory.known``); without it the task is parsed here
    (80 us), not through the controller's task memory, which keeps what it parses until the
    job's worker ends: showing old jobs (or another daemon's) would fill it for good."""
    if job.deadline is None:
        return None
    if task is None:
        try:
            task = Task.model_validate(json.loads(job.spec_json))
        except ValidationError:
            return None
    at = now if job.ended_at is None else job.ended_at
    return pace(job_view(job, task, attempts, at), at)


def next_look(
    job: JobRow,
    task: Task,
    attempt: AttemptRow,
    now: float,
    *,
    known: tuple[float, float] | None = None,
) -> float | None:
    """Seconds until a market move of this RUNNING DEADLINE job could first be due, if no
    news comes (``control.recheck``); None: no move rule watches it now.

    On spot, the switch to on-demand is due once ``slack - restart < margin``. The slack falls
    by at most a second a second, and the job row bounds it from below without reading the
    attempts (the work done is at least the checkpointed work, else the current attempt's run
    time), so the worker can sleep until that bound reaches the margin. ``known``: (when, the
    slack then) from the last full view of this attempt (:meth:`Deadline.known_slack`), a
    tighter bound for a job without checkpointed progress, whose earlier attempts' run time
    the row does not hold. On on-demand nothing is due until a checkpoint reports progress,
    which wakes the worker (:meth:`Deadline.checkpointed`; through the daemon that runs the job
    if another one recorded it): the return rule only turns true then, and a return already
    decided moves only at a fresh checkpoint. So a decided return that waits out a back-off or
    a hold costs no extra look."""
    recovery = task.job_recovery
    if job.status != JobStatus.RUNNING or job.deadline is None:
        return None
    if recovery.strategy is not RecoveryStrategy.DEADLINE:
        return None
    if attempt.market != str(Market.SPOT):
        return None
    # the view with only the current attempt: its work done is the bound (the attempts before
    # it can only add run time when the job has no checkpointed progress)
    low = job_view(job, task, [attempt], now)
    if low.expected_duration is None:
        return None
    slack = strategies.slack_seconds(low, now)
    if known is not None:
        slack = max(slack, known[1] - (now - known[0]))
    return max(0.0, slack - low.restart_overhead - low.safety_margin)


def refused_of(
    attempts: Sequence[AttemptRow], od: AttemptRow, *, offset: float = 0.0
) -> returns.Refused | None:
    """The refused rounds in a row beside on-demand attempt ``od``, read back from the job's
    attempt rows (a restarted daemon): the tries of one round are the attempts numbered after
    ``od`` written at one moment, and the round was refused if every one of them is spot and
    ended LAUNCH_FAILED. A round with a try a restart interrupted (launched, or launching,
    when the daemon stopped: not ended yet, or ended MIGRATED) is not counted, as the memory
    would not have counted it. The rows hold when the last round was decided, on the daemon's
    clock, a heartbeat after its checkpoint was synced on the agent's: ``offset`` (how long
    after its sync a checkpoint reaches the daemon, skew included) is taken off it."""
    rounds: dict[float, bool] = {}
    for a in attempts:
        if a.attempt > od.attempt:
            refused = a.market == Market.SPOT and a.end_reason == EndReason.LAUNCH_FAILED
            rounds[a.created_at] = rounds.get(a.created_at, True) and refused
    times = sorted(at for at, refused in rounds.items() if refused)
    return returns.Refused(od.attempt, len(times), times[-1] - offset) if times else None


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    attempt: int
    synced_at: float  # the agent's clock


class Deadline:
    """Checkpointed progress and the market moves of running DEADLINE jobs."""

    def __init__(
        self,
        *,
        store: AsyncStore,
        attempts: Attempts,
        job_view: Callable[[JobRow, Task, float], Awaitable[strategies.JobView]],
        placeable: Callable[[str, Task], Sequence[CatalogEntry]],
        history: Callable[[float], Awaitable[list[rhist.ZoneEvent]]],
        backoff: tuple[float, float] = (returns.BASE_SECONDS, returns.CAP_SECONDS),
        tuning: strategies.Tuning | None = None,
    ) -> None:
        self.store = store
        # placement's knobs (the zone hold), as the launches use them
        self.tuning = tuning or strategies.Tuning()
        self.backoff = backoff  # refused returns: (base, cap) of ``returns.backoff``
        self.attempts = attempts
        self.job_view = job_view
        self.placeable = placeable
        self.history = history
        # job id -> the newest checkpoint this daemon recorded (the row has the newest of all),
        # the one heard from longest ago first
        self._seen: dict[int, _Checkpoint] = {}
        # job id -> (the on-demand attempt, the sync a return from it waits to pass: the row's
        # when it was decided, -inf for none)
        self._leaving: dict[int, tuple[int, float]] = {}
        # job id -> (attempt, when, slack, the row's work done) of the last full view on spot
        # (``next_look``)
        self._slack: dict[int, tuple[int, float, float, float]] = {}
        self._refused: dict[int, returns.Refused] = {}  # job id -> refused returns in a row
        # job id -> (on-demand attempt, its newest checkpoint) at the last look (``_fresh``)
        self._looked: dict[int, tuple[int, float]] = {}

    def forget(self, job_id: int) -> None:
        self._seen.pop(job_id, None)
        self._leaving.pop(job_id, None)
        self._slack.pop(job_id, None)
        self._refused.pop(job_id, None)
        self._looked.pop(job_id, None)

    def known_slack(self, job: JobRow, attempt: AttemptRow) -> tuple[float, float] | None:
        """(when, slack then) from the last full view of this spot attempt, if any, and only
        while the job's row holds the work done that view read: a checkpoint recorded since
        (here, or by another daemon the agent reported to) may say less work than the wall
        time the view counted, and so less slack."""
        known = self._slack.get(job.id)
        if known is None or known[0] != attempt.attempt or known[3] != job.work_done_seconds:
            return None
        return known[1], known[2]

    async def checkpointed(
        self,
        job_id: int,
        task_of: Callable[[JobRow], Task],
        attempt: int,
        fraction: float,
        synced_at: float,
        *,
        received_at: float,
    ) -> bool:
        """An agent reported the progress its last checkpoint holds (synced at ``synced_at``
        by its clock, received at ``received_at`` by the daemon's). True when it is new and the
        job is DEADLINE: its worker (here, or on the daemon that runs the job) should look
        now, as the progress moved (the slack and the line with it), or a return to spot may
        wait for it."""
        seen = self._seen.get(job_id)
        if seen is not None and (seen.attempt, seen.synced_at) >= (attempt, synced_at):
            return False  # a heartbeat repeating what we know, or an older attempt's
        job = await self.store.get_job(job_id)
        if job is None or job.is_terminal:
            self._seen.pop(job_id, None)
            return False
        recovery = task_of(job).job_recovery
        expected = recovery.expected_duration_seconds
        recorded = expected is not None and await self.store.record_checkpoint(
            job.id,
            attempt=attempt,
            synced_at=synced_at,
            received_at=received_at,
            work_done=min(1.0, max(0.0, fraction)) * expected,
        )  # not if the row has it or a newer one (another daemon, or before a restart)
        # after the write: one that failed is tried again with the agent's next heartbeat
        self._seen.pop(job.id, None)
        self._seen[job.id] = _Checkpoint(attempt, synced_at)
        if len(self._seen) > HEARD_JOBS:  # jobs other daemons run are never forgotten here
            del self._seen[next(iter(self._seen))]  # the one heard from longest ago
        if recorded:
            self._slack.pop(job.id, None)  # less work done would mean less slack than known
        return recorded and recovery.strategy is RecoveryStrategy.DEADLINE

    def pending(self, job_id: int, attempt: int) -> bool:
        """A return to spot from on-demand attempt ``attempt`` is decided and waits for the
        next checkpoint."""
        return self._decided(job_id, attempt) is not None

    def _decided(self, job_id: int, attempt: int) -> float | None:
        """The checkpoint mark of a return decided from on-demand attempt ``attempt``; None if
        there is none (one decided from an earlier attempt, since lost, is dropped)."""
        decided = self._leaving.get(job_id)
        if decided is not None and decided[0] != attempt:
            del self._leaving[job_id]
            return None
        return None if decided is None else decided[1]

    async def move(self, job: JobRow, task: Task, attempt: AttemptRow, now: float) -> bool:
        """Move a RUNNING DEADLINE job to the other market if the rules say so (module
        docstring). True when the attempt ended: the job is RECOVERING, or STARTING on the
        spot attempt it was handed to."""
        if job.status != JobStatus.RUNNING:
            return False
        if task.job_recovery.strategy is not RecoveryStrategy.DEADLINE or job.deadline is None:
            return False
        if attempt.market == str(Market.SPOT):
            known = self.known_slack(job, attempt)
            if next_look(job, task, attempt, now, known=known):
                return False  # not due yet, by a bound from the job row (and the last view)
            view = await self.job_view(job, task, now)
            if not strategies.should_switch_to_ondemand(view, now=now):
                slack = strategies.slack_seconds(view, now)
                self._slack[job.id] = (attempt.attempt, now, slack, job.work_done_seconds)
                return False
            detail = "deadline: the remaining slack requires on-demand"
            await self._leave(job, attempt, detail, now, to="on-demand")
            return True
        rows = await self.store.attempts(job.id)
        if await self._finish_interrupted(job, task, rows, attempt, now):
            return True
        view = await self.job_view(job, task, now)
        catalog = self.placeable(job.project, task)
        history = await self.history(now)
        mine = job.checkpoint_attempt == attempt.attempt
        at = job.checkpoint_synced_at if mine else None  # the newest checkpoint reported
        fresh = self._fresh(job.id, attempt.attempt, at)
        mark = self._decided(job.id, attempt.attempt)
        rule = functools.partial(
            strategies.should_return_to_spot, view, catalog=catalog, now=now, tuning=self.tuning
        )
        holds = rule(history=history)
        # asked only of a decided return the zones may be holding back
        but_zones = not holds and mark is not None and rule(history=())
        what = returns.step(holds=holds, holds_but_zones=but_zones, mark=mark, at=at)
        if what is returns.Step.CALL_OFF:
            del self._leaving[job.id]
            log.info("return to spot called off", job=job.id)
        if what is returns.Step.HOLD and mark is not None and at is not None:
            self._leaving[job.id] = (attempt.attempt, max(mark, at))
        decided = what is returns.Step.DECIDE
        if decided:
            self._leaving[job.id] = (attempt.attempt, -math.inf if at is None else at)
            if fresh:  # decided at the checkpoint it was decided on: tried at it
                what = returns.Step.TRY
            else:
                await self._announce(job, attempt, rows, now)
        if what is not returns.Step.TRY or at is None:
            return False
        self._leaving[job.id] = (attempt.attempt, at)  # refused: ask at the one after this
        if returns.beside(self._refused.get(job.id), attempt.attempt) is None:
            # a restart, or the job moved: the rounds the rows hold, their times moved onto
            # the agent's clock by this fresh checkpoint's delay (module docstring)
            received = job.checkpoint_received_at
            delay = 0.0 if received is None else received - at
            read = refused_of(rows, attempt, offset=delay)
            if read is not None:
                self._refused[job.id] = read
        base, cap = self.backoff
        if not returns.due(self._refused.get(job.id), attempt.attempt, at, base=base, cap=cap):
            if decided:
                await self._announce(job, attempt, rows, now)
            return False  # backing off after refused returns: a later checkpoint
        first = 1 + max(a.attempt for a in rows)
        return await self._make_before_break(job, task, attempt, view, catalog, now, at, first)

    def _fresh(self, job_id: int, attempt: int, at: float | None) -> bool:
        """Is this the first look at on-demand ``attempt`` to see its checkpoint synced at
        ``at``? (Not the first look after a restart, or on a daemon the job moved to: a
        heartbeat repeating the last sync is not a fresh checkpoint.)"""
        seen = self._looked.get(job_id)
        self._looked[job_id] = (attempt, -math.inf if at is None else at)
        return at is not None and seen is not None and seen[0] == attempt and at > seen[1]

    async def _announce(
        self, job: JobRow, attempt: AttemptRow, rows: Sequence[AttemptRow], now: float
    ) -> None:
        """The job's event for a return decided to be tried at a later checkpoint."""
        # a restart: say what the rows hold (their times are read back at the try)
        held = returns.beside(self._refused.get(job.id), attempt.attempt)
        when = _next_try(held or refused_of(rows, attempt), self.backoff)
        await self.store.update_job_fields(
            job.id,
            now=now,
            event="deadline: on the uniform-progress line; trying spot beside the "
            f"on-demand attempt {when}",
        )

    async def _make_before_break(
        self,
        job: JobRow,
        task: Task,
        od: AttemptRow,
        view: strategies.JobView,
        catalog: Sequence[CatalogEntry],
        now: float,
        checkpoint: float,
        first: int,
    ) -> bool:
        """Launch spot beside the on-demand attempt at the checkpoint synced at ``checkpoint``,
        numbering the tries from ``first``; hand over only once it is accepted."""
        refused: list[str] = []
        here = candidate_of(od)
        for n in range(first, first + strategies.RETURN_TRIES):
            history = await self.history(now)
            cand = strategies.return_placement(
                view, here=here, catalog=catalog, history=history, now=now, tuning=self.tuning
            )
            if cand is None:
                break
            spot = await self.store.create_attempt(attempt_intent(job, task, cand, n, now))
            labels = (cand.provider, cand.region, str(cand.market))
            self.attempts.metrics.attempts.labels(*labels).inc()
            detail = await self.attempts.launch_nodes(job, task, spot.id)
            if detail is None:
                return await self._hand_over(job, od, spot, cand, now)
            refused.append(f"{cand.region}/{cand.zone}: {detail}")
        if refused:
            count = returns.after_refusal(self._refused.get(job.id), od.attempt, checkpoint)
            self._refused[job.id] = count
            when = _next_try(count, self.backoff)
            await self.store.update_job_fields(
                job.id,
                now=now,
                event="deadline: spot refused ("
                + "; ".join(refused)
                + f"); staying on on-demand, trying again {when}",
            )
        return False

    async def _hand_over(
        self,
        job: JobRow,
        od: AttemptRow,
        spot: AttemptRow,
        cand: Candidate,
        now: float,
        *,
        why: str = "deadline: on the uniform-progress line",
    ) -> bool:
        """The spot attempt launched: the job moves to it and the on-demand one ends."""
        reason = (
            f"attempt {spot.attempt}: {placed_at(cand)} ({why}; spot launched beside "
            f"on-demand attempt {od.attempt}, which ends now)"
        )
        try:
            await self.store.hand_over(
                job.id,
                old_attempt_id=od.id,
                new_attempt=spot.attempt,
                reason=reason,
                now=now,
                recoveries=job.recoveries + 1,
            )
        except StaleTransition:  # a cancel came first: the spot attempt is not needed
            await self.attempts.end(spot.id, EndReason.CANCELLED, "job changed", now)
            await self.attempts.terminate(spot.id)
            return True
        self._leaving.pop(job.id, None)
        self._refused.pop(job.id, None)
        await self.attempts.terminate(od.id)
        log.info("back on spot", job=job.id, attempt=spot.attempt, zone=cand.zone)
        return True

    async def _finish_interrupted(
        self, job: JobRow, task: Task, attempts: Sequence[AttemptRow], od: AttemptRow, now: float
    ) -> bool:
        """A spot attempt written beside this one and never handed over: the daemon stopped in
        between. Its launch is finished (``Attempts.launch_nodes``: a node the provider made
        before the stop, even with its id unrecorded, is found by its key, not made twice) and
        the hand-over made; the return rule is not asked again. Leaving it would not be safe:
        it may have run while no daemon watched and saved checkpoints, and the checkpoint store
        never lets the older on-demand attempt overwrite them. A spot instance lost meanwhile
        is recovered as any loss is. Refused: it ends LAUNCH_FAILED, and the job stays on
        on-demand. True when the job moved to it."""
        for a in attempts:
            if a.attempt > od.attempt and a.status != AttemptStatus.ENDED:
                if a.market == Market.SPOT:
                    if await self.attempts.launch_nodes(job, task, a.id) is None:
                        why = "resuming a return to spot that a restart interrupted"
                        return await self._hand_over(job, od, a, candidate_of(a), now, why=why)
                    continue  # refused: the launch ended it
                detail = "an attempt beside on-demand that a restart interrupted"
                await self.attempts.end(a.id, EndReason.MIGRATED, detail, now)
                await self.attempts.terminate(a.id)
        return False

    async def _leave(
        self, job: JobRow, attempt: AttemptRow, detail: str, now: float, *, to: str
    ) -> None:
        self._leaving.pop(job.id, None)
        await self.attempts.end(attempt.id, EndReason.MIGRATED, detail, now)
        await self.attempts.terminate(attempt.id)
        await self.store.transition_job(
            job.id,
            from_=[JobStatus.RUNNING],
            to=JobStatus.RECOVERING,
            reason=f"moving to {to}: {detail}",
            now=now,
            recoveries=job.recoveries + 1,
        )


def _next_try(refused: returns.Refused | None, backoff: tuple[float, float]) -> str:
    """When the next return beside on-demand comes, for the job's events."""
    base, cap = backoff
    if refused is None or not (wait := returns.backoff(refused.rounds, base=base, cap=cap)):
        return "at the next checkpoint"
    span = f"{wait / 60:.0f} min" if wait >= 120 else f"{wait:.0f} s"
    return (
        f"at the first checkpoint synced at least {span} after the last refused "
        f"one ({refused.rounds} returns in a row refused)"
    )
