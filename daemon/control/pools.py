"""Pools (SkyPilot's ``pool:``): N workers kept up, and jobs queued onto them.

A worker is a managed job. ``spotctl jobs pool apply pool.yaml`` submits one job per worker
from the pool's task (its resources, workdir, file_mounts and setup; its ``run`` replaced, and
``SPOTD_POOL`` set), so a worker is placed, preempted and recovered exactly as any job is:
the job controller provisions the replacement in the background, and setup runs once per
worker instance. Once setup is done, the worker's agent (``spotd.agent.pool``) does not run
``run``: it asks the daemon for its next job (``POST /agent/v1/pool/next``), runs it in the
worker's working directory with the job's envs and its rank, and reports its exit code with the
next ask.

``spotctl jobs launch --pool NAME job.yaml --num-jobs N`` provisions nothing: it stores N pool
jobs (ranks 0..N-1, ``$SKYPILOT_JOB_RANK``/``$SKYPILOT_NUM_JOBS``), QUEUED. Which queued job
goes to which free worker is ``spotd.control.pool_queue.assign`` (pure, table-tested); the
claim is one store transaction (``Store.claim_pool_job``), so no job is handed out twice.

A worker lost with a job on it: once its instance is seen gone (terminated by the controller
or the reaper, or its agent reported its end) the job's attempt is ended PREEMPTED and the job
is QUEUED again (``sweep``), so the next free worker runs it, as a new attempt. Sweeps run
whenever a worker of the pool asks for work, whenever the pool is shown, and in the pool
loop (``run``), which also replaces a worker whose job ended (``top_up``: cancelled, or given
up for lack of capacity; not one whose setup failed, which an apply retries).

A run that exits non-zero is queued again while the job has restarts left (its
``job_recovery.max_restarts_on_errors``), and a job lost with its worker more than
``pool_queue.MAX_REQUEUES`` times is FAILED (``pool_queue.after_attempt``). ``cancel`` ends a
queued job at once, and a running one's attempt: its worker asks about its attempt while it
runs (``wanted``), stops it (SIGTERM, grace, SIGKILL) and asks for the next job.

An idle worker's ask is a long poll (``LONG_POLL_SECONDS``): it waits, a second at a time,
for news of its pool (jobs queued, a job back in the queue) before answering "nothing yet".
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import structlog

from spotd.aiokit import sleep
from spotd.clock import wall
from spotd.config import Settings
from spotd.control import pool_jobs
from spotd.control.attempts import attempt_id
from spotd.control.cancel import request_cancel
from spotd.control.jobs import Controller
from spotd.control.pool_jobs import decide
from spotd.control.pool_queue import FreeWorker, QueuedJob, SlotWorker, fill_slots, pick_for
from spotd.control.refusals import InvalidRequest, Refused
from spotd.control.submit import LaunchRequest, Plan, parse_task, plan_submission, submit
from spotd.spec import Task
from spotd.store import AsyncStore, InstanceRow, JobRow
from spotd.store.pools import (
    PoolAttemptRow,
    PoolExists,
    PoolJobRow,
    PoolJobStatus,
    PoolRow,
    PoolStatus,
)
from spotd.types import FINAL_PHASES, JobStatus

__all__ = [
    "MAX_NUM_JOBS",
    "POOL_ENV",
    "Assignment",
    "PoolConflict",
    "PoolMissing",
    "Pools",
    "rank_envs",
]

log = structlog.get_logger("spotd.control.pools")

POOL_ENV = "SPOTD_POOL"  # set on a worker: its agent asks for jobs instead of running `run`
WORKER_RUN = (
    'echo "spotd: this agent does not know pools (SPOTD_POOL=$SPOTD_POOL); '
    'upgrade spotd on the instance" >&2; exit 3'
)
MAX_NUM_JOBS = 1000
MAX_ACTIVE_JOBS = 10_000  # queued or running jobs per pool: a client's loop cannot fill the store
LONG_POLL_SECONDS = 5.0  # how long an idle worker's ask waits for a job before "nothing yet"
# the refusals a pool job's YAML gets for what a worker already has (the pool's own)
_WORKER_OWNS = MappingProxyType(
    {
        "setup": "setup runs once per worker, from the pool's YAML",
        "workdir": "a pool job runs in its worker's workdir, the pool's",
        "file_mounts": "file_mounts are the pool's (its YAML), staged once per worker",
    }
)


class PoolMissing(Refused):
    """No pool of that name is up (for this caller)."""


class PoolConflict(Refused):
    """The pool exists and the request does not fit it."""


@dataclass(frozen=True, slots=True)
class Assignment:
    """What a worker is told to run."""

    attempt_id: str
    job_id: int
    attempt: int
    rank: int
    num_jobs: int
    run: str
    envs: Mapping[str, str]
    secret_names: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt_id": self.attempt_id,
            "job_id": self.job_id,
            "attempt": self.attempt,
            "rank": self.rank,
            "num_jobs": self.num_jobs,
            "run": self.run,
            "envs": dict(self.envs),
            "secret_names": list(self.secret_names),
        }


def rank_envs(job: PoolJobRow) -> dict[str, str]:
    """SkyPilot's names for a pool job's place among its copies, and spotd's."""
    return {
        "SKYPILOT_JOB_RANK": str(job.rank),
        "SKYPILOT_NUM_JOBS": str(job.num_jobs),
        "SPOTD_JOB_RANK": str(job.rank),
        "SPOTD_NUM_JOBS": str(job.num_jobs),
        "SPOTD_POOL_JOB_ID": str(job.id),
    }


