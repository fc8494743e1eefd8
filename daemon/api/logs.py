"""A job's logs: ``GET /v1/jobs/{job_id}/logs`` (``?attempt=N``, ``?follow=1``), plain text.

The agents' heartbeats append each node's output to ``logs/j<job>-a<attempt>/node-<rank>.log``
(``spotd.api.agents``); this route reads those files. Every attempt gets a header line naming
where it ran, so a preempted job's log reads as one story: attempt 1 in one zone, attempt 2
in the next, each node's lines prefixed by the node when there are several.

A follower (``?follow=1``) ends when its client goes away: every poll first checks that the
connection is still open (a closed socket is seen at once, a write into one raises), and on
TCP the connection gets keep-alive probes, so a peer that vanished without closing (a laptop
gone to sleep) is noticed within about a minute, though the log is quiet and nothing is
written. ``spotd_log_followers`` in ``/metrics`` counts the followers running.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

from spotd.api.common import METRICS, SETTINGS, STORE, ApiError
from spotd.api.jobs import JOB_ID, requested_job
from spotd.api.params import QueryFlag, QueryInt
from spotd.api.routes import TENANT, Route
from spotd.config import Settings
from spotd.types import JobStatus

__all__ = ["ROUTES", "client_gone", "following"]

POLL_SECONDS = 0.2
# TCP keep-alive of a follow: first probe after 30 s of silence, then every 10 s, 3 unanswered
# probes and the connection is dropped (the kernel's default waits two hours)
KEEPALIVE = ((socket.TCP_KEEPIDLE, 30), (socket.TCP_KEEPINTVL, 10), (socket.TCP_KEEPCNT, 3))


def client_gone(request: web.Request) -> bool:
    """Whether the client of a streamed response closed the connection (or it was lost)."""
    transport = request.transport
    return transport is None or transport.is_closing()


@contextlib.contextmanager
def following(request: web.Request) -> Iterator[None]:
    """Count a follower in ``spotd_log_followers`` while it runs; probe a TCP peer's liveness."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for opt, value in KEEPALIVE:
                sock.setsockopt(socket.IPPROTO_TCP, opt, value)
    gauge = request.app[METRICS].log_followers
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


def _log_files(settings: Settings, job_id: int, attempt: int) -> list[Path]:
    d = settings.logs_dir / f"j{job_id}-a{attempt}"
    return sorted(d.glob("node-*.log")) if d.exists() else []


HELD_LINE_MAX = 64 * 1024  # a node's unfinished line held back at most this long


def _drain(files: list[Path], offsets: dict[Path, int], *, whole: bool = True) -> bytes:
    """New bytes of every node log since the last call (lines prefixed by node if several).
    With several nodes and not ``whole`` (a live attempt followed), a node's unfinished last
    line waits for its end, so it is prefixed once: heartbeat chunks end anywhere, and a line
    split over two was shown as ``(node-0) loss=(node-0) 0.42``."""
    out = []
    for f in files:
        with open(f, "rb") as fh:
            fh.seek(offsets.get(f, 0))
            data = fh.read()
        if not whole and len(files) > 1 and len(data) < HELD_LINE_MAX:
            data = data[: data.rfind(b"\n") + 1]
        offsets[f] = offsets.get(f, 0) + len(data)
        if data and len(files) > 1:
            prefix = f"({f.stem}) ".encode()
            data = b"".join(prefix + line for line in data.splitlines(keepends=True))
        out.append(data)
    return b"".join(out)


async def job_logs(request: web.Request) -> web.StreamResponse:
    """Logs of every attempt in order (or of ``?attempt=N``); ``?follow=1`` streams to the end."""
    follow = FOLLOW.parse(request)
    only = ATTEMPT.parse(request)
    job = await requested_job(request)
    attempts = await request.app[STORE].attempts(job.id)
    if only is not None and not only <= len(attempts):
        raise ApiError(404, f"job {job.id} has no attempt {only} (it has {len(attempts)})")
    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await resp.prepare(request)
    with following(request) if follow else contextlib.nullcontext():
        try:
            await _stream(request, resp, job.id, only=only, follow=follow)
            if not client_gone(request):
                await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-write: nothing more to send
    return resp


async def _stream(
    request: web.Request,
    resp: web.StreamResponse,
    job_id: int,
    *,
    only: int | None,
    follow: bool,
) -> None:
    settings = request.app[SETTINGS]
    store = request.app[STORE]
    attempt = only or 1
    offsets: dict[Path, int] = {}
    headed: set[int] = set()
    while not client_gone(request):
        attempts = await store.attempts(job_id)
        fresh = await store.get_job(job_id)
        ended = fresh is None or JobStatus(fresh.status).is_terminal
        if attempt <= len(attempts):
            a = attempts[attempt - 1]
            if attempt not in headed:
                headed.add(attempt)
                await resp.write(
                    f"=== attempt {a.attempt}: {a.provider}/{a.region}/{a.zone} "
                    f"{a.instance_type} {a.market} ===\n".encode()
                )
            files = _log_files(settings, job_id, attempt)
            whole = a.ended_at is not None or not follow or ended
            data = await asyncio.to_thread(_drain, files, offsets, whole=whole)
            if data:
                await resp.write(data)
                continue
            if attempt < len(attempts) and only is None and (a.ended_at or not follow):
                attempt += 1
                continue
            done = only is not None and a.ended_at is not None
        else:
            done = only is not None
        if not follow or done or ended:
            return
        await asyncio.sleep(POLL_SECONDS)


FOLLOW = QueryFlag("follow", "keep streaming until the job (or the attempt) ends")
ATTEMPT = QueryInt("attempt", "only this attempt's log (1 is the first)")

ROUTES = (
    Route(
        "GET",
        "/v1/jobs/{job_id}/logs",
        job_logs,
        "A job's logs, every attempt in order (text)",
        "logs",
        params=(JOB_ID, FOLLOW, ATTEMPT),
        callers=TENANT,
        errors=(404,),
        text=True,
    ),
)
