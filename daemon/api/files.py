"""Blobs: ``/v1/blobs`` — how a client's workdir and file_mounts reach the daemon.

``spotctl`` and the SDK pack a directory on the client (``spotd.files.workdir.scan``: every
file a blob named by its SHA-256, and a manifest blob listing them), ask which blobs the daemon
lacks (``POST /v1/blobs/missing``), ``PUT`` only those, and launch naming the manifests
(``spotd.control.sources``). A second launch of the same workdir uploads nothing; an
interrupted upload resumes where it stopped, since whatever arrived whole is kept.

A blob is written to a private temporary file while its digest is computed, and renamed into
the content store (``<home>/cas``, the store the agents and the S3 package store read) only if
the digest is its name: a wrong digest is a 400 and leaves nothing behind. Putting a blob that
is there already is a 200 and reads nothing.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from aiohttp import web
from pydantic import Field, StringConstraints

from spotd.api.common import SETTINGS, ApiError, Body, read_body
from spotd.api.params import PathName
from spotd.api.routes import TENANT, Route
from spotd.files.workdir import MAX_BLOB_BYTES, SHA256_PATTERN, BlobStore, PackageError

__all__ = ["BLOB", "MAX_DIGESTS", "ROUTES", "MissingBody", "Sha256"]

MAX_DIGESTS = 10_000  # per question; a client asks in batches
_WRITE_CHUNK = 1 << 20  # bytes handed to the writer thread at a time

BLOB = PathName(
    "sha256", "blob name", SHA256_PATTERN, "its SHA-256: 64 lower-case hexadecimal digits"
)
Sha256 = Annotated[str, StringConstraints(pattern=f"^{SHA256_PATTERN}$")]


class MissingBody(Body):
    """Blobs a client has: the daemon answers which of them it lacks."""

    digests: list[Sha256] = Field(max_length=MAX_DIGESTS)


def _store(request: web.Request) -> BlobStore:
    return BlobStore(request.app[SETTINGS].cas_dir)


async def missing_blobs(request: web.Request) -> web.Response:
    """Which of ``digests`` the daemon's content store lacks (in the order asked, once each)."""
    body = await read_body(request, MissingBody)
    blobs = await asyncio.to_thread(_store, request)
    wanted = list(dict.fromkeys(body.digests))
    missing = await asyncio.to_thread(lambda: [d for d in wanted if not blobs.has(d)])
    return web.json_response({"missing": missing})


async def put_blob(request: web.Request) -> web.Response:
    """Store the request's body (raw bytes) as the blob named by its SHA-256: 201 when stored,
    200 when it was there already; 400 if the bytes do not hash to the name, 413 over the
    size limit."""
    sha = BLOB.parse(request)
    if request.content_length is not None and request.content_length > MAX_BLOB_BYTES:
        raise ApiError(413, f"a blob is at most {MAX_BLOB_BYTES} bytes")
    blobs = await asyncio.to_thread(_store, request)
    if await asyncio.to_thread(blobs.has, sha):
        return web.json_response({"sha256": sha, "stored": False})
    incoming = await asyncio.to_thread(blobs.receive, sha)
    try:
        pending = bytearray()
        async for chunk in request.content.iter_chunked(_WRITE_CHUNK):
            if incoming.size + len(pending) + len(chunk) > MAX_BLOB_BYTES:
                raise ApiError(413, f"a blob is at most {MAX_BLOB_BYTES} bytes")
            pending += chunk
            if len(pending) >= _WRITE_CHUNK:
                await asyncio.to_thread(incoming.write, bytes(pending))
                pending.clear()
        if pending:
            await asyncio.to_thread(incoming.write, bytes(pending))
    except BaseException:
        await asyncio.to_thread(incoming.abort)
        raise
    try:
        stored = await asyncio.to_thread(incoming.commit)
    except PackageError as exc:
        raise ApiError(400, f"blob {sha[:12]}: {exc}") from exc
    return web.json_response(
        {"sha256": sha, "size": incoming.size, "stored": stored}, status=201 if stored else 200
    )


ROUTES = (
    Route(
        "POST",
        "/v1/blobs/missing",
        missing_blobs,
        "Which of these blobs the daemon lacks",
        "files",
        body=MissingBody,
        callers=TENANT,
    ),
    Route(
        "PUT",
        "/v1/blobs/{sha256}",
        put_blob,
        "Upload one blob (raw body), named by its SHA-256",
        "files",
        params=(BLOB,),
        callers=TENANT,
        ok=(200, 201),
        errors=(413,),
    ),
)
