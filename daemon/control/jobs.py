"""The control loop for managed jobs: observe, decide (pure functions), act.

One supervised worker per active job handles that job's events in order; different jobs run
in parallel. One observer per provider does a single batched listing every
``observe_interval`` seconds and wakes the workers whose instances changed; agent heartbeats
wake their job's worker directly. So a preemption is seen within one listing interval (or at
once, with a notice) instead of a 15-second poll.

Every action is idempotent and keyed by our own ids, with its intent written first: an attempt
and its instance rows are stored *before* the provider is asked for machines, so a daemon
killed mid-launch finds the intent on restart and finishes it (``launch`` is idempotent by key).
On start the daemon adopts what the providers report before it acts: known instances are
re-attached, unknown tagged instances are terminated, and known instances that vanished are
treated as preempted by the detection rules.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
from collections.abc import Callable, Mapping, Sequence

import structlog

from spotd.aiokit import Supervisor, sleep
from spotd.clock import wall
from spotd.config import Settings
from spotd.control.attempts import (
    Attempts,
    Written,
    attempt_id,
    attempt_intent,
    job_view,
    node_evidence,
    placed_at,
)
from spotd.control.deadline import Deadline, next_look
from spotd.control.idle_gpu import IdleGpuRule
from spotd.control.keepalive import KeepAlives
from spotd.control.memory import JobMemory
from spotd.control.node_keys import current_nodes
from spotd.control.node_replace import NodeLosses
from spotd.control.observer import FleetObserver, Observation, changed_keys
from spotd.control.prices import PriceRefresher
from spotd.control.recheck import recheck_in
from spotd.control.retention import Retention
from spotd.control.submit import placeable_catalog
from spotd.control.workers import Workers
from spotd.metrics import DaemonMetrics
from spotd.providers.base import TAG_JOB, ObservedInstance, Provider
from spotd.recovery import detection, history, restarts, strategies
from spotd.recovery import watch as w
from spotd.spec import Task
from spotd.store import (
    AsyncStore,
    AttemptRow,
    InstanceRow,
    JobRow,
    StaleTransition,
    Watched,
)
from spotd.telemetry.idle import IdleAction, IdleGpuPolicy
from spotd.types import (
    AttemptStatus,
    CatalogEntry,
    EndReason,
    InstanceState,
    JobStatus,
)

log = structlog.get_logger("spotd.control.jobs")
PLACING_AT_ONCE = 64  # jobs being placed and launched at one time (the others queue)


def job_of_key(key: str) -> int | None:
    """``j3-a2-n0`` -> 3; None for keys that are not a job's."""
    head = key.split("-")[0]
    return int(head[1:]) if head.startswith("j") and head[1:].isdigit() else None


