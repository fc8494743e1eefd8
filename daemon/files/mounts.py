"""S3 for code and data: ``s3://`` sources of ``file_mounts``, and the S3 package store.

Two things live here, both spoken through aioboto3 (imported inside functions: a daemon with
no AWS at all never loads it).

**Bucket sources.** ``file_mounts: {/data: s3://bucket/prefix}`` (or ``{source: s3://...,
mode: COPY}``) is checked at launch by the daemon with its own credentials and endpoint
(:func:`check_source`): the bucket must exist and be readable, and the key must name an
object or a non-empty prefix; otherwise the launch is a 400 naming the bucket, before anything
is stored or launched. The source stays an ``s3://`` URL in the task; on every attempt the
agent downloads it (:func:`download`) before ``setup``: an object becomes a file at the remote
path, a prefix a directory tree under it (``s3://b/data`` holding ``data/x/y.bin`` gives
``/remote/x/y.bin``).

**The S3 package store.** Workdirs and local mounts are packaged at submission into the
daemon's local content-addressed store (``spotd.files.workdir``), whatever the provider. When an
attempt is launched on a provider that has an S3 package store (``providers.aws.package_store``,
by default ``<checkpoint_store>/packages``), the controller uploads the attempt's packages
there first (:meth:`S3PackageStore.upload`) and gives the agent ``blob_store = s3://...``;
the agent materialises from S3 (:meth:`S3PackageStore.materialize`). Layout under the
store's prefix mirrors the local store: ``blobs/ab/abcd...`` for files and manifests alike.
A package's manifest is uploaded *last*, after every blob it names: its presence is the
commit point, so one HEAD on the manifest says the whole package is there, and a relaunch
(in any region: S3 buckets are global by name) uploads nothing. For a new package, each blob
is HEADed and only the missing ones are uploaded: a second launch of a large workdir with
one changed file uploads that one blob and the new manifest. The counts go into a
``files.uploaded`` event, like ``files.packaged`` for the local store.

Credentials, region and endpoint: the daemon uses the aws provider's ``endpoint_url`` and
``profile`` when one is configured, else the standard chain (``AWS_ENDPOINT_URL`` for moto);
agents get that endpoint in ``AgentConfig.s3_endpoint_url`` ("" = the standard chain: on EC2
the instance profile, as for the S3 checkpoint store in ``spotd.files.checkpoint_s3``).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from spotd.files.checkpoint_s3 import split_url
from spotd.files.workdir import CAS_PREFIX, BlobStore, Entry, PackageError, parse_manifest

S3_SCHEME = "s3://"
CHECK_TIMEOUT = 20.0  # seconds a launch waits on S3 before refusing
PARALLEL = 8  # concurrent object transfers


class S3Error(Exception):
    """A bucket source or package store cannot be used; the message names the bucket."""


def is_s3(source: str) -> bool:
    return source.lower().startswith(S3_SCHEME)


def split_source(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> (``bucket``, ``a/b``): the key has no leading or trailing /."""
    if not is_s3(url):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, key = url[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {url!r}")
    return bucket, key.strip("/")


@dataclass(frozen=True, slots=True)
class S3Options:
    """Where the daemon's S3 calls go: the aws provider's settings, or the standard chain."""

    endpoint_url: str | None = None
    profile: str | None = None
    package_store: str | None = None  # s3://bucket/prefix, or None: packages stay local


def client(
    *, endpoint_url: str | None = None, profile: str | None = None, session: Any = None
) -> Any:
    """An aioboto3 S3 client (an async context manager), bounded timeouts and retries."""
    import aioboto3
    from aiobotocore.config import AioConfig

    if session is None:
        session = aioboto3.Session(profile_name=profile) if profile else aioboto3.Session()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    cfg = AioConfig(
        connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}
    )
    return session.client(
        "s3", region_name=region or None, endpoint_url=endpoint_url or None, config=cfg
    )


