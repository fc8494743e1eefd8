"""The daemon's side of storage objects: which bucket a task's mount is, who owns it, and the
one upload of its ``source``.

An agent asks (``POST /agent/v1/storage``, ``spotd.api.storage``) before setup; the daemon
answers with ``ResolvedMount`` rows after it has, for each storage object of the task:

1. picked the store: ``store: s3`` or ``store: local`` as written, else the store the bucket
   was created in, else the daemon's default (S3 when a provider with an object store is
   configured, the directory store otherwise);
2. created or reused the bucket, for the job's project: a directory bucket is
   ``<home>/storage/local/<project>/<name>`` (two projects' ``data`` buckets are two
   directories, and no path of one is ever handed to the other); an S3 bucket spotd creates is
   claimed with ``.spotd/owner.json``, and a project may not use one another project claimed
   (403). An S3 bucket that exists unclaimed (made with other tools) is used as it is, and
   never deleted by spotd;
3. uploaded ``source`` (a package the client uploaded) once: ``upload_source_once`` records the
   package's hash in the bucket, so a relaunch, another node or another job uploads nothing.

The registry (``<home>/storage/registry/<project>/<name>.json``) is what ``spotctl storage ls``
lists; it is this daemon home's memory (daemons sharing one database do not share it), while
ownership is in the bucket itself, so every daemon enforces it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spotd.files import mounts as s3src
from spotd.files.private import private_dir, write_private_json
from spotd.files.storage import OWNER, Bucket, DirBucket, StorageError, bucket_name_problem
from spotd.files.storage import upload_source_once as _upload_once
from spotd.files.storage_s3 import S3Bucket, s3_errors
from spotd.files.workdir import CAS_PREFIX, BlobStore, PackageError, materialize
from spotd.spec import Task

__all__ = [
    "BucketRecord",
    "NotOwner",
    "ResolvedMount",
    "Storage",
    "StorageConfig",
    "bucket_names",
    "storage_mounts",
]

STORES = ("s3", "local")


class NotOwner(StorageError):
    """The bucket belongs to another project (a 403)."""


@dataclass(frozen=True, slots=True)
class StorageConfig:
    root: Path  # <home>/storage
    blobs: Path  # <home>/cas: the packages sources come from
    default_store: str = "local"  # "s3" where a provider has an object store
    endpoint_url: str | None = None
    profile: str | None = None


@dataclass(frozen=True, slots=True)
class BucketRecord:
    name: str
    store: str  # "s3" | "local"
    project: str
    url: str  # s3://name, or the bucket's directory
    created_at: float
    managed: bool  # spotd created it (and may delete it); False: it existed already
    sources: tuple[str, ...] = ()  # packages uploaded into it

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"sources": list(self.sources)}


@dataclass(frozen=True, slots=True)
class ResolvedMount:
    """One storage object as the agent applies it (``spotd.agent.storage``)."""

    remote: str
    mode: str  # COPY | MOUNT | MOUNT_CACHED
    store: str
    bucket: str
    location: str = ""  # the directory of a local bucket
    sub_path: str = ""  # a prefix inside the bucket (an s3:// source)
    endpoint_url: str = ""
    uploaded_source: bool = False  # this request uploaded the source

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def storage_mounts(task: Task) -> dict[str, Any]:
    """The task's storage objects, by remote path."""
    return {r: m for r, m in task.file_mounts.items() if m.is_storage_object}


def bucket_names(task: Task) -> set[str]:
    """The buckets a task's storage objects name (its ``name``, or an ``s3://`` source's)."""
    out = set()
    for mount in storage_mounts(task).values():
        if mount.name:
            out.add(mount.name)
        elif s3src.is_s3(mount.source):
            out.add(s3src.split_source(mount.source)[0])
    return out