def _assignment(att: PoolAttemptRow, job: PoolJobRow) -> Assignment:
    return Assignment(
        attempt_id=att.id,
        job_id=job.id,
        attempt=att.attempt,
        rank=job.rank,
        num_jobs=job.num_jobs,
        run=job.run,
        envs={**job.envs, **rank_envs(job)},
        secret_names=tuple(job.secret_names),
    )


def worker_task(task: Task, pool: str) -> Task:
    """The pool's task as each worker's managed job runs it: no ``pool:``, the agent's pool
    loop instead of ``run``, ``SPOTD_POOL`` set."""
    return task.model_copy(
        update={"pool": None, "run": WORKER_RUN, "envs": {**task.envs, POOL_ENV: pool}}
    )


def job_task_refusal(task: Task) -> str | None:
    """Why a task cannot be queued on a pool (None: it can)."""
    if not task.run:
        return "`run` is required for a pool job"
    for key, why in _WORKER_OWNS.items():
        if key in task.model_fields_set and getattr(task, key):
            return f"`{key}` in a pool job: {why}; put it in the pool's YAML"
    if task.num_nodes != 1:
        return "a pool job runs on one worker: num_nodes must be 1"
    if task.service is not None or task.pool is not None:
        return "a pool job is a plain task: no `service:` or `pool:` section"
    return None