def _code(exc: Any) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


# -- bucket sources ----------------------------------------------------------------------------


async def check_source(
    url: str,
    *,
    endpoint_url: str | None = None,
    profile: str | None = None,
    timeout: float = CHECK_TIMEOUT,
) -> None:
    """Refuse (S3Error naming the bucket) a source whose bucket is missing or unreachable, or
    whose key names neither an object nor a non-empty prefix."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket, key = split_source(url)

    async def check() -> None:
        async with client(endpoint_url=endpoint_url, profile=profile) as s3:
            try:
                await s3.head_bucket(Bucket=bucket)
            except ClientError as exc:
                code = _code(exc)
                if code in ("404", "NoSuchBucket"):
                    raise S3Error(f"{url}: bucket {bucket} does not exist") from exc
                if code in ("403", "AccessDenied"):
                    raise S3Error(f"{url}: access to bucket {bucket} denied") from exc
                raise S3Error(f"{url}: bucket {bucket}: {code or exc}") from exc
            if not key:
                return
            listed = await s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=5)
            names = [o["Key"] for o in listed.get("Contents", [])]
            if not any(n == key or n.startswith(key + "/") for n in names):
                # a prefix "data" also matches "data2/..."; look under "data/" itself
                listed = await s3.list_objects_v2(Bucket=bucket, Prefix=key + "/", MaxKeys=1)
                if not listed.get("KeyCount"):
                    raise S3Error(f"{url}: no object or prefix {key!r} in bucket {bucket}")

    try:
        await asyncio.wait_for(check(), timeout)
    except S3Error:
        raise
    except NoCredentialsError as exc:
        raise S3Error(f"{url}: no AWS credentials to read bucket {bucket}") from exc
    except (BotoCoreError, ClientError, OSError, TimeoutError) as exc:
        raise S3Error(f"{url}: cannot reach bucket {bucket}: {exc or type(exc).__name__}") from exc


def _safe_rel(rel: str) -> str | None:
    """A relative path that stays under the destination, or None (``..``, absolute, empty)."""
    parts = [p for p in PurePosixPath(rel).parts if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or rel.startswith("/"):
        return None
    return "/".join(parts)


async def _get_to(s3: Any, bucket: str, key: str, dest: Path) -> int:
    """Stream one object to ``dest`` (atomically: a temporary name, then a rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    obj = await s3.get_object(Bucket=bucket, Key=key)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}")
    body = obj["Body"]
    n = 0
    f = await asyncio.to_thread(open, tmp, "wb")
    try:
        async for chunk in body.iter_chunks(1 << 20):
            await asyncio.to_thread(f.write, chunk)
            n += len(chunk)
    finally:
        f.close()
        body.close()
    os.replace(tmp, dest)
    return n


async def _bounded(jobs: Iterable[Callable[[], Awaitable[int]]]) -> list[int]:
    sem = asyncio.Semaphore(PARALLEL)

    async def one(job: Callable[[], Awaitable[int]]) -> int:
        async with sem:
            return await job()

    return list(await asyncio.gather(*(one(j) for j in jobs)))


async def download(
    url: str, dest: Path, *, endpoint_url: str | None = None, profile: str | None = None
) -> tuple[int, int]:
    """Copy ``url`` to ``dest``: an object to a file, a prefix to a directory tree.
    Returns (objects, bytes)."""
    from botocore.exceptions import ClientError

    bucket, key = split_source(url)
    async with client(endpoint_url=endpoint_url, profile=profile) as s3:
        if key:
            try:
                await s3.head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if _code(exc) not in ("404", "NoSuchKey", "NotFound"):
                    raise
            else:
                return 1, await _get_to(s3, bucket, key, dest)
        prefix = f"{key}/" if key else ""
        keys: list[tuple[str, str]] = []
        async for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            for obj in page.get("Contents", []):
                rel = _safe_rel(obj["Key"][len(prefix) :])
                if rel is not None and not obj["Key"].endswith("/"):
                    keys.append((obj["Key"], rel))
        if not keys:
            raise S3Error(f"{url}: no object or prefix {key!r} in bucket {bucket}")
        dest.mkdir(parents=True, exist_ok=True)
        sizes = await _bounded(partial(_get_to, s3, bucket, k, dest / r) for k, r in keys)
    return len(keys), sum(sizes)


