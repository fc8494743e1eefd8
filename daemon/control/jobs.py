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
import json
import random
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from spotd.files import mounts as s3src
from spotd.aiokit import Supervisor, sleep
from spotd.config import Settings
from spotd.agent.gpu import IdleAction, IdleGpuPolicy, IdleState, IdleVerdict, idle_gpu_step, parse_samples
from spotd.metrics import DaemonMetrics
from spotd.providers.base import (
    TAG_ATTEMPT,
    TAG_HOME,
    TAG_JOB,
    TAG_KEY,
    TAG_NODE,
    TAG_REPLICA,
    InstanceSpec,
    ObservedInstance,
    Provider,
    ProviderError,
    ProviderUnavailable,
)
from spotd.recovery import detection, history, restarts, strategies
from spotd.spec import Task
from spotd.store import AsyncStore, AttemptRow, InstanceRow, JobRow, StaleTransition
from spotd.types import (
    AgentConfig,
    AttemptStatus,
    Candidate,
    CatalogEntry,
    EndReason,
    InstanceId,
    InstanceState,
    JobStatus,
    Market,
    RecoveryStrategy,
)
from spotd.files.workdir import CAS_PREFIX, BlobStore

log = structlog.get_logger("spotd.control.jobs")

FINAL_PHASES = ("exited", "setup_failed", "preempted")


def attempt_id(job_id: int, attempt: int) -> str:
    return f"j{job_id}-a{attempt}"


def instance_key(job_id: int, attempt: int, node: int) -> str:
    return f"j{job_id}-a{attempt}-n{node}"


@dataclass
class Observation:
    """The latest batched listing of one provider."""

    started_at: float = 0.0  # when the listing call began: rows created before it are covered
    instances: dict[str, ObservedInstance] = field(default_factory=dict)  # by key


