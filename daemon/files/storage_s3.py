"""A storage object's bucket on S3: ``spotd.files.storage.Bucket`` spoken through aioboto3.

One client per ``S3Bucket``, opened on first use and closed by ``close()``; credentials,
region and endpoint as in ``spotd.files.mounts`` (the daemon: the aws provider's endpoint and
profile; an agent: ``AgentConfig.s3_endpoint_url`` and the standard chain, on EC2 the instance
profile). Objects are streamed to a temporary name and renamed on the way down, so a reader
killed mid-download leaves no half file.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from spotd.files import mounts
from spotd.files.storage import ObjectInfo, StorageError

__all__ = ["S3Bucket", "s3_errors"]

_MISSING = ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


@contextlib.asynccontextmanager
async def s3_errors(what: str) -> AsyncIterator[None]:
    """S3's and the network's failures inside the block, as ``StorageError`` naming ``what``
    (the caller answers them as a refusal, never as a crash)."""
    failures: tuple[type[BaseException], ...] = (OSError, TimeoutError)
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        failures += (BotoCoreError, ClientError)
    except ImportError:  # a daemon without the aws extra: only directory buckets work
        pass
    try:
        yield
    except ImportError as exc:
        raise StorageError(f"{what}: aioboto3 is not installed (pip install 'spotd[aws]')") from exc
    except failures as exc:
        raise StorageError(f"{what}: {exc or type(exc).__name__}") from exc


class S3Bucket:
    """``s3://name`` as a ``Bucket``."""

    def __init__(
        self,
        name: str,
        *,
        endpoint_url: str | None = None,
        profile: str | None = None,
        region: str | None = None,
    ) -> None:
        self.name = name
        self.url = f"s3://{name}"
        self.endpoint_url = endpoint_url
        self.profile = profile
        self.region = region
        self._stack = contextlib.AsyncExitStack()
        self._s3: Any = None

    async def _client(self) -> Any:
        if self._s3 is None:
            self._s3 = await self._stack.enter_async_context(
                mounts.client(endpoint_url=self.endpoint_url, profile=self.profile)
            )
        return self._s3

    async def close(self) -> None:
        self._s3 = None
        await self._stack.aclose()

    @staticmethod
    def _code(exc: Any) -> str:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))

    async def exists(self) -> bool:
        from botocore.exceptions import ClientError

        s3 = await self._client()
        try:
            await s3.head_bucket(Bucket=self.name)
        except ClientError as exc:
            if self._code(exc) in _MISSING:
                return False
            if self._code(exc) in ("403", "AccessDenied"):
                raise StorageError(f"bucket {self.name}: access denied") from exc
            raise
        return True

    async def create(self) -> None:
        from botocore.exceptions import ClientError

        s3 = await self._client()
        region = self.region or s3.meta.region_name
        kwargs: dict[str, Any] = {"Bucket": self.name}
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            await s3.create_bucket(**kwargs)
        except ClientError as exc:
            code = self._code(exc)
            if code == "BucketAlreadyOwnedByYou":
                return
            if code == "BucketAlreadyExists":
                raise StorageError(
                    f"bucket {self.name} exists and belongs to another AWS account: "
                    "S3 bucket names are global, choose another name"
                ) from exc
            raise StorageError(f"cannot create bucket {self.name}: {code or exc}") from exc

    async def put_file(self, path: Path, key: str) -> None:
        s3 = await self._client()
        await s3.upload_file(str(path), self.name, key)

    async def get_file(self, key: str, dest: Path) -> None:
        s3 = await self._client()
        await mounts._get_to(s3, self.name, key, dest)

    async def put_bytes(self, key: str, data: bytes) -> None:
        s3 = await self._client()
        await s3.put_object(Bucket=self.name, Key=key, Body=data)

    async def get_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        s3 = await self._client()
        try:
            obj = await s3.get_object(Bucket=self.name, Key=key)
        except ClientError as exc:
            if self._code(exc) in _MISSING:
                return None
            raise
        body = obj["Body"]
        try:
            data: bytes = await body.read()
        finally:
            body.close()
        return data

    async def list(self, prefix: str = "") -> dict[str, ObjectInfo]:
        s3 = await self._client()
        out: dict[str, ObjectInfo] = {}
        async for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        ):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = ObjectInfo(int(obj["Size"]))
        return out

    async def delete_keys(self, keys: Iterable[str]) -> None:
        s3 = await self._client()
        batch = list(keys)
        for i in range(0, len(batch), 1000):  # DeleteObjects takes 1,000 keys at most
            chunk = [{"Key": k} for k in batch[i : i + 1000]]
            await s3.delete_objects(Bucket=self.name, Delete={"Objects": chunk, "Quiet": True})

    async def destroy(self) -> None:
        from botocore.exceptions import ClientError

        await self.delete_keys(await self.list())
        s3 = await self._client()
        try:
            await s3.delete_bucket(Bucket=self.name)
        except ClientError as exc:
            if self._code(exc) not in _MISSING:
                raise StorageError(f"cannot delete bucket {self.name}: {exc}") from exc
