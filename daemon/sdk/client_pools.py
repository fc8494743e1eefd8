"""Pools in the Python SDK: functions over the one API client (``spotd.sdk.client.Client``).

async with Client.connect() as c:
    await pool_apply(c, "mypool", Path("pool.yaml").read_text(), filename="pool.yaml")
    jobs = await pool_launch(c, "mypool", Path("job.yaml").read_text(), num_jobs=20)
    print((await pool_status(c, "mypool"))["job_counts"])
    async for chunk in pool_job_follow(c, "mypool", jobs["jobs"][0]["id"]):
        print(chunk.decode(), end="")
    await pool_cancel(c, "mypool", jobs["jobs"][1]["id"])
    await pool_down(c, "mypool")

``pool_apply`` ships the pool's workdir and local file_mounts as a job launch does (only the
blobs the daemon lacks); every worker stages them before its setup.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spotd.sdk.uploads import Progress, local_sources

if TYPE_CHECKING:
    from spotd.sdk.client import Client

__all__ = [
    "pool_apply",
    "pool_cancel",
    "pool_down",
    "pool_job_follow",
    "pool_job_logs",
    "pool_launch",
    "pool_status",
]


async def pool_apply(
    c: Client,
    pool: str,
    yaml_text: str,
    *,
    filename: str = "<sdk>",
    env: dict[str, str] | None = None,
    infra: str | None = None,
    project: str | None = None,
    host_paths: bool = False,
    progress: Progress | None = None,
) -> Any:
    """Create the pool (``pool: {workers: N}`` in the YAML) or bring it to N workers."""
    body: dict[str, Any] = {"pool": pool, "yaml": yaml_text, "filename": filename, "env": env or {}}
    if host_paths:
        body["base_dir"] = os.getcwd()
    else:
        sources = local_sources(yaml_text, filename=filename, env=env or {}, base=Path.cwd())
        if sources:
            body["packages"], _ = await c.upload_files(sources, progress=progress)
    if infra:
        body["infra"] = infra
    if project:
        body["project"] = project
    return await c.request("POST", "/v1/pools", json=body)


async def pool_launch(
    c: Client,
    pool: str,
    yaml_text: str,
    *,
    filename: str = "<sdk>",
    name: str | None = None,
    env: dict[str, str] | None = None,
    num_jobs: int = 1,
) -> Any:
    """Queue ``num_jobs`` copies of the task on the pool (ranks 0..num_jobs-1)."""
    body: dict[str, Any] = {
        "yaml": yaml_text,
        "filename": filename,
        "env": env or {},
        "num_jobs": num_jobs,
    }
    if name:
        body["name"] = name
    return await c.request("POST", f"/v1/pools/{pool}/jobs", json=body)


async def pool_status(c: Client, pool: str | None = None) -> Any:
    """One pool with its workers and jobs, or every pool that is up."""
    if pool is None:
        return await c.request("GET", "/v1/pools")
    return await c.request("GET", f"/v1/pools/{pool}")


async def pool_job_logs(c: Client, pool: str, job_id: int) -> str:
    """A pool job's output, every attempt's, each cut from its worker's log."""
    return str(await c.request("GET", f"/v1/pools/{pool}/jobs/{job_id}/logs"))


def pool_job_follow(c: Client, pool: str, job_id: int) -> AsyncIterator[bytes]:
    """A pool job's output as it grows, until the job has ended."""
    return c.stream(f"/v1/pools/{pool}/jobs/{job_id}/logs", follow="1")


async def pool_cancel(c: Client, pool: str, job_id: int) -> Any:
    """Cancel one job of the pool: out of the queue, or stopped on its worker (the job, as
    it is now: CANCELLED). An ApiError 409 if it had ended already."""
    return await c.request("POST", f"/v1/pools/{pool}/jobs/{job_id}/cancel")


async def pool_down(c: Client, pool: str) -> Any:
    return await c.request("POST", f"/v1/pools/{pool}/down")
