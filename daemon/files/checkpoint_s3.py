"""The checkpoint store on S3 (``s3://bucket/prefix/<task_id>/``), for agents on cloud instances.

It keeps the semantics of the local directory store in ``spotd.agent.checkpoints``: a reader
never sees half a snapshot, an older attempt never overwrites a newer attempt's snapshot, and a
snapshot taken after a notice is marked *final* so that the replacement can wait for it.

Layout under the task's prefix::

    manifest.json          {"attempt": 3, "final": 0, "written_at": ..., "files": {path: sha256}}
    blobs/<sha256>         file contents, by content

A sync uploads only the blobs the previous manifest does not already hold, then replaces
``manifest.json`` in one PUT (S3 object writes are atomic): that PUT is the commit point.
Blobs only the replaced manifest referenced are deleted afterwards. Restoring reads the
manifest and fetches the blobs it names. Hashes are cached by (size, mtime), so a sync of an
unchanged multi-gigabyte checkpoint reads nothing and uploads nothing.

The window between reading the current manifest and writing the new one is not guarded by a
conditional write: two attempts syncing in the same instant can race. The daemon makes that
rare (the replacement waits for the old attempt's final snapshot before it restores).

Credentials, region and endpoint come from the standard chain (on EC2: the instance profile;
in tests: ``AWS_ENDPOINT_URL`` pointing at moto).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from spotd.files.private import private_dir
from spotd.files.storage import safe_key

MARKERS = (".spotd-attempt", ".spotd-final")  # the local store's bookkeeping files


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> (``bucket``, ``a/b/``); the prefix is empty or ends in ``/``."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {url!r}")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class S3CheckpointStore:
    """The async twin of ``spotd.agent.checkpoints.CheckpointStore``: ``restore``, ``final_from``,
    ``sync``."""

    def __init__(self, url: str, attempt: int, *, session: Any = None) -> None:
        self.bucket, self.prefix = split_url(url)
        self.attempt = attempt
        self._session = session
        self._hashes: dict[str, tuple[int, int, str]] = {}  # path -> (size, mtime_ns, sha256)
        self._lock = asyncio.Lock()

    def _client(self) -> Any:
        if self._session is None:
            import aioboto3  # only agents that checkpoint to S3 need it

            self._session = aioboto3.Session()
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return self._session.client("s3", region_name=region or None)

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def _manifest(self, s3: Any) -> dict[str, Any] | None:
        try:
            obj = await s3.get_object(Bucket=self.bucket, Key=self._key("manifest.json"))
            body = obj["Body"]
            try:
                data = json.loads(await body.read())
            finally:
                body.close()
        except s3.exceptions.NoSuchKey:
            return None
        return data if isinstance(data, dict) else None

    async def restore(self, into: Path) -> bool:
        private_dir(into)  # what the job saves there may be anything: its user's only
        async with self._client() as s3:
            manifest = await self._manifest(s3)
            if manifest is None:
                return False
            for rel, sha in sorted(manifest["files"].items()):
                dest = into / safe_key(rel)  # the manifest is anyone's who can write the bucket
                dest.parent.mkdir(parents=True, exist_ok=True)
                obj = await s3.get_object(Bucket=self.bucket, Key=self._key(f"blobs/{sha}"))
                tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}")
                body = obj["Body"]
                f = await asyncio.to_thread(open, tmp, "wb")
                try:
                    async for chunk in body.iter_chunks(1 << 20):
                        await asyncio.to_thread(f.write, chunk)
                finally:
                    f.close()
                    body.close()
                os.replace(tmp, dest)
                st = dest.stat()
                self._hashes[rel] = (st.st_size, st.st_mtime_ns, sha)
        return True

    async def final_from(self) -> int:
        """The attempt whose notice-time snapshot is in the store (0 if none)."""
        async with self._client() as s3:
            manifest = await self._manifest(s3)
        return int(manifest.get("final", 0)) if manifest else 0

    def _scan(self, source: Path) -> dict[str, str]:
        """Each file's content hash. A file the job renamed or deleted while it was scanned
        (a checkpoint written to a temporary name, then renamed into place) is left out
        (``spotd.agent.checkpoints.snapshot``)."""
        files: dict[str, str] = {}
        found = (  # os.walk skips a subdirectory removed mid-walk, where rglob raised; it
            # follows linked directories as rglob did (S3 holds files; the job's own links)
            Path(top, name)
            for top, _, names in os.walk(source, followlinks=True)
            for name in names
        )
        for p in sorted(found):
            if not p.is_file() or p.name in MARKERS:
                continue
            rel = str(p.relative_to(source))
            try:
                st = p.stat()
                cached = self._hashes.get(rel)
                if cached and cached[:2] == (st.st_size, st.st_mtime_ns):
                    files[rel] = cached[2]
                    continue
                sha = _sha256(p)
            except FileNotFoundError:
                continue
            self._hashes[rel] = (st.st_size, st.st_mtime_ns, sha)
            files[rel] = sha
        return files

    async def sync(self, source: Path, *, final: bool = False, unless_final: bool = False) -> bool:
        """Upload a snapshot of ``source``; False if it is empty (and not final), a newer
        attempt owns the store, or (``unless_final``) the store holds this attempt's final
        snapshot. A final sync of an empty directory keeps the stored files and only marks
        them final, so a replacement waiting for it stops waiting. The manifest is read just
        before it is written: S3 has no lock across machines, so unlike the directory store
        this narrows a gang survivor's race with a final snapshot but cannot close it."""
        empty = not source.exists() or not any(source.iterdir())
        if empty and not final:
            return False
        async with self._lock:
            files = {} if empty else await asyncio.to_thread(self._scan, source)
            async with self._client() as s3:
                current = await self._manifest(s3)
                if current is not None and int(current.get("attempt", 0)) > self.attempt:
                    return False
                if unless_final and current and int(current.get("final", 0)) == self.attempt:
                    return False
                if empty:
                    files = dict((current or {}).get("files", {}))
                have = set((current or {}).get("files", {}).values())
                for rel, scanned in list(files.items()):
                    if scanned in have:
                        continue
                    try:
                        data = await asyncio.to_thread((source / rel).read_bytes)
                    except FileNotFoundError:
                        del files[rel]  # gone since the scan
                        continue
                    # the job may have replaced it since the scan: a blob is named by the
                    # bytes it holds, never by what the file held a moment before
                    sha = files[rel] = hashlib.sha256(data).hexdigest()
                    if sha != scanned:
                        self._hashes.pop(rel, None)
                    if sha in have:
                        continue
                    await s3.put_object(
                        Bucket=self.bucket, Key=self._key(f"blobs/{sha}"), Body=data
                    )
                    have.add(sha)
                manifest = {
                    "attempt": self.attempt,
                    "final": self.attempt if final else 0,
                    "written_at": time.time(),
                    "files": files,
                }
                await s3.put_object(
                    Bucket=self.bucket,
                    Key=self._key("manifest.json"),
                    Body=json.dumps(manifest).encode(),
                    ContentType="application/json",
                )
                stale = set((current or {}).get("files", {}).values()) - set(files.values())
                for sha in sorted(stale):
                    await s3.delete_object(Bucket=self.bucket, Key=self._key(f"blobs/{sha}"))
        return True
