"""Storage objects on the instance: COPY, MOUNT and MOUNT_CACHED, before setup.

``prepare_storage`` is the one entry point, for a job's node and a service replica alike: it
asks the daemon which buckets the task's storage objects are (``POST /agent/v1/storage``: the
daemon creates or reuses them for the project and uploads their ``source`` once,
``spotd.files.storage_buckets``), then applies each:

- ``COPY``: the bucket's objects are downloaded to the remote path (a unit whose upload is in
  flight or was cut short is left out);
- ``MOUNT``: an S3 bucket is mounted with rclone (``spotd.files.storage_mount``; no mounter on
  the instance is a setup failure naming what to install); a directory bucket is linked;
- ``MOUNT_CACHED``: the remote path is a local directory, first filled with the bucket's
  *committed* units (``spotd.files.storage.restore``: never half a checkpoint; what an earlier
  attempt left at that path on the same disk is discarded first); a write-back
  task then uploads each unit once it has settled (unchanged for ``SETTLE_SECONDS``) with the
  commit protocol, and ``AgentStorage.flush`` uploads what is left when the job ends or a
  notice comes. Node 0 first deletes what uploads cut short left in the bucket.

The returned ``AgentStorage`` is what the caller keeps: ``flush()`` at the end of ``run`` and
on a notice (before the final checkpoint sync, so a replacement that waits for that sync also
finds the flushed units), ``close()`` when the agent leaves (write-back stopped, unmounted).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from spotd.agent.transport import daemon_session
from spotd.aiokit import sleep
from spotd.files.storage import (
    STORAGE_REF,
    Bucket,
    DirBucket,
    StorageError,
    UnitUploader,
    clean_partial,
    download_all,
    local_units,
    restore,
)
from spotd.files.storage_mount import Mounted, link_dir, mount_s3, unmount
from spotd.files.storage_s3 import S3Bucket
from spotd.types import AgentConfig

__all__ = ["AgentStorage", "WriteBack", "apply_storage", "prepare_storage", "storage_remotes"]

SETTLE_SECONDS = 1.0  # a unit unchanged this long is complete enough to upload
POLL_SECONDS = 0.25
RESOLVE_TIMEOUT = 600.0  # the daemon may be uploading a large source for us


def storage_remotes(cfg: AgentConfig) -> list[str]:
    """The remote paths of ``cfg`` that are storage objects."""
    return sorted(r for r, v in cfg.file_mounts.items() if v.startswith(STORAGE_REF))


def _target(remote: str, work: Path) -> Path:
    target = Path(remote).expanduser()
    return target if target.is_absolute() else work / target


def _bucket(row: Mapping[str, Any]) -> Bucket:
    if row["store"] == "local":
        return DirBucket(Path(row["location"]))
    return S3Bucket(str(row["bucket"]), endpoint_url=row.get("endpoint_url") or None)


@dataclass
class WriteBack:
    """MOUNT_CACHED's uploader for one directory: units that settled go up, committed."""

    uploader: UnitUploader
    say: Callable[[str], None]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _seen: dict[str, tuple[dict[str, tuple[int, int]], float]] = field(default_factory=dict)

    async def _pass(self, *, settle: float) -> int:
        """Commit every changed unit unchanged for ``settle`` seconds; how many."""
        up = self.uploader
        n = 0
        async with self._lock:
            for unit in await asyncio.to_thread(local_units, up.root):
                sig = await asyncio.to_thread(up.scan, unit)
                if not sig or not up.changed(unit, sig):
                    continue
                prev = self._seen.get(unit)
                now = time.monotonic()
                if prev is None or prev[0] != sig:
                    self._seen[unit] = (sig, now)
                    if settle > 0:
                        continue
                elif now - prev[1] < settle:
                    continue
                if await up.commit(unit, sig):
                    n += 1
                    self.say(f"storage: committed {unit} to {up.bucket.url}")
        return n

    async def run(self) -> None:
        while not self.stop.is_set():
            await sleep(POLL_SECONDS, self.stop)
            try:
                await self._pass(settle=SETTLE_SECONDS)
            except Exception as exc:  # noqa: BLE001 - S3 away: keep the job, retry next pass
                self.say(f"storage: write-back to {self.uploader.bucket.url}: {exc}")

    async def flush(self) -> int:
        return await self._pass(settle=0)


@dataclass
class AgentStorage:
    """What ``prepare_storage`` set up; see the module docstring."""

    mounted: list[Mounted] = field(default_factory=list)
    cached: list[WriteBack] = field(default_factory=list)
    buckets: list[Bucket] = field(default_factory=list)

    async def flush(self) -> int:
        """Upload (and commit) every cached unit that changed; how many."""
        done = 0
        for wb in self.cached:
            done += await wb.flush()
        return done

    async def close(self) -> None:
        """Stop the write-back tasks and unmount; closing twice does nothing more."""
        cached, mounted, buckets = self.cached, self.mounted, self.buckets
        self.cached, self.mounted, self.buckets = [], [], []
        for wb in cached:
            wb.stop.set()
            if wb.task is not None:
                wb.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await wb.task
        for m in mounted:
            await unmount(m)
        for b in buckets:
            await b.close()