class Controller:
    """Runs every managed job of this daemon, and owns the fleet observer both controllers
    read (the composition root hands ``observer`` to the service controller)."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: AsyncStore,
        providers: Mapping[str, Provider],
        metrics: DaemonMetrics,
        clock: Callable[[], float] = wall,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.providers = dict(providers)
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()
        # placements (decide, write the intent, launch) at once: ten thousand at once each
        # waited behind all the others' store calls, and a launch answered minutes after its
        # intent was judged by listings older than it (instances "lost" that were starting)
        self.placing = asyncio.Semaphore(PLACING_AT_ONCE)
        self.stop = asyncio.Event()
        self.sup = Supervisor(self.stop)
        # several daemons on one database (spotd.control.cluster): the jobs this one runs,
        # and how it tells the daemon that runs another job to look at it
        self.owner = settings.daemon_id if settings.ha else None
        self.elsewhere: Callable[[str, int], None] | None = None
        self.releasing: dict[int, str] = {}  # jobs to hand to another daemon, and why
        self.observer = FleetObserver(
            providers=self.providers, home_tag=settings.home_tag, metrics=metrics, clock=clock
        )
        self.observer.listen(self._on_listing)
        self.workers = Workers(self.sup, "job")
        self.attempts = Attempts(
            settings=settings, store=store, providers=self.providers, metrics=metrics, clock=clock
        )
        self.memory = JobMemory()  # per active job; dropped by ``_forget`` when it ends
        self.keepalives = KeepAlives(store)  # agents' keep-alives, written in batches
        self.losses = NodeLosses(  # a node lost: replace it, or move the whole job
            settings=settings,
            store=store,
            attempts=self.attempts,
            observer=self.observer,
            metrics=metrics,
            memory=self.memory,
        )
        self.tuning = strategies.Tuning(hold_seconds=settings.zone_hold_seconds)
        self.deadline = Deadline(
            store=store,
            tuning=self.tuning,
            attempts=self.attempts,
            job_view=self._job_view,
            placeable=self.placeable,
            history=self._history,
            backoff=(settings.return_backoff_seconds, settings.return_backoff_cap_seconds),
        )
        self.prices = PriceRefresher(providers=self.providers, stop=self.stop, clock=clock)
        self.retention = Retention(settings=settings, store=store, stop=self.stop, clock=clock)
        self.timeouts = detection.DetectionTimeouts(
            suspect_after=settings.suspect_after, lost_after=settings.lost_after
        )
        self.idle = IdleGpuRule(
            store=store,
            policy=IdleGpuPolicy(
                minutes=settings.idle_gpu_minutes,
                threshold_pct=settings.idle_gpu_threshold,
                action=IdleAction(settings.idle_gpu_action),
            ),
        )

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def catalog(self) -> list[CatalogEntry]:
        """Every provider's catalog, at the spot prices of the moment (``control.prices``)."""
        return self.prices.live([e for p in self.providers.values() for e in p.catalog()])

    async def start(self) -> None:
        """Adopt what the providers report, then start the observers and the job workers."""
        for name in self.providers:
            await self.observer.observe_once(name)
        for job in await self.store.active_jobs(owner=self.owner):
            self.spawn_worker(job.id)
        for name in self.providers:
            self.sup.spawn(f"observe:{name}", functools.partial(self._observe_loop, name))
        self.sup.spawn("retention", self.retention.run)
        owned = functools.partial(self.store.active_job_ids, owner=self.owner)
        self.sup.spawn("sweep", lambda: self.workers.sweep(owned, self.spawn_worker, self.stop))
        self.sup.spawn("keepalives", functools.partial(self.keepalives.run, self.stop))
        await self.prices.start(self.sup)

    async def shutdown(self) -> None:
        await self.sup.stop()

    def spawn_worker(self, job_id: int) -> None:
        self.workers.spawn(job_id, lambda wake: self._job_worker(job_id, wake))

    def release(self, job_ids: list[int], why: str) -> None:
        """Hand these jobs over, each by its worker between two steps (``control.cluster``)."""
        for job_id in job_ids:
            if self.workers.wake(job_id):
                self.releasing[job_id] = why

    def wake(self, job_id: int) -> None:
        """Look at the job now: here, or through the daemon that runs it."""
        if not self.workers.wake(job_id) and self.elsewhere is not None:
            self.elsewhere("j", job_id)

    # -- observe ---------------------------------------------------------------------------

    async def _observe_loop(self, provider: str) -> None:
        while not self.stop.is_set():
            await self.observer.observe_once(provider)
            await sleep(self.settings.observe_interval, self.stop)

    async def _on_listing(self, provider: str, previous: Observation, current: Observation) -> None:
        """Wake the jobs whose instances changed (news first), then reap what none needs."""
        for key in changed_keys(previous, current):
            job_id = job_of_key(key)
            if job_id is not None:
                self.workers.wake(job_id)  # every daemon lists the fleet: each wakes its own
        await self.attempts.reap(provider, current.instances)

    # -- the per-job worker ----------------------------------------------------------------

    async def _job_worker(self, job_id: int, wake: asyncio.Event) -> None:
        # every log line of this task carries the job id (contextvars are per task)
        structlog.contextvars.bind_contextvars(job_id=job_id)
        while not self.stop.is_set():
            wake.clear()
            why = self.releasing.pop(job_id, None)
            if why is not None and await self.store.release_job(job_id, why=why):
                self._forget(job_id)  # another daemon claims it at its next pass
                return
            job, watched = await self.store.job_state(job_id)
            mine = self.owner is None or job is None or job.owner == self.owner
            if job is None or JobStatus(job.status).is_terminal or not mine:
                self._forget(job_id)  # over, or (several daemons) run by another one now
                return
            try:
                delay = await self._step(job, watched)
            except StaleTransition as exc:
                # someone else (a cancel from the API) moved the job: look again at once
                log.info("stale transition; re-reading", job=job_id, error=str(exc))
                delay = 0.0
            await sleep(delay, wake, self.stop)

    def _forget(self, job_id: int) -> None:
        """The job is over: drop what was kept in memory for it."""
        self.memory.forget(job_id)
        self.releasing.pop(job_id, None)
        self.idle.forget(job_id)
        self.attempts.forget_job(job_id)
        self.losses.forget_job(job_id)
        self.deadline.forget(job_id)

    def task_of(self, job: JobRow) -> Task:
        return self.memory.task(job)

    def _task_unkept(self, job: JobRow) -> Task:
        """The task of a job this daemon does not run, parsed and not kept (80 us)."""
        return self.memory.known(job.id) or Task.model_validate(json.loads(job.spec_json))

    async def _step(self, job: JobRow, watched: Watched | None = None) -> float:
        status = JobStatus(job.status)
        if status == JobStatus.CANCELLING:
            await self._cancel(job)
            return 0.0
        if status in (JobStatus.PENDING, JobStatus.RECOVERING):
            async with self.placing:
                return await self._place(job)
        return await self._watch(job, watched)

    async def _cancel(self, job: JobRow) -> None:
        now = self.clock()
        if job.current_attempt:
            aid = attempt_id(job.id, job.current_attempt)
            await self.attempts.end(aid, EndReason.CANCELLED, "cancelled by the user", now)
            await self.attempts.terminate(aid)
        await self.store.transition_job(
            job.id,
            from_=[JobStatus.CANCELLING],
            to=JobStatus.CANCELLED,
            reason="cancelled by the user; every instance terminated",
            now=now,
            ended_at=now,
        )
        self.metrics.jobs_finished.labels("CANCELLED").inc()

    # -- placement -------------------------------------------------------------------------

    async def _history(self, now: float) -> list[history.ZoneEvent]:
        return await self.attempts.zone_history.read(now)  # kept, and topped up from the store

    async def _job_view(self, job: JobRow, task: Task, now: float) -> strategies.JobView:
        return job_view(job, task, await self.store.attempts(job.id), now)

    def placeable(self, project: str, task: Task) -> list[CatalogEntry]:
        """What a relaunch may choose from: what the launch could (``placeable_catalog``)."""
        cfg = self.settings.providers
        return placeable_catalog(task, self.catalog, project, enabled=self.providers, configs=cfg)

    async def _place(self, job: JobRow) -> float:
        now = self.clock()
        task = self.task_of(job)
        attempts = await self.store.attempts(job.id)  # one read: the view's, and any orphan
        orphan = next((a for a in attempts if a.attempt == job.current_attempt + 1), None)
        if orphan is not None and orphan.status == AttemptStatus.ENDED:
            await self.store.update_job_fields(job.id, now=now, current_attempt=orphan.attempt)
            return 0.0
        if orphan is not None:
            # A daemon killed between writing an attempt's intent and moving the job to
            # STARTING: the intent stands (its instances may be starting already) — adopt it.
            await self.store.transition_job(
                job.id,
                from_=[JobStatus.PENDING, JobStatus.RECOVERING],
                to=JobStatus.STARTING,
                reason=f"attempt {orphan.attempt}: resuming the launch a restart interrupted "
                f"({orphan.provider}/{orphan.region}/{orphan.zone})",
                now=now,
                current_attempt=orphan.attempt,
                next_try_at=None,
            )
            return await self._launch_nodes(job, task, orphan.id)
        if job.next_try_at is not None and now < job.next_try_at:
            return job.next_try_at - now
        view = job_view(job, task, attempts, now)
        decision = strategies.next_placement(
            view,
            catalog=self.placeable(job.project, task),
            history=await self._history(now),
            now=now,
            jitter=self.rng.random(),
            tuning=self.tuning,
        )
        if isinstance(decision, strategies.GiveUp):
            await self.store.transition_job(
                job.id,
                from_=[JobStatus.PENDING, JobStatus.RECOVERING],
                to=JobStatus.FAILED_NO_RESOURCE,
                reason=decision.reason,
                now=now,
                ended_at=now,
                message=decision.reason,
            )
            self.metrics.jobs_finished.labels("FAILED_NO_RESOURCE").inc()
            return 0.0
        if isinstance(decision, strategies.Wait):
            # waiting counts toward give_up_after, whether or not a launch failed
            await self.store.update_job_fields(
                job.id,
                now=now,
                next_try_at=decision.until,
                first_failure_at=job.first_failure_at or now,
                message=decision.reason,
                event=f"waiting {decision.until - now:.1f}s: {decision.reason}",
            )
            return max(0.0, decision.until - now)
        return await self._launch(job, task, decision, now)

    async def _launch(
        self, job: JobRow, task: Task, decision: strategies.Relaunch, now: float
    ) -> float:
        cand = decision.candidate
        n = job.current_attempt + 1
        aid = attempt_id(job.id, n)
        runner_ups = ", ".join(
            f"{c.region}/{c.zone} {c.instance_type} {c.market} ${c.price_per_hour:.3f}/h"
            for c in decision.runner_ups[:3]
        )
        # the intent, before any provider call, and the job STARTING: one transaction
        _, attempt, rows = await self.store.start_attempt(
            attempt_intent(job, task, cand, n, now),
            from_=[JobStatus.PENDING, JobStatus.RECOVERING],
            reason=(
                f"attempt {n}: {placed_at(cand)} ({decision.reason})"
                + (f"; runner-ups: {runner_ups}" if runner_ups else "")
            ),
        )
        self.metrics.attempts.labels(cand.provider, cand.region, str(cand.market)).inc()
        structlog.contextvars.bind_contextvars(attempt_id=aid)
        log.info("placed", at=placed_at(cand), market=str(cand.market), reason=decision.reason)
        return await self._launch_nodes(job, task, aid, (attempt, rows))

    async def _launch_nodes(
        self, job: JobRow, task: Task, aid: str, written: Written | None = None
    ) -> float:
        """Launch the attempt's nodes; on a refusal, back to where the job waits for a place.
        Launched: nothing changes without news (an agent's report or a listing wakes the
        worker), so the next look is a listing interval away, not at once."""
        detail = await self.attempts.launch_nodes(job, task, aid, written)
        if detail is None:
            return self.settings.observe_interval
        now = self.clock()
        attempt = await self.store.require_attempt(aid)
        fresh = await self.store.require_job(job.id)
        back = JobStatus.RECOVERING if fresh.recoveries or fresh.started_at else JobStatus.PENDING
        await self.store.transition_job(
            job.id,
            from_=[JobStatus.STARTING],
            to=back,
            reason=f"launch failed in {attempt.region}/{attempt.zone}: {detail}",
            now=now,
            failed_launches=fresh.failed_launches + 1,
            first_failure_at=fresh.first_failure_at or now,
        )
        return 0.0

    # -- watching a running attempt --------------------------------------------------------

    async def _watch(self, job: JobRow, watched: Watched | None) -> float:
        now = self.clock()
        task = self.task_of(job)
        aid = attempt_id(job.id, job.current_attempt)
        if watched is None:  # read with the job (JobStore.job_state) when it was watched
            watched = (
                await self.store.require_attempt(aid),
                await self.store.instances(attempt_id=aid),
            )
        attempt, every = watched
        rows = current_nodes(every)  # the others: replaced nodes, a noticed one may drain
        await self.losses.settle(attempt, every, now)
        unlaunched = any(r.instance_id is None for r in rows)
        if attempt.status == AttemptStatus.PROVISIONING and unlaunched:
            return await self._launch_nodes(job, task, aid)  # finish an interrupted launch
        if await self.losses.overdue(job, attempt, rows, now):
            return 0.0  # a kept node never stopped for the restart: the whole job moves
        listing = self.observer.latest(attempt.provider) or Observation()
        reports = [
            w.NodeReport(
                key=r.key,
                node_rank=r.node_rank,
                phase=r.phase,
                reported=bool(r.last_heartbeat_at),
                verdict=detection.classify(
                    node_evidence(r, listing, now), now=now, timeouts=self.timeouts
                ),
            )
            for r in rows
        ]
        action = w.decide_watch(reports)
        match action:
            case w.AttemptLost(node):
                return await self.losses.lost(job, attempt, reports, node, now)
            case w.SetupFailed(node, code):
                return await self._finish(
                    job,
                    aid,
                    JobStatus.FAILED_SETUP,
                    EndReason.SETUP_FAILED,
                    f"setup exited with {code} on node {node.node_rank}",
                    now,
                )
            case w.RunFailed(node):
                return await self._user_failure(job, task, aid, node, now)
            case w.Succeeded():
                return await self._finish(
                    job,
                    aid,
                    JobStatus.SUCCEEDED,
                    EndReason.SUCCEEDED,
                    "run exited 0 on every node",
                    now,
                )
            case w.KeepWatching():
                await self._progress(job, attempt, action, now)
        running = job.status == JobStatus.RUNNING
        if running and self.idle.policy.minutes > 0 and await self._idle_gpus(job, aid, rows, now):
            return 0.0
        if await self.deadline.move(job, task, attempt, now):
            return 0.0
        floor = self.settings.observe_interval
        due = next_look(
            job,
            task,
            attempt,
            now,
            known=self.deadline.known_slack(job, attempt),
        )
        return recheck_in(
            rows, listing, now=now, timeouts=self.timeouts, floor=floor, market_due=due
        )

    async def _progress(
        self, job: JobRow, attempt: AttemptRow, seen: w.KeepWatching, now: float
    ) -> None:
        """Move a healthy attempt along: every agent reported, then every node running."""
        if seen.suspects:
            self.metrics.suspects.inc()
            log.info(
                "suspect instances: no heartbeat, provider says alive", keys=list(seen.suspects)
            )
        aid = attempt.id
        if seen.all_running and job.status == JobStatus.STARTING:
            # attempt (through SETTING_UP), job and the zone's LAUNCHED: one transaction
            await self.store.attempt_running(
                job.id,
                aid,
                now=now,
                reason=f"running in {attempt.region}/{attempt.zone} ({attempt.market})",
                started_at=job.started_at or now,
                failed_launches=0,
                first_failure_at=None,
            )
            lost_at = self.memory.recovered(job.id)
            if job.recoveries and lost_at is not None:
                self.metrics.recovery_seconds.observe(now - lost_at)
        elif attempt.status == AttemptStatus.PROVISIONING and seen.all_reported:
            await self.store.transition_attempt(
                aid,
                from_=[AttemptStatus.PROVISIONING],
                to=AttemptStatus.SETTING_UP,
                reason="every agent reported",
                now=now,
            )

    async def _idle_gpus(
        self, job: JobRow, aid: str, rows: Sequence[InstanceRow], now: float
    ) -> bool:
        """Apply the idle-GPU rule; True: the job was stopped by it."""
        why = await self.idle.check(job.id, aid, rows, now)
        if why is None:
            return False
        await self.attempts.end(aid, EndReason.CANCELLED, why, now)
        await self.attempts.terminate(aid)
        await self.store.transition_job(
            job.id,
            from_=[JobStatus.RUNNING],
            to=JobStatus.CANCELLED,
            reason=f"stopped by the idle-GPU rule: {why}",
            now=now,
            ended_at=now,
        )
        self.metrics.jobs_finished.labels("CANCELLED").inc()
        return True

    async def _user_failure(
        self, job: JobRow, task: Task, aid: str, node: w.NodeReport, now: float
    ) -> float:
        verdict = node.verdict
        code = verdict.exit_code if verdict.exit_code is not None else -1
        rec = task.job_recovery
        decision = restarts.on_job_exit(
            code,
            max_restarts_on_errors=rec.max_restarts_on_errors,
            recover_on_exit_codes=rec.recover_on_exit_codes,
            user_restarts_so_far=job.user_restarts,
        )
        detail = f"run exited with {code} on node {node.node_rank}"
        if isinstance(decision, restarts.Fail):
            return await self._finish(
                job,
                aid,
                JobStatus.FAILED,
                EndReason.USER_FAILED,
                f"{detail}; {decision.reason}",
                now,
            )
        await self.attempts.end(aid, EndReason.USER_FAILED, detail, now)
        await self.attempts.terminate(aid)
        await self.store.transition_job(
            job.id,
            from_=[JobStatus.STARTING, JobStatus.RUNNING],
            to=JobStatus.RECOVERING,
            reason=f"{detail}; restarting ({decision.reason})",
            now=now,
            user_restarts=job.user_restarts + (1 if decision.counts else 0),
            recoveries=job.recoveries + 1,
        )
        return 0.0

    async def _finish(
        self, job: JobRow, aid: str, status: JobStatus, end: EndReason, detail: str, now: float
    ) -> float:
        log.info("job finished", attempt_id=aid, status=str(status), detail=detail)
        await self.attempts.end(aid, end, detail, now)
        await self.store.transition_job(
            job.id,
            from_=[JobStatus.STARTING, JobStatus.RUNNING],
            to=status,
            reason=detail,
            now=now,
            ended_at=now,
            message=detail,
        )
        await self.attempts.terminate(aid)
        self.metrics.jobs_finished.labels(str(status)).inc()
        return 0.0

    # -- entry points for the API ----------------------------------------------------------

    async def checkpointed(
        self, job_id: int, attempt: int, fraction: float, at: float, *, now: float
    ) -> None:
        """An agent reported, at ``now``, its last checkpoint's progress, synced at ``at`` by
        its clock (``spotd.control.deadline``). Another daemon may run the job (several
        daemons on one database): its task is then parsed, not kept in this one's memory."""
        task_of = self.task_of if self.workers.runs(job_id) else self._task_unkept
        if await self.deadline.checkpointed(
            job_id, task_of, attempt, fraction, at, received_at=now
        ):
            self.wake(job_id)

    def provider_for_instance(self, key_or_id: str) -> tuple[Provider, ObservedInstance] | None:
        return self.observer.find(key_or_id)

    def instances_of_job(self, job_id: int) -> list[tuple[Provider, ObservedInstance]]:
        """The job's listed instances that are running (or running out a notice)."""
        live = (InstanceState.RUNNING, InstanceState.NOTICE)
        return [(p, o) for p, o in self.observer.tagged(TAG_JOB, str(job_id)) if o.state in live]
