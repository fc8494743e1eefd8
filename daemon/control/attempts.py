"""A job's attempts on the providers: launching their nodes, ending them, reaping leftovers.

An attempt is one try at running a job somewhere: its row and its nodes' instance rows are
written (the intent) before any provider call, so ``launch_nodes`` is idempotent by key — it
creates exactly the nodes that have no instance id yet, and a daemon restarted mid-launch
simply calls it again. Ending an attempt records why (the first reason stands when a cancel
races a preemption) and, for spot, how long it survived in its zone.

The reaper runs on every listing of a provider: it terminates tagged instances the store does
not know (a leak), and the instances of ended attempts — except one that got a preemption
notice and is still syncing its checkpoint before the deadline. An attempt not ended whose job
ended (a return to spot written beside on-demand, in a job that finished or was cancelled while
the daemon that wrote it was stopped) is ended CANCELLED and reaped the same way.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from spotd.config import Settings
from spotd.control.agent_config import (
    AgentFiles,
    AgentIdentity,
    build_agent_config,
    held_config,
)
from spotd.control.node_keys import current_nodes, node_envs
from spotd.control.observer import Observation
from spotd.control.packages import package_store_for, s3_options
from spotd.control.retention import ZONE_HISTORY_SECONDS
from spotd.control.zone_cache import ZoneHistoryCache
from spotd.metrics import DaemonMetrics
from spotd.providers.base import (
    TAG_ATTEMPT,
    TAG_HOME,
    TAG_JOB,
    TAG_KEY,
    TAG_NODE,
    TAG_PROJECT,
    TAG_REPLICA,
    InstanceSpec,
    ObservedInstance,
    Provider,
    ProviderError,
)
from spotd.recovery import detection, strategies
from spotd.spec import Task
from spotd.store import (
    AsyncStore,
    AttemptIntent,
    AttemptRow,
    InstanceRow,
    JobRow,
    StaleTransition,
    current_attempt_of,
)
from spotd.types import (
    FINAL_PHASES,
    AttemptStatus,
    Candidate,
    EndReason,
    InstanceId,
    InstanceState,
    Market,
    RecoveryStrategy,
    ZoneEventKind,
)

log = structlog.get_logger("spotd.control.attempts")

GONE = (InstanceState.PREEMPTED, InstanceState.TERMINATED)  # listed, but no longer running


# an attempt and its node rows as the transaction that wrote them returned them
Written = tuple[AttemptRow, Sequence[InstanceRow]]


def attempt_id(job_id: int, attempt: int) -> str:
    return f"j{job_id}-a{attempt}"


def instance_key(job_id: int, attempt: int, node: int) -> str:
    return f"j{job_id}-a{attempt}-n{node}"


def attempt_intent(job: JobRow, task: Task, cand: Candidate, n: int, now: float) -> AttemptIntent:
    """Attempt ``n`` of the job at ``cand``, one node row (with its agent token) per node: the
    intent written before any provider call."""
    nodes = [
        {
            "key": instance_key(job.id, n, rank),
            "node_rank": rank,
            "token": secrets.token_urlsafe(24),
        }
        for rank in range(task.num_nodes)
    ]
    return AttemptIntent(
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


def candidate_of(attempt: AttemptRow) -> Candidate:
    """Where an attempt ran, as a placement decision names it."""
    return Candidate(
        provider=attempt.provider,
        region=attempt.region,
        zone=attempt.zone,
        instance_type=attempt.instance_type,
        market=Market(attempt.market),
        price_per_hour=attempt.price_per_hour,
        expected_cost=attempt.price_per_hour,
    )


def placed_at(cand: Candidate) -> str:
    return (
        f"{cand.provider}/{cand.region}/{cand.zone} {cand.instance_type} {cand.market} "
        f"${cand.price_per_hour:.3f}/h"
    )


def node_evidence(row: InstanceRow, listing: Observation, now: float) -> detection.NodeEvidence:
    """What the agent and the provider's latest listing say about one node."""
    obs = listing.instances.get(row.key)
    # from the launch's answer, not the intent: a listing begun before the provider answered
    # may rightly lack the instance (rows from before version 10 have only created_at)
    launched = row.launched_at if row.launched_at is not None else row.created_at
    covered = row.instance_id is not None and listing.covers(launched)
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


