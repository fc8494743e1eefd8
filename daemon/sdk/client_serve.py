"""Services in the Python SDK: functions over the one API client (``spotd.sdk.client.Client``).

async with Client.connect() as c:
    svc = await serve_up(c, Path("serve.yaml").read_text(), filename="serve.yaml")
    await wait_service(c, svc["name"], lambda s: s["ready_replicas"] >= 3)
    print(svc["endpoint"])

``serve_up`` and ``serve_update`` ship the task's workdir and local file_mounts as a job
launch does (``Client.upload_files``: packed here, only the blobs the daemon lacks sent), and
name the packages in the request; every replica of that version restores them before its
setup and run, on whatever backend it lands. The answer's ``upload`` says what travelled.
``host_paths`` names them as paths on the daemon's host instead (the admin's, under the
daemon's ``file_roots``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spotd.sdk.uploads import Progress, UploadReport, local_sources

if TYPE_CHECKING:
    from spotd.sdk.client import Client


async def _ship(
    c: Client,
    body: dict[str, Any],
    *,
    host_paths: bool,
    progress: Progress | None,
) -> UploadReport | None:
    """Upload the task's local sources and name them in ``body`` (``packages``)."""
    if host_paths:
        return None
    sources = local_sources(
        body["yaml"], filename=body["filename"], env=body["env"], base=Path.cwd()
    )
    if not sources:
        return None
    body["packages"], report = await c.upload_files(sources, progress=progress)
    return report


def _with_upload(answer: Any, report: UploadReport | None) -> Any:
    if report is not None and isinstance(answer, dict):
        answer["upload"] = report.as_json()
    return answer


async def serve_up(
    c: Client,
    yaml_text: str,
    *,
    filename: str = "<sdk>",
    name: str | None = None,
    env: dict[str, str] | None = None,
    project: str | None = None,
    host_paths: bool = False,
    progress: Progress | None = None,
) -> Any:
    body: dict[str, Any] = {
        "yaml": yaml_text,
        "filename": filename,
        "env": env or {},
        "base_dir": os.getcwd(),
    }
    if name:
        body["name"] = name
    if project:
        body["project"] = project
    report = await _ship(c, body, host_paths=host_paths, progress=progress)
    return _with_upload(await c.request("POST", "/v1/services", json=body), report)


async def serve_status(c: Client, name: str | None = None, *, all_replicas: bool = False) -> Any:
    """One service (by name), or every service that is not DOWN."""
    params = {"all": "1"} if all_replicas else {}
    if name is None:
        return await c.request("GET", "/v1/services", params=params)
    return await c.request("GET", f"/v1/services/{name}", params=params)


async def serve_update(
    c: Client,
    name: str,
    yaml_text: str,
    *,
    filename: str = "<sdk>",
    mode: str = "rolling",
    env: dict[str, str] | None = None,
    host_paths: bool = False,
    progress: Progress | None = None,
) -> Any:
    body: dict[str, Any] = {
        "yaml": yaml_text,
        "filename": filename,
        "mode": mode,
        "env": env or {},
        "base_dir": os.getcwd(),
    }
    report = await _ship(c, body, host_paths=host_paths, progress=progress)
    answer = await c.request("POST", f"/v1/services/{name}/update", json=body)
    return _with_upload(answer, report)


async def serve_down(c: Client, name: str) -> Any:
    return await c.request("POST", f"/v1/services/{name}/down")


async def serve_events(c: Client, name: str) -> Any:
    return await c.request("GET", f"/v1/services/{name}/events")


def serve_logs(
    c: Client, name: str, *, replica: int | None = None, lb: bool = False, follow: bool = False
) -> AsyncIterator[bytes]:
    params: dict[str, str] = {}
    if replica is not None:
        params["replica"] = str(replica)
    if lb:
        params["lb"] = "1"
    if follow:
        params["follow"] = "1"
    return c.stream(f"/v1/services/{name}/logs", **params)


async def wait_service(
    c: Client,
    name: str,
    pred: Callable[[dict[str, Any]], bool],
    *,
    timeout: float = 60.0,
    poll: float = 0.2,
    what: str = "condition",
    all_replicas: bool = False,
) -> dict[str, Any]:
    """Poll the service until ``pred`` holds; TimeoutError (with its last state) otherwise."""
    deadline = time.monotonic() + timeout
    svc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        svc = await serve_status(c, name, all_replicas=all_replicas)
        if pred(svc):
            return svc
        await asyncio.sleep(poll)
    raise TimeoutError(
        f"service {name}: timed out after {timeout}s waiting for {what}; it is {svc}"
    )