class Pools:
    """Pools of one daemon; see the module docstring."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: AsyncStore,
        controller: Controller,
        clock: Callable[[], float] = wall,
    ) -> None:
        self.settings = settings
        self.store = store
        self.controller = controller
        self.clock = clock
        # pool -> worker job -> (idle since, last asked): the workers waiting for a job
        self.idle: dict[int, dict[int, tuple[float, float]]] = {}
        self._news: dict[int, asyncio.Event] = {}
        self._lock = asyncio.Lock()  # pool -> set when a job may be had
        self.long_poll = LONG_POLL_SECONDS
        self.leading: Callable[[], bool] = lambda: True  # several daemons: Cluster.leading

    @property
    def stale_after(self) -> float:
        """A worker that has not asked for this long is not counted as free (one waiting in
        a long poll asks again every second)."""
        return max(3.0, 5 * self.settings.heartbeat_seconds)

    # -- pools -------------------------------------------------------------------------

    async def find(self, name: str, scope: str | None) -> PoolRow:
        pool = await self.store.pool_by_name(name)
        if pool is None or (scope is not None and pool.project != scope):
            raise PoolMissing(f"no pool {name}")  # not: "not yours"
        return pool

    async def visible(self, scope: str | None) -> list[PoolRow]:
        """The pools that are up, a project token's only its project's."""
        return await self.store.list_pools(project=scope)

    async def apply(
        self, req: LaunchRequest, *, name: str, scope: str | None
    ) -> tuple[PoolRow, list[JobRow]]:
        """Create pool ``name`` from ``req``'s task, or bring an existing one to its worker
        count (a new worker for each slot whose job ended); the worker jobs started."""
        task = await parse_task(req)
        if task.pool is None:
            raise InvalidRequest("the task has no `pool:` section (pool: {workers: N})")
        workers = task.pool.workers
        wtask = worker_task(task, name)
        wreq = dataclasses.replace(req, yaml=wtask.to_yaml(), env={}, infra=None, name=None)
        plan = await self._plan(wreq, scope)
        now = self.clock()
        spec = json.dumps(
            {
                "task": json.loads(wtask.model_dump_json(exclude_unset=True)),
                "packages": dict(req.packages),
                # how the loop's top-up plans a replacement as this apply did
                "origin": {"base_dir": req.base_dir, "scope": scope},
            },
            sort_keys=True,
        )
        pool = await self.store.pool_by_name(name)
        if pool is None:
            try:
                pool = await self.store.create_pool(
                    name=name,
                    project=plan.project,
                    workers=workers,
                    spec_json=spec,
                    spec_redacted_json=json.dumps(task.redacted()),
                    now=now,
                )
            except PoolExists as exc:
                raise PoolConflict(str(exc)) from exc
        elif pool.project != plan.project:
            raise PoolConflict(f"a pool named {name} is up already")
        elif not _same_task(pool.spec_json, spec):
            raise PoolConflict(
                f"pool {name} is up with another task (resources, setup, files or envs): "
                f"`spotctl jobs pool down {name}` first, or apply the same YAML to resize it"
            )
        elif pool.workers != workers:
            await self.store.set_pool_workers(pool.id, workers, now=now)
            pool = dataclasses.replace(pool, workers=workers)
        started = await self.top_up(pool, plan, retry_setup=True)
        fresh = await self.store.get_pool(pool.id)
        assert fresh is not None  # pools are never deleted
        return fresh, started

    async def _plan(self, req: LaunchRequest, scope: str | None) -> Plan:
        ctl = self.controller
        return await plan_submission(
            req,
            scope=scope,
            catalog=ctl.catalog,
            providers=ctl.providers,
            store=self.store,
            now=self.clock(),
            file_roots=self.settings.file_roots,
            blob_store=self.settings.cas_dir,
            provider_configs=self.settings.providers,
        )

    async def _stored_plan(self, pool: PoolRow) -> Plan:
        """The plan of a worker of ``pool`` as its apply made it (for a replacement)."""
        spec = json.loads(pool.spec_json)
        origin = spec.get("origin") or {}
        req = LaunchRequest(
            yaml=Task.model_validate(spec["task"]).to_yaml(),
            filename=f"<pool {pool.name}>",
            project=pool.project,
            base_dir=origin.get("base_dir"),
            packages=spec.get("packages") or {},
        )
        return await self._plan(req, origin.get("scope"))

    async def top_up(
        self, pool: PoolRow, plan: Plan | None = None, *, retry_setup: bool = False
    ) -> list[JobRow]:
        """A worker job for every slot of ``pool`` whose job ended (a worker cancelled, or
        given up for lack of capacity); the ones over the count cancelled. A slot whose
        worker failed its setup is left empty unless ``retry_setup`` (an apply): the next
        worker would fail the same way. The worker jobs started."""
        async with self._lock:  # the loop and an apply here never both fill one slot
            jobs: dict[int, JobRow] = {}
            slots = []
            for w in await self.store.pool_workers(pool.id):
                job = await self.store.get_job(w.job_id)
                if job is not None:
                    jobs[job.id] = job
                    failed = job.status == JobStatus.FAILED_SETUP
                    slots.append(SlotWorker(w.slot, job.id, not job.is_terminal, failed))
            todo = fill_slots(slots, pool.workers, retry_setup=retry_setup)
            started = []
            for slot in todo.fill:
                plan = plan or await self._stored_plan(pool)
                job = await submit(
                    dataclasses.replace(plan, name=f"pool-{pool.name}-w{slot}"),
                    settings=self.settings,
                    store=self.store,
                    start=self.controller.spawn_worker,
                )
                await self.store.add_pool_worker(job_id=job.id, pool_id=pool.id, slot=slot)
                log.info("pool worker started", pool=pool.name, slot=slot, job=job.id)
                started.append(job)
            for job_id, why in todo.cancel:  # another daemon filled a slot too, or resized down
                if jobs[job_id].status is JobStatus.CANCELLING:
                    continue  # asked already (a round before): said once
                log.warning("pool worker cancelled", pool=pool.name, job=job_id, why=why)
                await self._cancel_worker(jobs[job_id], f"pool {pool.name}: {why}")
            return started

    async def run(self) -> None:
        """Keep every pool's workers up and its lost jobs queued, between asks."""
        every = max(1.0, 5 * self.settings.observe_interval)
        while not self.controller.stop.is_set():
            # several daemons on one database: one of them (the leader) keeps pools up, or
            # two would fill one slot twice
            pools = await self.store.list_pools() if self.leading() else []
            for pool in pools:
                await self.sweep(pool)
                try:
                    await self.top_up(pool)
                except Refused as exc:  # no capacity now, over quota: the next round retries
                    log.warning("pool worker not replaced", pool=pool.name, error=exc.message)
            await sleep(every, self.controller.stop)

    def start(self) -> None:
        """Start the loop (``run``) on the controller's supervisor (the composition root)."""
        self.controller.sup.spawn("pools", self.run)

    async def _cancel_worker(self, job: JobRow, reason: str) -> None:
        await request_cancel(
            self.store, self.controller.wake, job.id, reason=reason, now=self.clock()
        )

    async def down(self, name: str, scope: str | None) -> PoolRow:
        """Take the pool down: its queued and running jobs cancelled, every worker cancelled."""
        pool = await self.find(name, scope)
        for w in await self.store.pool_down(pool.id, now=self.clock()):
            job = await self.store.get_job(w.job_id)
            if job is not None and not job.is_terminal:
                await self._cancel_worker(job, f"pool {name} down")
        self.idle.pop(pool.id, None)
        self._wake(pool.id)
        fresh = await self.store.get_pool(pool.id)
        assert fresh is not None
        return fresh

    # -- jobs --------------------------------------------------------------------------

    async def launch(
        self,
        name: str,
        req: LaunchRequest,
        *,
        num_jobs: int,
        scope: str | None,
    ) -> list[PoolJobRow]:
        """Queue ``num_jobs`` copies of ``req``'s task on pool ``name``; nothing provisioned."""
        pool = await self.find(name, scope)
        if not 1 <= num_jobs <= MAX_NUM_JOBS:
            raise InvalidRequest(f"--num-jobs must be 1..{MAX_NUM_JOBS}, got {num_jobs}")
        task = await parse_task(req)
        why = job_task_refusal(task)
        if why is not None:
            raise InvalidRequest(why)
        assert task.run is not None  # job_task_refusal said so
        jobs = await self.store.add_pool_jobs(
            pool_id=pool.id,
            name=req.name or task.name or "job",
            run=task.run,
            envs={**task.envs, **task.secrets},
            secret_names=list(task.secrets),
            num_jobs=num_jobs,
            now=self.clock(),
            max_restarts_on_errors=task.job_recovery.max_restarts_on_errors,
            max_active=MAX_ACTIVE_JOBS,
        )
        self._wake(pool.id)
        return jobs

    async def job(self, name: str, job_id: int, scope: str | None) -> PoolJobRow:
        """Job ``job_id`` of pool ``name``; ``PoolMissing`` if the pool has no such job."""
        pool = await self.find(name, scope)
        job = await self.store.get_pool_job(job_id)
        if job is None or job.pool_id != pool.id:
            raise PoolMissing(f"no job {job_id} in pool {name}")
        return job

    async def output(self, name: str, job_id: int, scope: str | None) -> str:
        """A pool job's output, every attempt's, each cut from its worker's log."""
        job = await self.job(name, job_id, scope)
        return await pool_jobs.output(self.store, self.settings.logs_dir, job)

    async def follow(self, name: str, job_id: int, scope: str | None) -> AsyncIterator[str]:
        """A pool job's output as it grows, until the job has ended."""
        job = await self.job(name, job_id, scope)
        return pool_jobs.follow(self.store, self.settings.logs_dir, job)

    async def cancel(self, name: str, job_id: int, scope: str | None) -> PoolJobRow:
        """Cancel one job of the pool: a queued one leaves the queue now; a running one's
        attempt ends now, and its worker stops it at its next exchange (SIGTERM, grace,
        SIGKILL) and takes the next job. ``PoolConflict`` if it had ended already."""
        job = await self.job(name, job_id, scope)
        done = await self.store.cancel_pool_job(job.id, reason="cancel requested", now=self.clock())
        if done is None:
            fresh = await self._job(job.id)
            raise PoolConflict(f"pool job {job_id} has ended already ({fresh.status})")
        log.info("pool job cancelled", pool=name, job=job_id, was=str(job.status))
        return done

    async def wanted(self, row: InstanceRow, attempt: str) -> bool:
        """Whether the worker on ``row`` should keep running pool attempt ``attempt`` (asked
        while it runs; no: it was cancelled, or the job was given back to the queue)."""
        att = await self.store.pool_attempt(attempt)
        return att is not None and att.ended_at is None and att.instance_key == row.key

    async def sweep(self, pool: PoolRow) -> int:
        """Queue again every job whose worker instance is gone; how many were."""
        n = 0
        for att in await self.store.pool_attempts(pool.id, open_only=True):
            inst = await self.store.get_instance(att.instance_key)
            why = _gone(inst)
            if why is None:
                continue
            job = await self.store.requeue_pool_attempt(
                att.id, reason=why, now=self.clock(), decide=decide
            )
            if job is not None:
                n += 1
                log.info("pool attempt lost", pool=pool.name, job=job.id, to=str(job.status))
        if n:
            self._wake(pool.id)
        return n

    # -- the workers' side -----------------------------------------------------------------

    async def next_for(
        self, row: InstanceRow, *, done: tuple[str, int] | None
    ) -> Assignment | None:
        """A worker's ask: record the exit of what it ran (``done``: attempt id, exit code),
        then what it runs next (the same answer again if the last was lost), or None.

        Raises ``PoolMissing`` when the instance is not a pool worker's."""
        worker = await self.store.pool_worker(row.job_id)
        if worker is None:
            raise PoolMissing(f"{row.key} is not a pool worker")
        now = self.clock()
        # an exit after a notice is the preemption's doing: the sweep queues that job again
        if done is not None and (row.notice_deadline is None or done[1] == 0):
            aid, code = done
            await self.store.finish_pool_attempt(
                aid, instance_key=row.key, exit_code=code, now=now, decide=decide
            )
        pool = await self.store.get_pool(worker.pool_id)
        job = await self.store.get_job(row.job_id)
        current = job is not None and row.attempt_id == attempt_id(job.id, job.current_attempt)
        if (
            pool is None
            or pool.status != PoolStatus.UP
            or job is None
            or job.is_terminal
            or not current
            or row.terminated
            or row.notice_deadline is not None
        ):
            return None
        running = await self.store.open_pool_attempt(row.key)
        if running is not None:  # the answer that handed it out was lost: the same again
            return _assignment(running, await self._job(running.pool_job_id))
        await self.sweep(pool)
        # a long poll: an idle worker's ask waits (a second at a time) for news of its pool
        deadline = now + self.long_poll
        while True:
            news = self._news.setdefault(pool.id, asyncio.Event())
            got = await self._try_assign(pool, job.id, row.key)
            left = deadline - self.clock()
            if got is not None or left <= 0 or self.controller.stop.is_set():
                return got
            await sleep(min(1.0, left), news, self.controller.stop)
            fresh = await self.store.get_instance(row.key)
            if fresh is None or fresh.terminated or fresh.notice_deadline is not None:
                return None

    async def _try_assign(self, pool: PoolRow, worker: int, key: str) -> Assignment | None:
        """The job ``pool_queue.pick_for`` gives this idle worker now, claimed; or None."""
        now = self.clock()
        idle = self.idle.setdefault(pool.id, {})
        since = idle.get(worker, (now, now))[0]
        idle[worker] = (since, now)
        for wid, (_, last) in list(idle.items()):
            if last < now - self.stale_after:
                del idle[wid]
        queued = await self.store.pool_jobs(pool.id, statuses=[PoolJobStatus.QUEUED])
        pick = pick_for(
            worker,
            [QueuedJob(id=q.id, submitted_at=q.submitted_at) for q in queued],
            [FreeWorker(id=w, idle_since=s) for w, (s, _) in idle.items()],
        )
        if pick is None:
            return None
        # the clock read now, not at the ask: a sweep of another ask may have ended the
        # job's last attempt since, and an attempt never starts before its predecessor ended
        att = await self.store.claim_pool_job(
            pick, worker_job_id=worker, instance_key=key, now=self.clock()
        )
        if att is None:
            return None  # taken meanwhile (another daemon on the database): ask again
        idle.pop(worker, None)
        log.info("pool job assigned", pool=pool.name, job=pick, worker=worker, key=key)
        return _assignment(att, await self._job(pick))

    def _wake(self, pool_id: int) -> None:
        """News for the pool's waiting workers (jobs queued, a job back in the queue)."""
        news = self._news.pop(pool_id, None)
        if news is not None:
            news.set()

    async def _job(self, job_id: int) -> PoolJobRow:
        job = await self.store.get_pool_job(job_id)
        if job is None:
            raise PoolMissing(f"no pool job {job_id}")
        return job


def _same_task(stored: str, spec: str) -> bool:
    """Whether two pool specs run the same workers (where they were applied from aside)."""
    a, b = json.loads(stored), json.loads(spec)
    return all(a.get(k) == b.get(k) for k in ("task", "packages"))


def _gone(inst: InstanceRow | None) -> str | None:
    """Why a worker instance can no longer be running its job (None: it may be)."""
    if inst is None:
        return "its worker instance is unknown"
    if inst.terminated:
        return f"worker instance {inst.key} terminated"
    if inst.phase in FINAL_PHASES:
        return f"worker instance {inst.key} ended ({inst.phase})"
    return None