@dataclass
class Storage:
    """The daemon's buckets (one per daemon; the API holds it)."""

    config: StorageConfig
    _locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)

    # -- where things are ------------------------------------------------------------------

    @staticmethod
    def _parts(project: str, name: str) -> tuple[str, str]:
        """``project`` and ``name`` as single path components (never ``..`` or a ``/``)."""
        for part in (project, name):
            if not part or "/" in part or "\0" in part or part in (".", ".."):
                raise StorageError(f"{part!r} cannot name a project or a bucket")
        return project, name

    def _record_path(self, project: str, name: str) -> Path:
        project, name = self._parts(project, name)
        return self.config.root / "registry" / project / f"{name}.json"

    def local_dir(self, project: str, name: str) -> Path:
        project, name = self._parts(project, name)
        return self.config.root / "local" / project / name

    def open(self, store: str, project: str, name: str) -> Bucket:
        if store == "local":
            return DirBucket(self.local_dir(project, name))
        return S3Bucket(name, endpoint_url=self.config.endpoint_url, profile=self.config.profile)

    def _lock(self, project: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((project, name), asyncio.Lock())

    # -- the registry ----------------------------------------------------------------------

    def get(self, project: str, name: str) -> BucketRecord | None:
        try:
            raw = json.loads(self._record_path(project, name).read_text())
            raw["sources"] = tuple(raw.get("sources") or ())
            return BucketRecord(**raw)
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def records(self, project: str | None = None) -> list[BucketRecord]:
        """Every bucket on record, or ``project``'s."""
        base = self.config.root / "registry"
        dirs = [base / project] if project is not None else sorted(base.glob("*"))
        out = []
        for d in dirs:
            for p in sorted(d.glob("*.json")):
                rec = self.get(d.name, p.stem)
                if rec is not None:
                    out.append(rec)
        return out

    def _save(self, rec: BucketRecord) -> None:
        path = self._record_path(rec.project, rec.name)
        private_dir(path.parent)
        write_private_json(path, rec.to_json())

    # -- creating, claiming, deleting ------------------------------------------------------

    async def ensure(self, project: str, name: str, store: str | None) -> BucketRecord:
        """The project's bucket ``name``: created, claimed, or reused (see the module)."""
        why = bucket_name_problem(name)
        if why:
            raise StorageError(why)
        rec = self.get(project, name)
        if rec is not None and store not in (None, rec.store):
            raise StorageError(
                f"bucket {name} is in the {rec.store} store, the task asks for store {store}"
            )
        chosen = rec.store if rec is not None else store or self.config.default_store
        if chosen not in STORES:
            raise StorageError(f"store {chosen} is not supported by spotd (s3, local)")
        bucket = self.open(chosen, project, name)
        try:
            managed = rec.managed if rec is not None else True
            async with s3_errors(f"bucket {name}"):
                if chosen == "s3":
                    managed = await self._claim_s3(bucket, project, rec)
                else:
                    private_dir(bucket_dir := self.local_dir(project, name))
                    await DirBucket(bucket_dir).create()
        finally:
            await bucket.close()
        if rec is None:
            rec = BucketRecord(name, chosen, project, bucket.url, time.time(), managed)
            self._save(rec)
        return rec

    async def _claim_s3(self, bucket: Bucket, project: str, rec: BucketRecord | None) -> bool:
        """Create and claim an S3 bucket for ``project``, or check whose it is; whether spotd
        manages it."""
        if await bucket.exists():
            owner = await self.owner(bucket)
            if owner is not None and owner != project:
                raise NotOwner(f"bucket {bucket.name} belongs to another project")
            return owner is not None
        if rec is not None and rec.managed:
            raise StorageError(f"bucket {bucket.name} was deleted outside spotd")
        await bucket.create()
        claim = {"project": project, "created_at": time.time(), "by": "spotd"}
        await bucket.put_bytes(OWNER, json.dumps(claim).encode())
        return True

    @staticmethod
    async def owner(bucket: Bucket) -> str | None:
        raw = await bucket.get_bytes(OWNER)
        try:
            return str(json.loads(raw)["project"]) if raw else None
        except (ValueError, KeyError, TypeError):
            return None

    async def delete(self, project: str, name: str) -> BucketRecord:
        """Delete the project's bucket and everything in it (the caller checked it is unused)."""
        rec = self.get(project, name)
        if rec is None:
            raise LookupError(f"no bucket {name} in project {project}")
        if not rec.managed:
            raise StorageError(
                f"bucket {name} was not created by spotd: delete it with your cloud's tools "
                "(spotd only forgets it)"
            )
        async with self._lock(project, name):
            bucket = self.open(rec.store, project, name)
            try:
                async with s3_errors(f"deleting bucket {name}"):
                    theirs = rec.store == "s3" and await bucket.exists()
                    if theirs and await self.owner(bucket) not in (None, project):
                        raise NotOwner(f"bucket {name} belongs to another project")
                    await bucket.destroy()
            finally:
                await bucket.close()
            self._record_path(project, name).unlink(missing_ok=True)
        return rec

    def forget(self, project: str, name: str) -> None:
        self._record_path(project, name).unlink(missing_ok=True)

    # -- an attempt's storage objects ------------------------------------------------------

    async def resolve(self, task: Task, project: str) -> list[ResolvedMount]:
        """Create/claim every bucket of ``task``'s storage objects and upload their sources
        (once); what the agent needs to apply them."""
        out = []
        for remote, mount in sorted(storage_mounts(task).items()):
            if mount.name is None:  # an existing bucket, by its s3:// source
                name, sub = s3src.split_source(mount.source)
                async with self._lock(project, name):
                    bucket = S3Bucket(
                        name, endpoint_url=self.config.endpoint_url, profile=self.config.profile
                    )
                    try:
                        async with s3_errors(mount.source):
                            if not await bucket.exists():
                                raise StorageError(f"{mount.source}: bucket {name} does not exist")
                            if await self.owner(bucket) not in (None, project):
                                raise NotOwner(f"bucket {name} belongs to another project")
                    finally:
                        await bucket.close()
                out.append(self._resolved(remote, mount.mode, "s3", name, project, sub))
                continue
            async with self._lock(project, mount.name):
                rec = await self.ensure(project, mount.name, mount.store)
                uploaded = False
                if mount.source.startswith(CAS_PREFIX):
                    uploaded = await self._upload_source(rec, mount.source)
            row = self._resolved(remote, mount.mode, rec.store, rec.name, project, "")
            out.append(ResolvedMount(**(row.to_json() | {"uploaded_source": uploaded})))
        return out

    def _resolved(
        self, remote: str, mode: str, store: str, name: str, project: str, sub: str
    ) -> ResolvedMount:
        location = str(self.local_dir(project, name)) if store == "local" else ""
        endpoint = self.config.endpoint_url or "" if store == "s3" else ""
        return ResolvedMount(remote, mode, store, name, location, sub, endpoint)

    async def _upload_source(self, rec: BucketRecord, ref: str) -> bool:
        """The package ``ref`` into the bucket, unless it is there already (recorded)."""
        sha = ref[len(CAS_PREFIX) :]
        if sha in rec.sources:
            return False
        blobs = BlobStore(self.config.blobs)
        try:
            kind = blobs.read_manifest(sha).kind
        except PackageError as exc:
            raise StorageError(f"source of bucket {rec.name}: {exc}") from exc
        if kind != "dir":
            raise StorageError(f"source of bucket {rec.name} must be a directory, not a file")
        tmp_root = self.config.root / "tmp"
        private_dir(tmp_root)
        tmp = Path(tempfile.mkdtemp(dir=tmp_root))
        bucket = self.open(rec.store, rec.project, rec.name)
        try:
            try:
                await asyncio.to_thread(materialize, ref, blobs, tmp / "src")
            except (PackageError, OSError) as exc:
                raise StorageError(f"source of bucket {rec.name}: {exc}") from exc
            async with s3_errors(f"uploading the source of bucket {rec.name}"):
                uploaded = await _upload_once(bucket, tmp / "src", sha)
        finally:
            await bucket.close()
            await asyncio.to_thread(shutil.rmtree, tmp, True)
        self._save(BucketRecord(**(asdict(rec) | {"sources": (*rec.sources, sha)})))
        return uploaded
