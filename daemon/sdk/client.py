"""The one client of the daemon's API, used by ``spotctl`` and the Python SDK.

It finds the daemon the same way for both: ``$SPOTD_URL`` (+ ``$SPOTD_API_TOKEN``) for a
remote daemon over TCP, else the unix socket ``$SPOTD_HOME/spotd.sock``; with ``autostart``, a
local daemon is started in the background when none answers.

An ``https://`` URL is verified, chain and host name, against the CA in ``ca_file`` (or
``$SPOTD_CA_FILE``; ``spotd tls init`` makes one), else against the system's CAs. A certificate
that does not verify is an ``UntrustedDaemon``, with a message that says what to pass, not a
traceback: the request is never sent, so the token never reaches an impostor.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from spotd.config import Settings, load_settings
from spotd.ops.tls import TlsError, client_context
from spotd.sdk.local import DaemonUnreachable, UntrustedDaemon, socket_alive, start_local_daemon
from spotd.sdk.uploads import (
    Progress,
    UploadReport,
    default_cache_path,
    local_sources,
    pack_sources,
    upload_packages,
)

__all__ = [
    "TERMINAL",
    "ApiError",
    "Client",
    "DaemonUnreachable",
    "UntrustedDaemon",
    "start_local_daemon",
    "untrusted_message",
]


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


def untrusted_message(base: str, reason: str, ca_file: str | None) -> str:
    """What to tell someone whose client refused the daemon's certificate, and what to do."""
    trusted = f"the CA in {ca_file}" if ca_file else "the system's CAs (no --ca-file given)"
    if "mismatch" in reason.lower():  # "Hostname mismatch" / "IP address mismatch"
        fix = (
            "connect with a name or address the certificate holds, or issue one that holds "
            "this one (spotd tls init --hosts NAME,... --force on the daemon's host)"
        )
    else:
        fix = (
            "pass the CA that signed the daemon's certificate with --ca-file FILE or "
            "SPOTD_CA_FILE (spotd tls init prints its path)"
        )
    return (
        f"the TLS certificate of spotd at {base} is not trusted: {reason} (checked against "
        f"{trusted}); {fix}"
    )


def _tcp_session(url: str, ca_file: str | None) -> aiohttp.ClientSession:
    scheme = urlsplit(url).scheme
    if scheme == "http":
        return aiohttp.ClientSession()
    if scheme != "https":
        raise DaemonUnreachable(f"a daemon URL is http://HOST:PORT or https://HOST:PORT, not {url}")
    try:
        ctx = client_context(ca_file=ca_file)
    except TlsError as exc:
        raise DaemonUnreachable(str(exc)) from exc
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))


