"""The one client of the daemon's API, used by ``spotctl`` and the Python SDK.

It finds the daemon the same way for both: ``$SPOTD_URL`` (+ ``$SPOTD_API_TOKEN``) for a
remote daemon over TCP, else the unix socket ``$SPOTD_HOME/spotd.sock``; with ``autostart``, a
local daemon is started in the background when none answers.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from spotd.config import Settings, load_settings
from spotd.sdk.local import DaemonUnreachable, socket_alive, start_local_daemon

__all__ = ["TERMINAL", "ApiError", "Client", "DaemonUnreachable", "start_local_daemon"]


class ApiError(Exception):
    """The daemon refused the request; ``status`` is the HTTP code."""

    def __init__(self, status: int, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details

    def __str__(self) -> str:
        lines = [self.message]
        if isinstance(self.details, list):
            for d in self.details:
                if isinstance(d, dict) and "path" in d:
                    where = f"line {d['line']}: " if d.get("line") else ""
                    lines.append(f"  {where}{d['path']}: {d['message']}")
                elif isinstance(d, dict) and "field" in d:
                    lines.append(f"  {d['field']}: {d['message']}")
                else:
                    lines.append(f"  {d}")
        return "\n".join(lines)


class Client:
    """Async client. Use as ``async with Client.connect() as c: ...``."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str | None) -> None:
        self._session = session
        self._base = base
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    @classmethod
    def connect(
        cls,
        *,
        settings: Settings | None = None,
        url: str | None = None,
        token: str | None = None,
        autostart: bool = True,
        on_start: Callable[[int, Settings], None] | None = None,
    ) -> Client:
        url = url or os.environ.get("SPOTD_URL")
        if url:
            token = token or os.environ.get("SPOTD_API_TOKEN")
            return cls(aiohttp.ClientSession(), url.rstrip("/"), token)
        settings = settings or load_settings()
        if not socket_alive(settings.socket_path):
            if not autostart:
                raise DaemonUnreachable(f"no spotd answers on {settings.socket_path}")
            pid = start_local_daemon(settings)
            if on_start:
                on_start(pid, settings)
        conn = aiohttp.UnixConnector(path=str(settings.socket_path))
        return cls(aiohttp.ClientSession(connector=conn), "http://spotd", None)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            async with self._session.request(
                method, self._base + path, headers=self._headers, **kw
            ) as r:
                if r.content_type == "application/json":
                    data = await r.json()
                else:
                    data = await r.text()
                if r.status >= 400:
                    if isinstance(data, dict):
                        raise ApiError(r.status, str(data.get("error")), data.get("details"))
                    raise ApiError(r.status, str(data))
                return data
        except aiohttp.ClientConnectionError as exc:
            raise DaemonUnreachable(f"cannot reach spotd at {self._base}: {exc}") from exc

    async def stream(self, path: str, **params: Any) -> AsyncIterator[bytes]:
        try:
            async with self._session.get(
                self._base + path,
                headers=self._headers,
                params=params,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
            ) as r:
                if r.status >= 400:
                    data = await r.json()
                    raise ApiError(r.status, str(data.get("error")), data.get("details"))
                async for chunk in r.content.iter_any():
                    yield chunk
        except aiohttp.ClientConnectionError as exc:
            raise DaemonUnreachable(f"lost the connection to spotd: {exc}") from exc

    # -- jobs ------------------------------------------------------------------------------

    async def launch(
        self,
        yaml_text: str,
        *,
        filename: str = "<sdk>",
        name: str | None = None,
        env: dict[str, str] | None = None,
        dry_run: bool = False,
        deadline: str | None = None,
        infra: str | None = None,
        project: str | None = None,
    ) -> Any:
        """One request for a launch and its dry run: the job with the ``plan`` it was stored
        from (``{name, resources, num_nodes, candidates}``), or with ``dry_run`` the plan
        alone; nothing is stored then."""
        body: dict[str, Any] = {
            "yaml": yaml_text,
            "filename": filename,
            "env": env or {},
            "base_dir": os.getcwd(),
        }
        if name:
            body["name"] = name
        if dry_run:
            body["dry_run"] = True
        if deadline:
            body["deadline"] = deadline
        if infra:
            body["infra"] = infra
        if project:
            body["project"] = project
        return await self.request("POST", "/v1/jobs", json=body)

    async def jobs(self) -> Any:
        return await self.request("GET", "/v1/jobs")

    async def job(self, job_id: int) -> Any:
        return await self.request("GET", f"/v1/jobs/{job_id}")

    async def events(self, job_id: int) -> Any:
        return await self.request("GET", f"/v1/jobs/{job_id}/events")

    async def cancel(self, job_id: int) -> Any:
        return await self.request("POST", f"/v1/jobs/{job_id}/cancel")

    def logs(
        self, job_id: int, *, follow: bool = False, attempt: int | None = None
    ) -> AsyncIterator[bytes]:
        params: dict[str, str] = {}
        if follow:
            params["follow"] = "1"
        if attempt is not None:
            params["attempt"] = str(attempt)
        return self.stream(f"/v1/jobs/{job_id}/logs", **params)

    async def wait(self, job_id: int, *, timeout: float | None = None, poll: float = 0.5) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = await self.job(job_id)
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")
            await asyncio.sleep(poll)

    async def cost(self, *, by: str = "job", since: str | None = None) -> Any:
        params = {"by": by, **({"since": since} if since else {})}
        return await self.request("GET", "/v1/cost", params=params)

    async def create_project(self, name: str, *, gpu_quota: float | None = None) -> Any:
        return await self.request(
            "POST", "/v1/projects", json={"name": name, "gpu_quota": gpu_quota}
        )

    async def projects(self) -> Any:
        return await self.request("GET", "/v1/projects")

    async def chaos(self, action: str, **body: Any) -> Any:
        return await self.request("POST", f"/v1/chaos/{action}", json=body)


TERMINAL = {
    "SUCCEEDED",
    "FAILED",
    "FAILED_SETUP",
    "FAILED_NO_RESOURCE",
    "FAILED_CONTROLLER",
    "CANCELLED",
}