# -- the S3 package store ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UploadResult:
    packages: int
    cached_packages: int  # manifests already in S3: nothing of theirs was looked at again
    blobs: int  # blobs of the packages that were not cached
    new_blobs: int  # ...that this upload transferred
    new_bytes: int
    heads: int  # HEAD requests made


class S3PackageStore:
    """Packages of ``spotd.files.workdir`` in S3 (see the module docstring)."""

    def __init__(
        self, url: str, *, endpoint_url: str | None = None, profile: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.bucket, self.prefix = split_url(self.url)
        self.endpoint_url = endpoint_url
        self.profile = profile

    def key(self, sha: str) -> str:
        return f"{self.prefix}blobs/{sha[:2]}/{sha}"

    def _client(self) -> Any:
        return client(endpoint_url=self.endpoint_url, profile=self.profile)

    async def _has(self, s3: Any, sha: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            await s3.head_object(Bucket=self.bucket, Key=self.key(sha))
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def upload(self, refs: Iterable[str], local: BlobStore) -> UploadResult:
        """Make every package ``cas:<sha>`` of ``refs`` complete in S3, from the local store."""
        shas = list(dict.fromkeys(r[len(CAS_PREFIX) :] for r in refs if r.startswith(CAS_PREFIX)))
        cached = blobs = new_blobs = new_bytes = heads = 0
        async with self._client() as s3:
            for manifest_sha in shas:
                heads += 1
                if await self._has(s3, manifest_sha):
                    cached += 1
                    continue
                path = local.path(manifest_sha)
                if not path.exists():
                    raise S3Error(f"package {manifest_sha[:12]} is not in the local store")
                entries = {e.sha: e.size for e in local.read_manifest(manifest_sha).files}
                blobs += len(entries)
                heads += len(entries)

                async def put(sha: str, size: int) -> int:
                    if await self._has(s3, sha):
                        return -1
                    await s3.upload_file(str(local.path(sha)), self.bucket, self.key(sha))
                    return size

                got = await _bounded(partial(put, s, n) for s, n in entries.items())
                sent = [n for n in got if n >= 0]
                new_blobs += len(sent)
                new_bytes += sum(sent)
                # the commit point: only now does the package exist in S3
                await s3.put_object(
                    Bucket=self.bucket, Key=self.key(manifest_sha), Body=path.read_bytes()
                )
        return UploadResult(len(shas), cached, blobs, new_blobs, new_bytes, heads)

    async def materialize(self, ref: str, dest: Path) -> int:
        """``spotd.files.workdir.materialize`` from S3: write the package at ``dest``; bytes
        written."""
        if not ref.startswith(CAS_PREFIX):
            raise PackageError(f"not a package reference: {ref!r}")
        async with self._client() as s3:
            obj = await s3.get_object(Bucket=self.bucket, Key=self.key(ref[len(CAS_PREFIX) :]))
            body = obj["Body"]
            try:
                manifest = parse_manifest(await body.read())  # no path leaves dest
            finally:
                body.close()
            if manifest.kind == "file":
                [entry] = manifest.files
                targets = [(entry, dest)]
            else:
                targets = [(e, dest / e.path) for e in manifest.files]

            async def one(entry: Entry, target: Path) -> int:
                n = await _get_to(s3, self.bucket, self.key(entry.sha), target)
                os.chmod(target, entry.mode)
                return n

            sizes = await _bounded(partial(one, e, t) for e, t in targets)
        return sum(sizes)