class Client:
    """Async client. Use as ``async with Client.connect() as c: ...``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base: str,
        token: str | None,
        *,
        ca_file: str | None = None,
        tcp: bool = False,
    ) -> None:
        self._session = session
        self._base = base
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._ca_file = ca_file
        self._plaintext_tcp = tcp and base.startswith("http://")

    @classmethod
    def connect(
        cls,
        *,
        settings: Settings | None = None,
        url: str | None = None,
        token: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        autostart: bool = True,
        on_start: Callable[[int, Settings], None] | None = None,
    ) -> Client:
        url = url or os.environ.get("SPOTD_URL")
        if url:
            token = token or os.environ.get("SPOTD_API_TOKEN")
            ca = os.fspath(ca_file) if ca_file else os.environ.get("SPOTD_CA_FILE") or None
            return cls(_tcp_session(url, ca), url.rstrip("/"), token, ca_file=ca, tcp=True)
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
        data, _ = await self._exchange(method, path, **kw)
        return data

    async def _exchange(self, method: str, path: str, **kw: Any) -> tuple[Any, Any]:
        """(the answer's body, its ``links``: the parsed ``Link`` header)."""
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
                return data, r.links
        except aiohttp.ClientConnectionError as exc:
            raise self._unreachable(exc, "cannot reach spotd at") from exc

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
            raise self._unreachable(exc, "lost the connection to spotd at") from exc

    def _unreachable(self, exc: aiohttp.ClientConnectionError, what: str) -> DaemonUnreachable:
        """The connection failure as the error a person reads: a certificate this client does
        not trust, a TLS handshake that failed, or a daemon that is not there."""
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            cert_error = exc.certificate_error
            reason = getattr(cert_error, "verify_message", "") or str(cert_error)
            return UntrustedDaemon(untrusted_message(self._base, reason, self._ca_file))
        if isinstance(exc, aiohttp.ClientSSLError):
            return DaemonUnreachable(
                f"TLS with spotd at {self._base} failed ({exc}): does the daemon serve TLS on "
                "that port (tls_cert and tls_key in its config)?"
            )
        hint = ""
        if isinstance(exc, aiohttp.ServerDisconnectedError) and self._plaintext_tcp:
            hint = " (if the daemon serves TLS on that port, use an https:// URL)"
        return DaemonUnreachable(f"{what} {self._base}: {exc}{hint}")

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
        host_paths: bool = False,
        progress: Progress | None = None,
    ) -> Any:
        """One request for a launch and its dry run: the job with the ``plan`` it was stored
        from (``{name, resources, num_nodes, candidates}``), or with ``dry_run`` the plan
        alone; nothing is stored then.

        The task's workdir and local file_mounts are uploaded first (``upload_files``; the
        answer's ``upload`` says what travelled). ``host_paths`` names them as paths on the
        daemon's host instead (the admin's, under the daemon's ``file_roots``)."""
        body: dict[str, Any] = {"yaml": yaml_text, "filename": filename, "env": env or {}}
        report = None
        if host_paths:
            body["base_dir"] = os.getcwd()
        else:
            sources = local_sources(yaml_text, filename=filename, env=env or {}, base=Path.cwd())
            if sources:
                body["packages"], report = await self.upload_files(sources, progress=progress)
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
        answer = await self.request("POST", "/v1/jobs", json=body)
        if report is not None and isinstance(answer, dict):
            answer["upload"] = report.as_json()
        return answer

    async def upload_files(
        self, sources: dict[str, Path], *, progress: Progress | None = None
    ) -> tuple[dict[str, str], UploadReport]:
        """Pack ``sources`` ("workdir" or a mount target → a local path) here and upload what
        the daemon lacks (``spotd.sdk.uploads``); the manifests by source, and what travelled.
        Raises ``SourceError`` for a source that is missing or unreadable."""
        packs = await asyncio.to_thread(pack_sources, sources, default_cache_path())
        report = await upload_packages(self, packs, progress=progress)
        return {key: p.manifest_sha for key, p in packs.items()}, report

    async def jobs(self, *, status: str | None = None, page_size: int = 500) -> Any:
        """Every job, newest first (``status``: only those, comma-separated), read a page at
        a time."""
        rows: list[Any] = []
        before = None
        while True:
            page, before = await self.job_page(limit=page_size, before=before, status=status)
            rows.extend(page)
            if before is None:
                return rows

    async def job_page(
        self, *, limit: int, before: int | None = None, status: str | None = None
    ) -> tuple[list[Any], int | None]:
        """Up to ``limit`` jobs older than job ``before`` (newest first), and the cursor of the
        next page (None: no job is older)."""
        params = {"limit": str(limit)}
        if before is not None:
            params["before"] = str(before)
        if status:
            params["status"] = status
        data, links = await self._exchange("GET", "/v1/jobs", params=params)
        nxt = links.get("next")
        cursor = nxt["url"].query.get("before") if nxt else None
        return list(data), int(cursor) if cursor else None

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

    async def create_project(
        self,
        name: str,
        *,
        gpu_quota: float | None = None,
        max_jobs: int | None = None,
        max_nodes_per_job: int | None = None,
        max_services: int | None = None,
    ) -> Any:
        """A new project (its token is in the answer, and only there); None: unlimited."""
        body = {
            "name": name,
            "gpu_quota": gpu_quota,
            "max_jobs": max_jobs,
            "max_nodes_per_job": max_nodes_per_job,
            "max_services": max_services,
        }
        return await self.request("POST", "/v1/projects", json=body)

    async def update_project(self, name: str, **limits: float | None) -> Any:
        """Change the limits given (``gpu_quota``, ``max_jobs``, ``max_nodes_per_job``,
        ``max_services``; None: unlimited); the others stay."""
        return await self.request("PATCH", f"/v1/projects/{name}", json=limits)

    async def projects(self) -> Any:
        return await self.request("GET", "/v1/projects")

    async def project(self, name: str) -> Any:
        return await self.request("GET", f"/v1/projects/{name}")

    async def chaos(self, action: str, **body: Any) -> Any:
        return await self.request("POST", f"/v1/chaos/{action}", json=body)


TERMINAL = frozenset(
    {
        "SUCCEEDED",
        "FAILED",
        "FAILED_SETUP",
        "FAILED_NO_RESOURCE",
        "FAILED_CONTROLLER",
        "CANCELLED",
    }
)
