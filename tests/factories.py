"""Records the tests build again and again, with the defaults most of them want."""

from __future__ import annotations

from typing import Any

from spotd.store import AttemptIntent


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
