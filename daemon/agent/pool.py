"""A pool worker's loop: after setup, ask the daemon for a job, run it, report, ask again.

The worker is an ordinary managed job whose task sets ``SPOTD_POOL`` (``spotd.control.pools``).
Its agent stages files and runs setup once, as for any job; then, instead of ``run``, it
posts ``/agent/v1/pool/next`` with its instance token. The answer is a job to run (its
``run``, envs and rank: ``SKYPILOT_JOB_RANK``/``SKYPILOT_NUM_JOBS``), or nothing yet. The job
runs in the worker's working directory, in its own process group like any job (so a notice
SIGTERMs it and a reclaimed instance takes it down), its output in the worker's log between
two marker lines. Its exit code goes with the next ask, which is retried until the daemon
answers, so an exit is never lost to a daemon restart; a job cut short by a preemption
notice is not reported at all: the daemon queues it again once the instance is gone.

While a job runs the worker asks the daemon, every ``heartbeat_seconds``, whether it should
keep running it (``/agent/v1/pool/running``); told to stop (the job was cancelled) it stops it
as a notice would (SIGTERM, the grace period, SIGKILL), logs ``cancelled`` and asks for the
next job. A daemon that cannot be reached never stops a job.

A daemon that answers 404 (this job is not a pool's worker: someone set ``SPOTD_POOL`` in a
plain job) gets the task's ``run``, as without a pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp

from spotd.agent.transport import daemon_session
from spotd.aiokit import sleep
from spotd.types import AgentConfig

__all__ = ["POOL_ENV", "is_pool_worker", "serve_pool"]

POOL_ENV = "SPOTD_POOL"
ASK_TIMEOUT = 15.0  # the daemon holds an idle worker's ask up to 5 s (a long poll)


class Worker(Protocol):
    """What the loop needs of the agent (``spotd.agent.main.Agent``)."""

    cfg: AgentConfig
    notice: asyncio.Event
    stop: asyncio.Event

    async def _run_script(self, script: str, env: dict[str, str]) -> int: ...

    async def _stop_run(self, script: asyncio.Future[int]) -> None: ...

    def _log(self, line: str) -> None: ...


def is_pool_worker(cfg: AgentConfig) -> bool:
    return bool(cfg.envs.get(POOL_ENV))


def job_env(base: Mapping[str, str], assignment: Mapping[str, Any]) -> dict[str, str]:
    """The worker's environment with the job's envs, secrets and rank over it."""
    return {**base, **{str(k): str(v) for k, v in dict(assignment.get("envs") or {}).items()}}


async def serve_pool(agent: Worker, env: dict[str, str]) -> int:
    """Run the pool's jobs until a notice (or the agent stops); the task's ``run``'s exit code
    when the daemon says this is no pool worker."""
    session, base = daemon_session(agent.cfg)
    headers = {"Authorization": f"Bearer {agent.cfg.token}"}
    done: dict[str, Any] | None = None
    async with session:
        while not agent.notice.is_set() and not agent.stop.is_set():
            body = {"key": agent.cfg.instance_key, "done": done}
            try:
                async with session.post(
                    f"{base}/agent/v1/pool/next",
                    json=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=ASK_TIMEOUT),
                ) as r:
                    status = r.status
                    answer = await r.json() if status in (200, 404) else {}
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
                await sleep(agent.cfg.heartbeat_seconds, agent.notice, agent.stop)
                continue  # the daemon is away: ask again, with the same report
            if status == 404:
                agent._log(f"pool: {answer.get('error', 'not a pool worker')}; running `run`")
                return await agent._run_script(agent.cfg.run or "true", env)
            if status != 200:
                await sleep(agent.cfg.heartbeat_seconds, agent.notice, agent.stop)
                continue
            done = None  # the daemon has it
            job = answer.get("assignment")
            if not job:
                wait = float(answer.get("wait_seconds") or agent.cfg.heartbeat_seconds)
                await sleep(wait, agent.notice, agent.stop)
                continue
            if agent.notice.is_set():
                break  # handed out as the notice came: the daemon queues it again
            what = f"pool job {job['job_id']} rank {job['rank']} attempt {job['attempt']}"
            agent._log(f"{what}: started")
            rc, cancelled = await _run_watched(
                agent, Asker(session, base, headers), job, job_env(env, job)
            )
            if agent.notice.is_set():
                agent._log(f"{what}: stopped by the preemption notice (exit {rc})")
                break
            agent._log(
                f"{what}: cancelled (exit {rc})" if cancelled else f"{what}: exited with {rc}"
            )
            done = {"attempt_id": job["attempt_id"], "exit_code": rc}
    return 0


class Asker:
    """The worker's question to the daemon while a job runs."""

    def __init__(self, session: aiohttp.ClientSession, base: str, headers: dict[str, str]) -> None:
        self.session = session
        self.base = base
        self.headers = headers

    async def told_to_stop(self, key: str, attempt_id: str) -> bool:
        """Whether the daemon says to stop the attempt; False when it cannot be asked."""
        try:
            async with self.session.post(
                f"{self.base}/agent/v1/pool/running",
                json={"key": key, "attempt_id": attempt_id},
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=ASK_TIMEOUT),
            ) as r:
                if r.status != 200:
                    return False
                answer = await r.json()
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return False
        return bool(isinstance(answer, dict) and answer.get("stop"))


async def _run_watched(
    agent: Worker, asker: Asker, job: Mapping[str, Any], env: dict[str, str]
) -> tuple[int, bool]:
    """Run the job, asking the daemon every heartbeat whether to stop it; its exit code, and
    whether it was stopped because the daemon said so."""
    script = asyncio.ensure_future(agent._run_script(str(job["run"]), env))
    every = agent.cfg.heartbeat_seconds
    while not script.done():
        await asyncio.wait({script}, timeout=every)
        if script.done() or agent.notice.is_set() or agent.stop.is_set():
            break
        if await asker.told_to_stop(agent.cfg.instance_key, str(job["attempt_id"])):
            await agent._stop_run(script)
            return script.result(), True
    return await script, False