def job_view(
    job: JobRow, task: Task, attempts: Sequence[AttemptRow], now: float
) -> strategies.JobView:
    """What the placement strategies know of a job: its request, its last placement and how
    it ended, its failures so far, and the work done (checkpointed, else time run)."""
    last = current_attempt_of(job, attempts)
    last_candidate = None if last is None else candidate_of(last)
    # progress: what the last checkpoint says (spotd.control.deadline); without one, the
    # time the attempts ran (launch failures excluded), which overstates what a preemption lost
    from_checkpoints = job.work_done_seconds > 0
    work_done = job.work_done_seconds or sum(
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
        progress_from_checkpoints=from_checkpoints,
        restart_overhead=recovery.restart_overhead_seconds,
        safety_margin=recovery.safety_margin_seconds,
    )


class Attempts:
    """The provider-facing half of the job controller; see the module docstring."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: AsyncStore,
        providers: Mapping[str, Provider],
        metrics: DaemonMetrics,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.store = store
        self.providers = providers
        self.metrics = metrics
        self.clock = clock
        self.notices: dict[str, float] = {}  # attempt id -> notice deadline, while it drains
        self.zone_history = ZoneHistoryCache(store, window=ZONE_HISTORY_SECONDS)  # placement's

    def forget_job(self, job_id: int) -> None:
        """The job ended: no later attempt will wait for one of its attempts to drain."""
        prefix = attempt_id(job_id, 0)[:-1]  # "j7-a"
        for aid in [a for a in self.notices if a.startswith(prefix)]:
            del self.notices[aid]

    async def launch_nodes(
        self, job: JobRow, task: Task, aid: str, fresh: Written | None = None
    ) -> str | None:
        """Create every node of the attempt that has no instance id yet. On a provider's
        refusal the attempt is ended (a stockout recorded for its zone) and the refusal is
        returned, in words; None when every node launched. ``fresh``: the attempt and its
        rows just written (not read again)."""
        if fresh is None:
            fresh = (
                await self.store.require_attempt(aid),
                await self.store.instances(attempt_id=aid),
            )
        attempt, every = fresh
        rows = current_nodes(every)  # a replaced node's row is history (control.node_replace)
        provider = self.providers[attempt.provider]
        node_ips = {"SPOTD_NODE_IPS": "\n".join("127.0.0.1" for _ in rows)}
        await_from, await_until = await self.draining_predecessor(job.id, attempt.attempt)
        workdir = task.workdir  # a package reference ("cas:<sha>") made at submission
        mounts = {remote: m.source for remote, m in task.file_mounts.items()}
        s3 = s3_options(self.providers.values())
        try:
            blob_store = await package_store_for(
                settings=self.settings,
                store=self.store,
                provider=provider,
                refs=[workdir, *mounts.values()],
                s3=s3,
                job_id=job.id,
                clock=self.clock,
            )
        except ProviderError as exc:
            blob_store = ""
            failed: list[Any] = [exc]
        else:
            failed = []
        files = AgentFiles(
            checkpoint_store=str(self.settings.checkpoints_dir / job.task_id),
            workdir=workdir,
            blob_store=blob_store,
            file_mounts=mounts,
            s3_endpoint_url=s3.endpoint_url or "",
            await_final_from=await_from,
            await_final_until=await_until,
        )

        async def one(row: InstanceRow) -> None:
            who = AgentIdentity(
                instance_key=row.key,
                attempt_id=aid,
                job_id=job.id,
                task_id=job.task_id,
                attempt=attempt.attempt,
                node_rank=row.node_rank,
                num_nodes=len(rows),
            )
            agent = build_agent_config(
                settings=self.settings,
                provider=provider,
                task=task,
                who=who,
                token=row.token,
                files=files,
                envs=node_ips | node_envs(row.key),
            )
            held = held_config(provider, agent)  # fetched once by the agent (bootstrap)
            if held is not None:
                await self.store.hold_agent_config(row.key, held)
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
                    TAG_PROJECT: job.project,
                },
                agent=agent,
                machine=task.machine(
                    provider=attempt.provider,
                    region=attempt.region,
                    instance_type=attempt.instance_type,
                ),
            )
            self.metrics.provider_calls.labels(provider.name, "launch").inc()
            iid = await provider.launch(spec)
            await self.store.set_instance_id(row.key, str(iid), now=self.clock())

        results = failed or await asyncio.gather(
            *(one(r) for r in rows if r.instance_id is None), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors:
            return None
        for e in errors:
            if not isinstance(e, ProviderError):
                raise e
        now = self.clock()
        err = errors[0]
        self.metrics.provider_errors.labels(provider.name, "launch").inc()
        detail = f"{type(err).__name__}: {err}"
        await self.store.add_zone_event(
            provider=attempt.provider,
            region=attempt.region,
            zone=attempt.zone,
            kind=ZoneEventKind.LAUNCH_FAILED.value,
            at=now,
            detail=detail,
        )
        # a node's replacement that cannot launch ends an attempt that ran: its cost counts
        replacing = len(every) > len(rows)
        end = EndReason.PREEMPTED if replacing else EndReason.LAUNCH_FAILED
        await self.end(aid, end, f"replacement: {detail}" if replacing else detail, now)
        await self.terminate(aid)
        return detail

    async def draining_predecessor(self, job_id: int, attempt: int) -> tuple[int, float]:
        """The attempt preempted with a notice that may still be syncing its checkpoint."""
        now = self.clock()
        for gone in [a for a, deadline in self.notices.items() if deadline <= now]:
            del self.notices[gone]  # a notice that ran out holds nobody back
        for prev in range(attempt - 1, 0, -1):
            rows = await self.store.instances(attempt_id=attempt_id(job_id, prev))
            deadlines = [r.notice_deadline for r in rows if r.notice_deadline]
            if attempt_id(job_id, prev) in self.notices:
                deadlines.append(self.notices[attempt_id(job_id, prev)])
            if (
                deadlines
                and max(deadlines) > now
                and not any(r.phase in FINAL_PHASES for r in rows)
            ):
                return prev, max(deadlines)
            if any(r.instance_id for r in rows):
                break  # only the last attempt that actually ran matters
        return 0, 0.0

    async def end(self, aid: str, end: EndReason, detail: str, now: float) -> None:
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
                provider=ended.provider,
                region=ended.region,
                zone=ended.zone,
                kind=ZoneEventKind.RAN.value,
                at=now,
                detail=f"{now - ended.started_at:.1f} seconds on spot",
            )

    async def terminate(self, aid: str) -> None:
        """Terminate the attempt's live instances; a refusal is left to the reaper."""
        attempt = await self.store.require_attempt(aid)
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

    async def reap(self, provider_name: str, listed: Mapping[str, ObservedInstance]) -> None:
        """Terminate what we do not know, and what ended attempts no longer need; end (CANCELLED)
        and terminate an attempt left not ended in a job that ended."""
        provider = self.providers[provider_name]
        now = self.clock()
        known = await self.store.live_instance_keys()
        # a service replica's instance is the service controller's (and so are its strays)
        strays = {k: o for k, o in listed.items() if k not in known and TAG_REPLICA not in o.tags}
        # ours, already terminated, and listed as gone: terminating it again every tick (a
        # provider keeps ended instances listed a while) only queues calls ahead of the news
        done = await self.store.recorded_instance_keys(
            [k for k, o in strays.items() if o.state in GONE]
        )
        for key, obs in strays.items():
            if key in done:
                continue
            if await self.store.get_instance(key) is None:
                log.warning("reaping unknown instance", instance=obs.id, key=key)
                await self.store.add_event(
                    kind="instance.leak",
                    message=f"terminated {obs.id}: tagged as ours but not in the store",
                    now=now,
                )
            await self._reap_one(provider, obs.id, key)
        orphans: set[str] = set()
        for attempt, row in await self.store.reapable_nodes(provider_name):
            if attempt.status != AttemptStatus.ENDED and attempt.id not in orphans:
                orphans.add(attempt.id)  # its job ended: nothing will take it over
                detail = "the job ended before this attempt was handed it"
                await self.end(attempt.id, EndReason.CANCELLED, detail, now)
            key = row.key
            seen = listed.get(key)
            alive = seen is not None and seen.state in (InstanceState.RUNNING, InstanceState.NOTICE)
            draining = (
                alive
                and attempt.end_reason == EndReason.PREEMPTED
                and seen is not None
                and seen.notice_deadline is not None
                and now < seen.notice_deadline
                and row.phase not in FINAL_PHASES
            )
            if draining:
                continue  # let the agent checkpoint until its notice runs out
            instance = None if seen is None else row.instance_id
            if instance is not None and not await self._reap_one(
                provider, InstanceId(instance), key
            ):
                continue  # still live: the next round tries again
            await self.store.mark_instance_terminated(key, now=now)

    async def _reap_one(self, provider: Provider, instance: InstanceId, key: str) -> bool:
        """Terminate one reaped instance; False when the provider refused (termination
        protection, a tag condition in IAM): logged, and the rest of the round goes on, where
        one such instance stopped every reap after it, round after round."""
        try:
            await provider.terminate(instance)
        except ProviderError as exc:
            log.warning("reaping failed; tried again next round", key=key, error=str(exc))
            return False
        return True
