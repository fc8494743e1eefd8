"""A MOUNT_CACHED uploader in a process of its own, for the tests that SIGKILL it.

``python -m tests.storage.uploader_proc BUCKET CACHE UNIT DELAY`` commits ``UNIT`` of the
cached directory ``CACHE`` into ``BUCKET`` (``dir:/path`` or ``s3:name:endpoint``) with the
real commit protocol (``UnitUploader.commit``), each object put ``DELAY`` seconds after the
one before (a slow link, so a test can kill it mid-upload), then prints ``COMMITTED``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from spotd.files.storage import Bucket, DirBucket, UnitUploader
from spotd.files.storage_s3 import S3Bucket


def open_bucket(spec: str) -> Bucket:
    kind, _, rest = spec.partition(":")
    if kind == "dir":
        return DirBucket(Path(rest))
    name, _, endpoint = rest.partition(":")
    return S3Bucket(name, endpoint_url=endpoint)


class SlowLink:
    """The bucket behind a slow link: every file put waits first (our own seam)."""

    def __init__(self, inner: Bucket, delay: float) -> None:
        self.inner = inner
        self.delay = delay

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def put_file(self, path: Path, key: str) -> None:
        await asyncio.sleep(self.delay)
        await self.inner.put_file(path, key)


async def main(spec: str, cache: str, unit: str, delay: float) -> None:
    bucket = open_bucket(spec)
    up = UnitUploader(SlowLink(bucket, delay), Path(cache), attempt=1)  # type: ignore[arg-type]
    print("UPLOADING", flush=True)
    ok = await up.commit(unit, up.scan(unit))
    await bucket.close()
    print("COMMITTED" if ok else "CHANGED", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
