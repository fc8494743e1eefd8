"""A task's local files, sent to the daemon: packed on this machine, only what it lacks sent.

The daemon never reads the client's paths (it may be on another machine, over TCP). Before a
launch, the client finds the task's workdir and local file_mounts sources, packs each with
``spotd.files.workdir.scan`` (the daemon's package format; ``.gitignore`` and ``.spotdignore``
respected; unchanged files answered by a hash cache), asks ``POST /v1/blobs/missing`` which
blobs the daemon lacks, ``PUT``s only those (files first, each package's manifest last), and
names the manifests in the launch (``packages``). A second launch of the same workdir sends
no file; one with a changed file sends that file and the new manifest; a launch interrupted
mid-upload resumes with what is still missing.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from spotd.errors import InvalidTaskError
from spotd.files.workdir import HashCache, PackageError, Scan, scan
from spotd.spec import SpecError, load_tasks

__all__ = [
    "Progress",
    "Requester",
    "SourceError",
    "UploadReport",
    "default_cache_path",
    "local_sources",
    "pack_sources",
    "upload_packages",
]

BATCH = 10_000  # digests per question (the API's MissingBody bound)
PARALLEL = 4  # blobs in flight at once

# (bytes sent, bytes to send): once with 0 when the daemon has said what it lacks, then after
# each blob; never called when there is nothing to pack
Progress = Callable[[int, int], None]


class SourceError(InvalidTaskError):
    """A local workdir or file_mounts source cannot be packed (missing, unreadable): the task
    cannot run, as if the daemon had refused it."""


class Requester(Protocol):
    """What uploading needs of ``spotd.sdk.client.Client``."""

    async def request(self, method: str, path: str, **kw: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class UploadReport:
    """What a launch's files cost: everything packed, and what actually travelled."""

    packages: int
    files: int
    bytes: int
    blobs: int  # distinct blobs, manifests included
    uploaded_blobs: int
    uploaded_bytes: int

    def as_json(self) -> dict[str, int]:
        return {
            "packages": self.packages,
            "files": self.files,
            "bytes": self.bytes,
            "blobs": self.blobs,
            "uploaded_blobs": self.uploaded_blobs,
            "uploaded_bytes": self.uploaded_bytes,
        }


def default_cache_path() -> Path:
    """The client's hash cache: ``$XDG_CACHE_HOME/spotd/hashes.db`` (``~/.cache`` default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spotd" / "hashes.db"


def local_sources(
    yaml_text: str, *, filename: str, env: Mapping[str, str], base: Path
) -> dict[str, Path]:
    """The task's local sources: "workdir" or the mount's target → the path on this machine
    (relative ones under ``base``). A task that does not parse has none: the daemon names its
    problems."""
    try:
        tasks = load_tasks(filename, text=yaml_text, env_overrides=dict(env))
    except SpecError:
        return {}
    if len(tasks) != 1:
        return {}
    task = tasks[0]
    out: dict[str, Path] = {}
    if task.workdir:
        out["workdir"] = base / Path(task.workdir).expanduser()
    for remote, mount in task.file_mounts.items():
        if mount.source and "://" not in mount.source:  # "": a bucket by name, no source
            out[remote] = base / Path(mount.source).expanduser()
    return out


def pack_sources(sources: Mapping[str, Path], cache_path: Path | None) -> dict[str, Scan]:
    """Each source as a package (nothing stored: ``scan`` only reads and hashes)."""
    cache = None
    if cache_path is not None:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache = HashCache(cache_path)
        except (OSError, sqlite3.Error):  # the cache only saves time
            cache = None
    try:
        out = {}
        for key, path in sources.items():
            what = "workdir" if key == "workdir" else f"file_mounts: {key}"
            if key == "workdir" and not path.is_dir():
                raise SourceError(f"workdir: {path} is not a directory")
            try:
                out[key] = scan(path, cache)
            except PackageError as exc:
                raise SourceError(f"{what}: {exc}") from exc
        return out
    finally:
        if cache is not None:
            cache.close()


async def upload_packages(
    client: Requester, packs: Mapping[str, Scan], *, progress: Progress | None = None
) -> UploadReport:
    """Send the blobs of ``packs`` the daemon lacks (files, then manifests)."""
    files: dict[str, tuple[Path, int]] = {}
    manifests: dict[str, bytes] = {}
    for p in packs.values():
        for sha, path in p.blobs.items():
            files.setdefault(sha, (path, p.sizes[sha]))
        manifests[p.manifest_sha] = p.manifest
    digests = [*files, *(m for m in manifests if m not in files)]
    missing: set[str] = set()
    for i in range(0, len(digests), BATCH):
        answer = await client.request(
            "POST", "/v1/blobs/missing", json={"digests": digests[i : i + BATCH]}
        )
        missing.update(answer["missing"])
    todo_files = [s for s in files if s in missing]
    todo_manifests = [s for s in manifests if s in missing and s not in files]
    total = sum(files[s][1] for s in todo_files) + sum(len(manifests[s]) for s in todo_manifests)
    sent = 0
    if progress is not None:
        progress(0, total)  # the upload begins (a total of 0: nothing to send)
    gate = asyncio.Semaphore(PARALLEL)

    async def put(sha: str) -> None:
        nonlocal sent
        async with gate:
            if sha in files:
                path, size = files[sha]
                f = await asyncio.to_thread(path.open, "rb")
                try:  # aiohttp streams the file, reading it off the event loop
                    await client.request("PUT", f"/v1/blobs/{sha}", data=f)
                finally:
                    f.close()
            else:
                size = len(manifests[sha])
                await client.request("PUT", f"/v1/blobs/{sha}", data=manifests[sha])
        sent += size
        if progress is not None:
            progress(sent, total)

    await asyncio.gather(*(put(s) for s in todo_files))
    await asyncio.gather(*(put(s) for s in todo_manifests))  # a package is whole only now
    return UploadReport(
        packages=len(packs),
        files=sum(p.files for p in packs.values()),
        bytes=sum(p.bytes for p in packs.values()),
        blobs=len(digests),
        uploaded_blobs=len(todo_files) + len(todo_manifests),
        uploaded_bytes=total,
    )
