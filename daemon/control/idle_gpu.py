"""The idle-GPU rule as the job controller applies it.

The decision is ``spotd.telemetry.idle.idle_gpu_step`` (pure: samples, policy, state, now in;
verdict and state out). Here: the per-job state (in memory: it restarts from zero with the
daemon, which only delays a verdict), the samples read from the nodes' last heartbeats, and the
event that says why. A FLAG marks the job's message; a STOP is returned to the controller,
which ends the attempt and cancels the job.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from spotd.store import AsyncStore, InstanceRow
from spotd.telemetry.gpu import parse_samples
from spotd.telemetry.idle import IdleGpuPolicy, IdleState, IdleVerdict, idle_gpu_step


class IdleGpuRule:
    def __init__(self, *, store: AsyncStore, policy: IdleGpuPolicy) -> None:
        self.policy = policy
        self._store = store
        self._states: dict[int, IdleState] = {}  # per running job; ``forget`` at its end

    def forget(self, job_id: int) -> None:
        self._states.pop(job_id, None)

    def size(self) -> int:
        return len(self._states)

    async def check(
        self, job_id: int, aid: str, rows: Sequence[InstanceRow], now: float
    ) -> str | None:
        """Step the rule for a running job; the reason when the job must stop, else None."""
        nodes = [
            None if r.gpus_json is None else parse_samples(json.loads(r.gpus_json)) for r in rows
        ]
        verdict, self._states[job_id] = idle_gpu_step(
            nodes, self.policy, self._states.get(job_id, IdleState()), now
        )
        if verdict not in (IdleVerdict.FLAG, IdleVerdict.STOP):
            return None
        p = self.policy
        why = (
            f"GPUs idle: below {p.threshold_pct:g}% utilisation on every node for {p.minutes:g} min"
        )
        await self._store.add_event(
            kind="gpu.idle",
            message=why,
            now=now,
            job_id=job_id,
            attempt_id=aid,
            data={"action": str(p.action)},
        )
        if verdict == IdleVerdict.FLAG:
            await self._store.update_job_fields(job_id, now=now, message=f"flagged: {why}")
            return None
        return why
