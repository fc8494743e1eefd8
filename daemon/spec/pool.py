"""SkyPilot's ``pool:`` section: a task that describes the workers of a pool, not a job.

``spotctl jobs pool apply pool.yaml`` reads it (``spotd.control.pools``); ``spotctl jobs
launch`` refuses a task that has it, pointing there.
"""

from __future__ import annotations

from pydantic import Field

from spotd.spec.fields import SpecModel

__all__ = ["MAX_POOL_WORKERS", "PoolSpec"]

MAX_POOL_WORKERS = 256


class PoolSpec(SpecModel):
    """``pool: {workers: N}``: how many workers the pool keeps up."""

    workers: int = Field(default=1, ge=1, le=MAX_POOL_WORKERS)