class Controller:
    def __init__(
        self,
        *,
        settings: Settings,
        store: AsyncStore,
        providers: Mapping[str, Provider],
        metrics: DaemonMetrics,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.providers = dict(providers)
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()
        self.stop = asyncio.Event()
        self.sup = Supervisor(self.stop)
        self.observations: dict[str, Observation] = {p: Observation() for p in self.providers}
        self.wakeups: dict[int, asyncio.Event] = {}
        self._tasks: dict[int, Task] = {}
        self._lost_at: dict[int, float] = {}  # when each recovering job's attempt was lost
        self._notices: dict[str, float] = {}  # attempt id -> notice deadline, while it drains
        self.timeouts = detection.DetectionTimeouts(
            suspect_after=settings.suspect_after, lost_after=settings.lost_after
        )
        self.idle_gpu = IdleGpuPolicy(
            minutes=settings.idle_gpu_minutes, threshold_pct=settings.idle_gpu_threshold,
            action=IdleAction(settings.idle_gpu_action),
        )
        self._gpu_idle: dict[int, IdleState] = {}  # per job; restarts from zero with the daemon

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def catalog(self) -> list[CatalogEntry]:
        return [e for p in self.providers.values() for e in p.catalog()]

    async def start(self) -> None:
        """Adopt what the providers report, then start the observers and the job workers."""
        for name in self.providers:
            await self._observe_once(name)
        for job in await self.store.active_jobs():
            self.spawn_worker(job.id)
        for name in self.providers:
            self.sup.spawn(f"observe:{name}", lambda n=name: self._observe_loop(n))

    async def shutdown(self) -> None:
        await self.sup.stop()

    def spawn_worker(self, job_id: int) -> None:
        self.wakeups.setdefault(job_id, asyncio.Event())
        self.sup.spawn(
            f"job:{job_id}",
            lambda: self._job_worker(job_id),
            forever=False,
            on_exit=lambda: self.wakeups.pop(job_id, None),
        )

    def wake(self, job_id: int) -> None:
        ev = self.wakeups.get(job_id)
        if ev is not None:
            ev.set()

    # -- observe ---------------------------------------------------------------------------

    async def _observe_loop(self, provider: str) -> None:
        while not self.stop.is_set():
            await self._observe_once(provider)
            await sleep(self.settings.observe_interval, self.stop)

    async def _observe_once(self, provider_name: str) -> None:
        provider = self.providers[provider_name]
        started = self.clock()
        t0 = time.perf_counter()
        try:
            listed = await provider.list_instances()
        except ProviderError as exc:
            self.metrics.provider_errors.labels(provider_name, "list").inc()
            log.warning("listing failed", provider=provider_name, error=str(exc))
            return
        finally:
            self.metrics.provider_calls.labels(provider_name, "list").inc()
        ours = {o.key: o for o in listed if o.tags.get(TAG_HOME) == self.settings.home_tag}
        previous = self.observations[provider_name].instances
        self.observations[provider_name] = Observation(started_at=started, instances=ours)
        await self._reap(provider_name, ours)
        changed = {
            k for k, o in ours.items() if previous.get(k) is None or previous[k].state != o.state
        } | (set(previous) - set(ours))
        for key in changed:
            job = key.split("-")[0]
            if job.startswith("j") and job[1:].isdigit():
                self.wake(int(job[1:]))
        self.metrics.reconcile_seconds.observe(time.perf_counter() - t0)

    async def _reap(self, provider_name: str, listed: dict[str, ObservedInstance]) -> None:
        """Terminate what we do not know, and what ended attempts no longer need."""
        provider = self.providers[provider_name]
        now = self.clock()
        rows = {r.key: r for r in await self.store.instances(live_only=True)}
        attempts: dict[str, Any] = {}
        for key, obs in listed.items():
            if TAG_REPLICA in obs.tags:
                continue  # a service replica: spotd.control.services owns it (and reaps its strays)
            row = rows.get(key)
            if row is None:
                known = await self.store.get_instance(key)
                if known is None:
                    log.warning("reaping unknown instance", instance=obs.id, key=key)
                    await self.store.add_event(
                        kind="instance.leak",
                        message=f"terminated {obs.id}: tagged as ours but not in the store",
                        now=now,
                    )
                await provider.terminate(obs.id)
                continue
        for key, row in rows.items():
            if row.provider != provider_name:
                continue
            if row.attempt_id not in attempts:
                attempts[row.attempt_id] = await self.store.get_attempt(row.attempt_id)
            attempt = attempts[row.attempt_id]
            if attempt is None or attempt.status != AttemptStatus.ENDED:
                continue
            obs = listed.get(key)
            alive = obs is not None and obs.state in (InstanceState.RUNNING, InstanceState.NOTICE)
            draining = (
                alive
                and attempt.end_reason == EndReason.PREEMPTED
                and obs is not None
                and obs.notice_deadline is not None
                and now < obs.notice_deadline
                and row.phase not in FINAL_PHASES
            )
            if draining:
                continue  # let the agent checkpoint until its notice runs out
            if row.instance_id is not None and obs is not None:
                await provider.terminate(InstanceId(row.instance_id))
            await self.store.mark_instance_terminated(key, now=now)

    # -- the per-job worker ----------------------------------------------------------------

    async def _job_worker(self, job_id: int) -> None:
        # every log line of this task carries the job id (contextvars are per task)
        structlog.contextvars.bind_contextvars(job_id=job_id)
        wake = self.wakeups.setdefault(job_id, asyncio.Event())
        while not self.stop.is_set():
            wake.clear()
            job = await self.store.get_job(job_id)
            if job is None or JobStatus(job.status).is_terminal:
                return
            try:
                delay = await self._step(job)
            except StaleTransition as exc:
                # someone else (a cancel from the API) moved the job: look again at once
                log.info("stale transition; re-reading", job=job_id, error=str(exc))
                delay = 0.0
            await sleep(delay, wake, self.stop)

    def task_of(self, job: JobRow) -> Task:
        task = self._tasks.get(job.id)
        if task is None:
            task = Task.model_validate(json.loads(job.spec_json))
            self._tasks[job.id] = task
        return task

    async def _step(self, job: JobRow) -> float:
        status = JobStatus(job.status)
        if status == JobStatus.CANCELLING:
            await self._cancel(job)
            return 0.0
        if status in (JobStatus.PENDING, JobStatus.RECOVERING):
            return await self._place(job)
        return await self._watch(job)

    async def _cancel(self, job: JobRow) -> None:
        now = self.clock()
        if job.current_attempt:
            aid = attempt_id(job.id, job.current_attempt)
            await self._end_attempt(aid, EndReason.CANCELLED, "cancelled by the user", now)
            await self._terminate_attempt(aid)
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
        rows = await self.store.zone_events(since=now - 24 * 3600)
        return [history.ZoneEvent.from_row(r) for r in rows]

    async def _job_view(self, job: JobRow, task: Task, now: float) -> strategies.JobView:
        attempts = await self.store.attempts(job.id)
        last = attempts[-1] if attempts else None
        last_candidate = None
        if last is not None:
            last_candidate = Candidate(
                provider=last.provider,
                region=last.region,
                zone=last.zone,
                instance_type=last.instance_type,
                market=Market(last.market),
                price_per_hour=last.price_per_hour,
                expected_cost=last.price_per_hour,
            )
        work_done = sum(
            (a.ended_at or now) - a.started_at
            for a in attempts
            if a.started_at is not None and a.end_reason != EndReason.LAUNCH_FAILED
        )
        recovery = task.job_recovery
        return strategies.JobView(
            strategy=RecoveryStrategy(recovery.strategy),
            request=task.resource_request(),
            num_nodes=task.num_nodes,
            submitted_at=job.submitted_at,
            last=last_candidate,
            last_end=EndReason(last.end_reason) if last and last.end_reason else None,
            failed_launches=job.failed_launches,
            first_failure_at=job.first_failure_at,
            give_up_after=recovery.give_up_after_seconds,
            deadline=job.deadline,
            expected_duration=recovery.expected_duration_seconds,
            work_done=work_done,
        )

    async def _place(self, job: JobRow) -> float:
        now = self.clock()
        task = self.task_of(job)
        orphan = await self.store.get_attempt(attempt_id(job.id, job.current_attempt + 1))
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
        view = await self._job_view(job, task, now)
        decision = strategies.next_placement(
            view, catalog=self.catalog, history=await self._history(now), now=now,
            jitter=self.rng.random(),
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
        nodes = [
            {"key": instance_key(job.id, n, rank), "node_rank": rank, "token": secrets.token_urlsafe(24)}
            for rank in range(task.num_nodes)
        ]
        # the intent, before any provider call
        await self.store.create_attempt(
            job_id=job.id,
            attempt=n,
            provider=cand.provider,
            region=cand.region,
            zone=cand.zone,
            instance_type=cand.instance_type,
            market=str(cand.market),
            price_per_hour=cand.price_per_hour,
            num_nodes=task.num_nodes,
            now=now,
            instances=nodes,
        )
        runner_ups = ", ".join(
            f"{c.region}/{c.zone} {c.instance_type} {c.market} ${c.price_per_hour:.3f}/h"
            for c in decision.runner_ups[:3]
        )
        await self.store.transition_job(
            job.id,
            from_=[JobStatus.PENDING, JobStatus.RECOVERING],
            to=JobStatus.STARTING,
            reason=(
                f"attempt {n}: {cand.provider}/{cand.region}/{cand.zone} {cand.instance_type} "
                f"{cand.market} ${cand.price_per_hour:.3f}/h ({decision.reason})"
                + (f"; runner-ups: {runner_ups}" if runner_ups else "")
            ),
            now=now,
            current_attempt=n,
            next_try_at=None,
        )
        self.metrics.attempts.labels(cand.provider, cand.region, str(cand.market)).inc()
        structlog.contextvars.bind_contextvars(attempt_id=aid)
        log.info("placed", provider=cand.provider, region=cand.region, zone=cand.zone,
                 instance_type=cand.instance_type, market=str(cand.market),
                 price_per_hour=cand.price_per_hour, reason=decision.reason)
        return await self._launch_nodes(job, task, aid)

    async def _launch_nodes(self, job: JobRow, task: Task, aid: str) -> float:
        """Create every node of the attempt that has no instance id yet (idempotent by key)."""
        attempt = await self.store.get_attempt(aid)
        rows = await self.store.instances(attempt_id=aid)
        provider = self.providers[attempt.provider]
        spec_env = dict(task.envs) | dict(task.secrets)
        spec_env["SPOTD_NODE_IPS"] = "\n".join("127.0.0.1" for _ in rows)
        req = task.resource_request()
        gpus = max((o.accelerator_count for o in req.options), default=0)
        ckpt = self.settings.checkpoints_dir / job.task_id
        await_from, await_until = await self._draining_predecessor(job.id, attempt.attempt)
        workdir = task.workdir  # a package reference ("cas:<sha>") made at submission
        mounts = {remote: m.source for remote, m in task.file_mounts.items()}
        s3 = s3src.options_from(self.providers)
        try:
            blob_store = await self._package_store_for(job, provider, workdir, mounts, s3)
        except ProviderError as exc:
            blob_store = ""
            failed: list[Any] = [exc]
        else:
            failed = []

        async def one(row: InstanceRow) -> None:
            agent = AgentConfig(
                instance_key=row.key,
                attempt_id=aid,
                job_id=job.id,
                task_id=job.task_id,
                attempt=attempt.attempt,
                node_rank=row.node_rank,
                num_nodes=len(rows),
                setup=task.setup,
                run=task.run,
                envs=spec_env,
                secret_names=tuple(task.secrets),
                num_gpus_per_node=gpus,
                # a provider whose instances cannot reach our unix socket says where to call
                daemon_url=getattr(provider, "daemon_url", None)
                or f"unix:{self.settings.socket_path}",
                notice_url=getattr(provider, "notice_url", "") or "",
                token=row.token,
                checkpoint_store=str(ckpt),
                checkpoint_sync_seconds=self.settings.checkpoint_sync_seconds,
                heartbeat_seconds=self.settings.heartbeat_seconds,
                term_grace_seconds=self.settings.term_grace_seconds,
                workdir=workdir,
                blob_store=blob_store,
                file_mounts=mounts,
                s3_endpoint_url=s3.endpoint_url or "",
                await_final_from=await_from,
                await_final_until=await_until,
            )
            spec = InstanceSpec(
                key=row.key,
                region=attempt.region,
                zone=attempt.zone,
                instance_type=attempt.instance_type,
                market=Market(attempt.market),
                tags={
                    TAG_HOME: self.settings.home_tag,
                    TAG_JOB: str(job.id),
                    TAG_ATTEMPT: aid,
                    TAG_NODE: str(row.node_rank),
                    TAG_KEY: row.key,
                },
                agent=agent,
            )
            self.metrics.provider_calls.labels(provider.name, "launch").inc()
            iid = await provider.launch(spec)
            await self.store.set_instance_id(row.key, str(iid))

        results = failed or await asyncio.gather(
            *(one(r) for r in rows if r.instance_id is None), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors:
            return 0.0
        for e in errors:
            if not isinstance(e, ProviderError):
                raise e
        now = self.clock()
        err = errors[0]
        self.metrics.provider_errors.labels(provider.name, "launch").inc()
        detail = f"{type(err).__name__}: {err}"
        await self.store.add_zone_event(
            provider=attempt.provider, region=attempt.region, zone=attempt.zone,
            kind=history.ZoneEventKind.STOCKOUT.value, at=now, detail=detail,
        )
        await self._end_attempt(aid, EndReason.LAUNCH_FAILED, detail, now)
        await self._terminate_attempt(aid)
        fresh = await self.store.get_job(job.id)
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

    async def _package_store_for(
        self, job: JobRow, provider: Any, workdir: str | None, mounts: dict[str, str],
        s3: s3src.S3Options,
    ) -> str:
        """Where this attempt's agents get their packages: the daemon's local store, or, for a
        provider with an S3 package store, that store, after uploading what it lacks
        (spotd.files.mounts; a relaunch finds its packages there and uploads nothing)."""
        local = str(self.settings.home / "cas")
        url = getattr(getattr(provider, "config", None), "package_store_url", None)
        refs = [r for r in [workdir, *mounts.values()] if r and r.startswith(CAS_PREFIX)]
        if not url or not refs:
            return local
        remote = s3src.S3PackageStore(url, endpoint_url=s3.endpoint_url, profile=s3.profile)
        try:
            up = await remote.upload(refs, BlobStore(self.settings.home / "cas"))
        except Exception as exc:  # noqa: BLE001 - S3 down, credentials gone: no attempt
            raise ProviderUnavailable(f"uploading packages to {url}: {exc}") from exc
        await self.store.add_event(
            kind="files.uploaded",
            message=(
                f"{up.packages} packages to {url}: {up.cached_packages} already there; "
                f"transferred {up.new_blobs} of {up.blobs} files, {up.new_bytes / 1e6:.1f} MB"
            ),
            now=self.clock(),
            job_id=job.id,
            data={"store": url, "packages": up.packages, "cached_packages": up.cached_packages,
                  "blobs": up.blobs, "new_blobs": up.new_blobs, "new_bytes": up.new_bytes,
                  "heads": up.heads},
        )
        return url

    async def _draining_predecessor(self, job_id: int, attempt: int) -> tuple[int, float]:
        """The attempt preempted with a notice that may still be syncing its checkpoint."""
        now = self.clock()
        for prev in range(attempt - 1, 0, -1):
            rows = await self.store.instances(attempt_id=attempt_id(job_id, prev))
            deadlines = [r.notice_deadline for r in rows if r.notice_deadline]
            if attempt_id(job_id, prev) in self._notices:
                deadlines.append(self._notices[attempt_id(job_id, prev)])
            if deadlines and max(deadlines) > now and not any(
                r.phase in FINAL_PHASES for r in rows
            ):
                return prev, max(deadlines)
            if any(r.instance_id for r in rows):
                break  # only the last attempt that actually ran matters
        return 0, 0.0

    # -- watching a running attempt --------------------------------------------------------

    def _evidence(self, row: InstanceRow, attempt: AttemptRow, now: float) -> detection.NodeEvidence:
        obs_all = self.observations.get(attempt.provider, Observation())
        obs = obs_all.instances.get(row.key)
        covered = row.instance_id is not None and obs_all.started_at > row.created_at + 0.5
        if obs is not None:
            state: InstanceState | None = obs.state
        elif covered:
            state = None  # listed after it was created, and not there: gone
        else:
            state = InstanceState.PENDING
        return detection.NodeEvidence(
            provider_state=state,
            provider_reason=obs.reason if obs else ("not listed by the provider" if covered else ""),
            notice_deadline=(obs.notice_deadline if obs else None) or row.notice_deadline,
            last_heartbeat_at=row.last_heartbeat_at,
            started_at=row.created_at,
            phase=row.phase,
            exit_code=row.exit_code,
            agent_notice=row.notice_deadline is not None,
        )

    async def _watch(self, job: JobRow) -> float:
        now = self.clock()
        task = self.task_of(job)
        aid = attempt_id(job.id, job.current_attempt)
        attempt = await self.store.get_attempt(aid)
        rows = await self.store.instances(attempt_id=aid)
        if attempt.status == AttemptStatus.PROVISIONING and any(r.instance_id is None for r in rows):
            return await self._launch_nodes(job, task, aid)  # finish an interrupted launch
        verdicts = [
            (r, detection.classify(self._evidence(r, attempt, now), now=now, timeouts=self.timeouts))
            for r in rows
        ]
        kinds = {v.kind for _, v in verdicts}
        V = detection.VerdictKind
        lost = [(r, v) for r, v in verdicts if v.kind in (V.NOTICE, V.PREEMPTED, V.LOST)]
        if lost:
            row, verdict = lost[0]
            return await self._preempted(job, attempt, row, verdict, now)
        exited = [(r, v) for r, v in verdicts if v.kind == V.EXITED]
        setup_failed = [(r, v) for r, v in exited if v.phase == "setup_failed"]
        if setup_failed:
            code = setup_failed[0][1].exit_code
            return await self._finish(
                job, aid, JobStatus.FAILED_SETUP, EndReason.SETUP_FAILED,
                f"setup exited with {code} on node {setup_failed[0][0].node_rank}", now,
            )
        failed = [(r, v) for r, v in exited if v.exit_code not in (0, None)]
        if failed:
            return await self._user_failure(job, task, aid, failed[0][0], failed[0][1], now)
        if len(exited) == len(rows):
            return await self._finish(
                job, aid, JobStatus.SUCCEEDED, EndReason.SUCCEEDED,
                "run exited 0 on every node", now,
            )
        if V.SUSPECT in kinds:
            suspects = [r.key for r, v in verdicts if v.kind == V.SUSPECT]
            self.metrics.suspects.inc()
            log.info("suspect instances: no heartbeat, provider says alive", keys=suspects)
        phases = {r.phase for r in rows}
        if attempt.status == AttemptStatus.PROVISIONING and all(r.last_heartbeat_at for r in rows):
            await self.store.transition_attempt(
                aid, from_=[AttemptStatus.PROVISIONING], to=AttemptStatus.SETTING_UP,
                reason="every agent reported", now=now,
            )
        if phases <= {"run", "exited"} and job.status == JobStatus.STARTING:
            await self.store.transition_attempt(
                aid, from_=[AttemptStatus.PROVISIONING, AttemptStatus.SETTING_UP],
                to=AttemptStatus.RUNNING, reason="run started on every node", now=now,
            )
            await self.store.transition_job(
                job.id, from_=[JobStatus.STARTING], to=JobStatus.RUNNING,
                reason=f"running in {attempt.region}/{attempt.zone} ({attempt.market})",
                now=now, started_at=job.started_at or now, failed_launches=0,
                first_failure_at=None,
            )
            await self.store.add_zone_event(
                provider=attempt.provider, region=attempt.region, zone=attempt.zone,
                kind=history.ZoneEventKind.LAUNCHED.value, at=now, detail=attempt.market,
            )
            if job.recoveries:
                self._observe_recovery(job, now)
        if job.status == JobStatus.RUNNING and self.idle_gpu.minutes > 0:
            if await self._idle_gpus(job, aid, rows, now):
                return 0.0
        if (
            job.status == JobStatus.RUNNING
            and attempt.market == str(Market.SPOT)
            and strategies.should_switch_to_ondemand(
                await self._job_view(job, task, now), now=now
            )
        ):
            await self._end_attempt(
                aid, EndReason.MIGRATED, "deadline: the remaining slack requires on-demand", now
            )
            await self._terminate_attempt(aid)
            await self.store.transition_job(
                job.id, from_=[JobStatus.RUNNING], to=JobStatus.RECOVERING,
                reason="moving to on-demand: the remaining slack no longer allows spot",
                now=now, recoveries=job.recoveries + 1,
            )
            return 0.0
        return self.settings.observe_interval

    async def _idle_gpus(
        self, job: JobRow, aid: str, rows: Sequence[InstanceRow], now: float
    ) -> bool:
        """Apply the idle-GPU rule (decided by spotd.agent.gpu.idle_gpu_step); True: job stopped."""
        nodes = [None if r.gpus_json is None else parse_samples(json.loads(r.gpus_json))
                 for r in rows]
        verdict, self._gpu_idle[job.id] = idle_gpu_step(
            nodes, self.idle_gpu, self._gpu_idle.get(job.id, IdleState()), now
        )
        if verdict not in (IdleVerdict.FLAG, IdleVerdict.STOP):
            return False
        p = self.idle_gpu
        why = (f"GPUs idle: below {p.threshold_pct:g}% utilisation on every node for "
               f"{p.minutes:g} min")
        await self.store.add_event(kind="gpu.idle", message=why, now=now, job_id=job.id,
                                   attempt_id=aid, data={"action": str(p.action)})
        if verdict == IdleVerdict.FLAG:
            await self.store.update_job_fields(job.id, now=now, message=f"flagged: {why}")
            return False
        await self._end_attempt(aid, EndReason.CANCELLED, why, now)
        await self._terminate_attempt(aid)
        await self.store.transition_job(
            job.id, from_=[JobStatus.RUNNING], to=JobStatus.CANCELLED,
            reason=f"stopped by the idle-GPU rule: {why}", now=now, ended_at=now,
        )
        self.metrics.jobs_finished.labels("CANCELLED").inc()
        return True

    def _observe_recovery(self, job: JobRow, now: float) -> None:
        lost_at = self._lost_at.pop(job.id, None)
        if lost_at is not None:
            self.metrics.recovery_seconds.observe(now - lost_at)

    async def _preempted(
        self, job: JobRow, attempt: AttemptRow, row: InstanceRow, verdict: detection.Verdict, now: float
    ) -> float:
        aid = attempt.id
        evidence = verdict.evidence
        log.warning("attempt lost", attempt_id=aid, instance=row.key, verdict=str(verdict.kind),
                    evidence=evidence, region=attempt.region, zone=attempt.zone)
        self.metrics.preemptions.labels(attempt.provider, attempt.region).inc()
        await self.store.add_zone_event(
            provider=attempt.provider, region=attempt.region, zone=attempt.zone,
            kind=history.ZoneEventKind.PREEMPTED.value, at=now, detail=evidence,
        )
        await self._end_attempt(aid, EndReason.PREEMPTED, evidence, now)
        if verdict.kind == detection.VerdictKind.NOTICE and verdict.notice_deadline:
            self._notices[aid] = verdict.notice_deadline
        if verdict.kind != detection.VerdictKind.NOTICE:
            await self._terminate_attempt(aid)
        await self.store.transition_job(
            job.id,
            from_=[JobStatus.STARTING, JobStatus.RUNNING],
            to=JobStatus.RECOVERING,
            reason=f"preempted in {attempt.region}/{attempt.zone} (node {row.node_rank}): {evidence}",
            now=now,
            preemptions=job.preemptions + 1,
            recoveries=job.recoveries + 1,
            failed_launches=0,
            first_failure_at=None,
        )
        self._lost_at[job.id] = now
        return 0.0

    async def _user_failure(
        self, job: JobRow, task: Task, aid: str, row: InstanceRow, verdict: detection.Verdict, now: float
    ) -> float:
        code = verdict.exit_code if verdict.exit_code is not None else -1
        rec = task.job_recovery
        decision = restarts.on_job_exit(
            code,
            max_restarts_on_errors=rec.max_restarts_on_errors,
            recover_on_exit_codes=rec.recover_on_exit_codes,
            user_restarts_so_far=job.user_restarts,
        )
        detail = f"run exited with {code} on node {row.node_rank}"
        if isinstance(decision, restarts.Fail):
            return await self._finish(
                job, aid, JobStatus.FAILED, EndReason.USER_FAILED, f"{detail}; {decision.reason}", now
            )
        await self._end_attempt(aid, EndReason.USER_FAILED, detail, now)
        await self._terminate_attempt(aid)
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
        await self._end_attempt(aid, end, detail, now)
        await self.store.transition_job(
            job.id,
            from_=[JobStatus.STARTING, JobStatus.RUNNING],
            to=status,
            reason=detail,
            now=now,
            ended_at=now,
            message=detail,
        )
        await self._terminate_attempt(aid)
        self.metrics.jobs_finished.labels(str(status)).inc()
        return 0.0

    async def _end_attempt(self, aid: str, end: EndReason, detail: str, now: float) -> None:
        try:
            ended = await self.store.transition_attempt(
                aid,
                from_=[AttemptStatus.PROVISIONING, AttemptStatus.SETTING_UP, AttemptStatus.RUNNING],
                to=AttemptStatus.ENDED,
                reason=f"{end}: {detail}",
                now=now,
                end_reason=end,
                end_detail=detail,
            )
        except StaleTransition:
            return  # already ended (a cancel racing a preemption): the first reason stands
        if ended.started_at is not None and ended.market == str(Market.SPOT):
            # survival time in the zone: the risk model learns from it as well as from losses
            await self.store.add_zone_event(
                provider=ended.provider, region=ended.region, zone=ended.zone,
                kind=history.ZoneEventKind.RAN.value, at=now,
                detail=f"{now - ended.started_at:.1f} seconds on spot",
            )

    async def _terminate_attempt(self, aid: str) -> None:
        attempt = await self.store.get_attempt(aid)
        provider = self.providers[attempt.provider]
        now = self.clock()
        for row in await self.store.instances(attempt_id=aid, live_only=True):
            if row.instance_id is not None:
                try:
                    await provider.terminate(InstanceId(row.instance_id))
                except ProviderError as exc:
                    log.warning("terminate failed; the reaper retries", key=row.key, error=str(exc))
                    continue
            await self.store.mark_instance_terminated(row.key, now=now)

    # -- entry points for the API ----------------------------------------------------------

    def provider_for_instance(self, key_or_id: str) -> tuple[Provider, ObservedInstance] | None:
        for name, obs in self.observations.items():
            for o in obs.instances.values():
                if key_or_id in (o.id, o.key):
                    return self.providers[name], o
        return None

    def instances_of_job(self, job_id: int) -> list[tuple[Provider, ObservedInstance]]:
        out = []
        for name, obs in self.observations.items():
            for o in obs.instances.values():
                if o.tags.get(TAG_JOB) == str(job_id) and o.state in (
                    InstanceState.RUNNING,
                    InstanceState.NOTICE,
                ):
                    out.append((self.providers[name], o))
        return sorted(out, key=lambda po: po[1].key)


def candidates_table(cands: Sequence[Candidate]) -> list[dict[str, Any]]:
    return [
        {
            "provider": c.provider,
            "region": c.region,
            "zone": c.zone,
            "instance_type": c.instance_type,
            "market": str(c.market),
            "price_per_hour": round(c.price_per_hour, 4),
            "expected_cost": round(c.expected_cost, 4),
        }
        for c in cands
    ]
