"""Where an attempt's (or a service replica's) agents read their packages (workdir and
file_mounts).

Packages are made at submission into the daemon's content-addressed store (``<home>/cas``).
Agents on this machine read that store directly. A provider that declares ``PackageStore``
(AWS with an ``s3://`` prefix) has instances that cannot: before the launch, the packages
the attempt needs are uploaded there (only what the store lacks: a relaunch finds them and
uploads nothing), and the agents read S3.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from spotd.config import Settings
from spotd.files import mounts as s3src
from spotd.files.workdir import CAS_PREFIX, BlobStore
from spotd.providers.base import Provider, ProviderUnavailable
from spotd.providers.capabilities import PackageStore
from spotd.store import AsyncStore


def s3_options(providers: Iterable[Provider]) -> s3src.S3Options:
    """Where the daemon's own S3 calls go: the object store of the provider that declares
    ``PackageStore`` (the aws provider's endpoint and profile), else the standard chain."""
    for p in providers:
        if isinstance(p, PackageStore):
            o = p.object_store
            return s3src.S3Options(
                endpoint_url=o.endpoint_url or None,
                profile=o.profile or None,
                package_store=o.package_store_url or None,
            )
    return s3src.S3Options()


async def stage_packages(
    *,
    settings: Settings,
    provider: Provider,
    refs: Iterable[str | None],
    s3: s3src.S3Options,
) -> tuple[str, s3src.UploadResult | None]:
    """The store URL (or directory) the agents read ``refs`` from, and what was uploaded
    there (None: nothing needed to travel). Raises ProviderUnavailable when the upload fails
    (S3 down, credentials gone), so no instance starts without its files. Shared by a job's
    attempts (``package_store_for``) and a service's replicas."""
    local = settings.cas_dir
    url = provider.package_store_url if isinstance(provider, PackageStore) else None
    packages = [r for r in refs if r and r.startswith(CAS_PREFIX)]
    if not url or not packages:
        return str(local), None
    remote = s3src.S3PackageStore(url, endpoint_url=s3.endpoint_url, profile=s3.profile)
    try:
        up = await remote.upload(packages, BlobStore(local))
    except Exception as exc:
        raise ProviderUnavailable(f"uploading packages to {url}: {exc}") from exc
    return url, up


def uploaded_event(url: str, up: s3src.UploadResult) -> tuple[str, dict[str, Any]]:
    """The ``files.uploaded`` event of one upload: its message and data."""
    message = (
        f"{up.packages} packages to {url}: {up.cached_packages} already there; "
        f"transferred {up.new_blobs} of {up.blobs} files, {up.new_bytes / 1e6:.1f} MB"
    )
    return message, {
        "store": url,
        "packages": up.packages,
        "cached_packages": up.cached_packages,
        "blobs": up.blobs,
        "new_blobs": up.new_blobs,
        "new_bytes": up.new_bytes,
        "heads": up.heads,
    }


async def package_store_for(
    *,
    settings: Settings,
    store: AsyncStore,
    provider: Provider,
    refs: Iterable[str | None],
    s3: s3src.S3Options,
    job_id: int,
    clock: Callable[[], float],
) -> str:
    """``stage_packages`` for a job's attempt, the upload recorded as the job's event."""
    url, up = await stage_packages(settings=settings, provider=provider, refs=refs, s3=s3)
    if up is not None:
        message, data = uploaded_event(url, up)
        await store.add_event(
            kind="files.uploaded", message=message, now=clock(), job_id=job_id, data=data
        )
    return url