async def fetch_resolved(cfg: AgentConfig) -> list[dict[str, Any]]:
    """The daemon's answer to ``POST /agent/v1/storage`` (retried while the daemon is away);
    StorageError with the daemon's message when it refuses."""
    session, base = daemon_session(cfg)
    headers = {"Authorization": f"Bearer {cfg.token}"}
    deadline = time.monotonic() + RESOLVE_TIMEOUT
    async with session:
        while True:
            try:
                async with session.post(
                    f"{base}/agent/v1/storage",
                    json={"key": cfg.instance_key},
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=RESOLVE_TIMEOUT),
                ) as r:
                    data = await r.json()
                    if r.status != 200:
                        raise StorageError(str(data.get("error") or f"HTTP {r.status}"))
                    return list(data["mounts"])
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise StorageError(f"the daemon did not answer for storage: {exc}") from exc
                await asyncio.sleep(1.0)


async def apply_storage(
    rows: list[dict[str, Any]],
    *,
    work: Path,
    cache_dir: Path,
    attempt: int,
    node_rank: int,
    say: Callable[[str], None],
) -> AgentStorage:
    """Apply the resolved storage objects (see the module docstring)."""
    out = AgentStorage()
    try:
        for row in rows:
            target = _target(str(row["remote"]), work)
            mode = row["mode"]
            bucket = _bucket(row)
            out.buckets.append(bucket)
            if mode == "COPY":
                n, size = await download_all(bucket, target, prefix=row.get("sub_path") or "")
                say(f"storage: {target}: {n} objects, {size} bytes from {bucket.url}")
            elif mode == "MOUNT" and row["store"] == "local":
                out.mounted.append(link_dir(Path(row["location"]), target))
                say(f"storage: {target} -> {row['location']}")
            elif mode == "MOUNT":
                m = await mount_s3(
                    str(row["bucket"]),
                    target,
                    sub_path=row.get("sub_path") or "",
                    endpoint_url=row.get("endpoint_url") or None,
                    cache_dir=cache_dir / "rclone",
                )
                out.mounted.append(m)
                say(f"storage: {target}: s3://{row['bucket']} mounted (rclone)")
            else:
                out.cached.append(await _cached(bucket, target, attempt, node_rank, say))
    except BaseException:
        await out.close()
        raise
    return out


def _clear(target: Path) -> int:
    """Empty ``target``: a cached directory starts as the bucket's committed state, never with
    what an earlier attempt left on the same disk (it may be half a checkpoint, and the
    write-back would commit it as whole)."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise StorageError(f"{target} exists and is not a directory")
    n = 0
    for p in target.iterdir() if target.is_dir() else ():
        n += 1
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    return n


async def _cached(
    bucket: Bucket, target: Path, attempt: int, node_rank: int, say: Callable[[str], None]
) -> WriteBack:
    stale = await asyncio.to_thread(_clear, target)
    if stale:
        say(f"storage: {target}: discarded {stale} entries an earlier attempt left on this disk")
    got = await restore(bucket, target)
    for unit, why in got.skipped:
        say(f"storage: {target}: not restoring {unit}: {why}")
    say(
        f"storage: {target}: restored {len(got.committed)} committed units"
        + (f" and {len(got.external)} others" if got.external else "")
        + f" from {bucket.url}"
    )
    if node_rank == 0:
        cleaned = await clean_partial(bucket)
        if cleaned:
            say(f"storage: removed cut-short uploads of {', '.join(cleaned)}")
    up = UnitUploader(bucket, target, attempt, signatures=dict(got.signatures))
    for unit in got.external:  # already in the bucket as they are: nothing to upload
        up.signatures[unit] = await asyncio.to_thread(up.scan, unit)
    wb = WriteBack(up, say)
    wb.task = asyncio.create_task(wb.run(), name=f"storage-write-back:{target}")
    return wb


async def prepare_storage(
    cfg: AgentConfig, *, work: Path, cache_dir: Path, say: Callable[[str], None]
) -> AgentStorage:
    """Resolve and apply ``cfg``'s storage objects; an empty ``AgentStorage`` when it has none.
    Raises StorageError (or an S3 error) when one cannot be applied: the caller fails setup."""
    if not storage_remotes(cfg):
        return AgentStorage()
    rows = await fetch_resolved(cfg)
    return await apply_storage(
        rows,
        work=work,
        cache_dir=cache_dir,
        attempt=cfg.attempt,
        node_rank=cfg.node_rank,
        say=say,
    )
