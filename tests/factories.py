"""Records the tests build again and again, with the defaults most of them want."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spotd.providers.base import CatalogEntry, InstanceId, InstanceSpec, ObservedInstance
from spotd.store import AttemptIntent, AttemptRow
from spotd.types import AgentConfig, AttemptStatus, EndReason, Market


def intent(
    job_id: int, attempt: int = 1, *, nodes: int = 1, now: float = 1.0, **kw: Any
) -> AttemptIntent:
    """An attempt's intent on a small spot instance, one row per node keyed as the controller
    keys them (``j<job>-a<n>-n<rank>``, tokens unique per job, attempt and node); ``kw``
    overrides any field."""
    fields: dict[str, Any] = {
        "job_id": job_id,
        "attempt": attempt,
        "provider": "local",
        "region": "r",
        "zone": "z",
        "instance_type": "cpu.small",
        "market": "spot",
        "price_per_hour": 0.01,
        "num_nodes": nodes,
        "now": now,
        "instances": [
            {
                "key": f"j{job_id}-a{attempt}-n{r}",
                "node_rank": r,
                "token": f"t{job_id}-{attempt}-{r}",
            }
            for r in range(nodes)
        ],
    }
    return AttemptIntent(**(fields | kw))


def attempt_row(
    n: int,
    market: str,
    ended: float | None,
    end: str | None = None,
    *,
    created_at: float | None = None,
) -> AttemptRow:
    """Attempt ``n`` of job 1 as the store returns it: running (``ended`` None) or ended at
    ``ended`` for ``end``; written at ``created_at`` (default: ``n`` seconds)."""
    at = float(n) if created_at is None else created_at
    return AttemptRow(
        id=f"j1-a{n}",
        job_id=1,
        attempt=n,
        status=AttemptStatus.ENDED if ended is not None else AttemptStatus.RUNNING,
        provider="local",
        region="local-east",
        zone="local-east-a",
        instance_type="cpu.small",
        market=Market(market),
        price_per_hour=1.0,
        num_nodes=1,
        created_at=at,
        started_at=at,
        ended_at=ended,
        end_reason=EndReason(end) if end else None,
        end_detail="",
    )


def agent_config(**overrides: Any) -> AgentConfig:
    """An agent's config for node 0 of job 1's first attempt (``run: true``); ``overrides``
    name the fields a test cares about."""
    fields: dict[str, Any] = {
        "instance_key": "j1-a1-n0",
        "attempt_id": "j1-a1",
        "job_id": 1,
        "task_id": "t",
        "attempt": 1,
        "node_rank": 0,
        "num_nodes": 1,
        "setup": None,
        "run": "true",
    }
    return AgentConfig(**(fields | overrides))


class QuietProvider:
    """A provider (``spotd.providers.base.Provider``) named ``local`` that lists nothing,
    launches nothing and records what it is asked to terminate: for tests of the parts around
    a provider (the reaper, the observer)."""

    name = "local"

    def __init__(self) -> None:
        self.terminated: list[str] = []

    def catalog(self) -> Sequence[CatalogEntry]:
        return []

    async def launch(self, spec: InstanceSpec) -> InstanceId:
        raise AssertionError("this test launches nothing")

    async def list_instances(self) -> Sequence[ObservedInstance]:
        return []

    async def terminate(self, instance_id: InstanceId) -> None:
        self.terminated.append(str(instance_id))

    async def close(self) -> None:
        return None
