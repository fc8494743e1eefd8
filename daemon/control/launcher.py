"""Launching a service's replicas: the intent row, the code shipped, the provider call.

Split out of ``control.services`` (the executor decides *that* a replica is launched; this
module is *how*). A launch is, in order:

1. the replica's row (the intent) is written before the provider is asked for anything, so a
   daemon that crashes mid-launch finds a PROVISIONING row without an instance and finishes
   the launch (``ServiceController._observe_replica`` calls ``launch_instance`` again);
2. the version's packages — the workdir and local file_mounts, made at ``serve up`` /
   ``serve update`` from what the client uploaded (``spotd.control.sources``) — are staged
   where the instance can read them (``control.packages.stage_packages``: the daemon's own
   store for instances on this machine, Kubernetes and Slurm as for jobs; S3 for AWS), so a
   replica restores the version's code before its setup and run, exactly as a job's node
   does, and never reads the daemon's disk at the user's path;
3. the provider is asked for the instance; a refusal (or a failed upload) ends the replica
   FAILED_PROVISION and backs off launches of that market (``replica_launch.LaunchBackoff``).

A rolling update writes a new version with its own package references: replicas of the new
version restore the new code, those of the old one keep theirs until they are retired.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import structlog

from spotd.config import Settings
from spotd.control.agent_config import AgentFiles
from spotd.control.memory import ServiceMemory
from spotd.control.packages import s3_options, stage_packages, uploaded_event
from spotd.control.ports import PortAllocator
from spotd.control.refusals import InvalidRequest
from spotd.control.replica_launch import (
    LaunchBackoff,
    replica_files,
    replica_instance,
    replica_port,
)
from spotd.control.sources import check_sources, package_files, packed_event
from spotd.files.workdir import BlobStore, PackageError
from spotd.metrics import DaemonMetrics
from spotd.providers.base import Provider, ProviderError
from spotd.serve import hedge, zones
from spotd.serve.replica_state import ReplicaStatus
from spotd.spec import Task
from spotd.store import AsyncStore, ReplicaRow, ServiceRow
from spotd.types import ZoneEventKind

__all__ = ["LaunchOwner", "ReplicaLauncher", "package_service_files"]

log = structlog.get_logger("spotd.control.launcher")

S = ReplicaStatus


async def package_service_files(
    task: Task,
    *,
    settings: Settings,
    packages: Mapping[str, str],
    scope: str | None,
    base: Path,
) -> tuple[Task, list[str]]:
    """The task of a new service version with its workdir and local file_mounts replaced by
    packages (``cas:<sha>``), and a line per package for the service's events.

    The same rules as a job's launch (``control.sources``): what the client uploaded
    (``packages``: "workdir" or a mount target → manifest sha) must be complete in the store;
    any other local source is a path on the daemon's host, which a project token may never
    name (403) and the admin only under ``file_roots``. Refusals raise ``Refused``."""
    cas = settings.cas_dir

    def ship() -> tuple[Task, list[str]]:  # file system work: off the event loop
        uploaded = check_sources(
            task,
            packages=packages,
            scope=scope,
            file_roots=settings.file_roots,
            base=base,
            blobs=BlobStore(cas),
        )
        try:
            shipped, packed = package_files(
                task, base, cas, uploaded=uploaded, file_roots=settings.file_roots
            )
        except PackageError as exc:
            raise InvalidRequest(str(exc)) from exc
        return shipped, [packed_event(what, p)[0] for what, p in packed]

    return await asyncio.to_thread(ship)


class LaunchOwner(Protocol):
    """What launching needs from the service controller."""

    @property
    def providers(self) -> Mapping[str, Provider]: ...

    async def task_version(self, svc: ServiceRow, version: int) -> Task: ...

    async def end(
        self,
        row: ReplicaRow,
        to: ReplicaStatus,
        reason: str,
        now: float,
        *,
        zone_kind: ZoneEventKind | None = None,
    ) -> None: ...


class ReplicaLauncher:
    def __init__(
        self,
        *,
        settings: Settings,
        store: AsyncStore,
        metrics: DaemonMetrics,
        ports: PortAllocator,
        backoff: LaunchBackoff,
        memory: ServiceMemory,
        owner: LaunchOwner,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._ports = ports
        self._backoff = backoff
        self._memory = memory
        self._owner = owner
        self._clock = clock

    async def launch_new(
        self,
        svc: ServiceRow,
        launch: hedge.LaunchSpec,
        place: zones.Placement,
        why: str,
        now: float,
    ) -> bool:
        """Write the replica's intent, then launch its instance. False if the launch failed."""
        provider = launch.zone.provider
        task = await self._owner.task_version(svc, svc.version)
        port = await replica_port(self._ports, self._owner.providers.get(provider), task)
        row = await self._store.create_replica(
            service_id=svc.id,
            version=svc.version,
            provider=provider,
            region=launch.zone.region,
            zone=launch.zone.zone,
            instance_type=place.instance_type,
            market=launch.market,
            price_per_hour=place.price_per_hour,
            port=port,
            token=secrets.token_urlsafe(24),
            now=now,
        )
        log.info(
            "launching replica",
            replica=row.key,
            zone=str(launch.zone),
            market=str(launch.market),
            why=why,
        )
        return await self.launch_instance(svc, row)

    async def launch_instance(self, svc: ServiceRow, row: ReplicaRow) -> bool:
        """Stage the version's packages, then ask the provider for the replica's instance."""
        task = await self._owner.task_version(svc, row.version)
        provider = self._owner.providers.get(row.provider)
        if provider is None:
            await self._owner.end(
                row, S.FAILED_PROVISION, f"provider {row.provider} is not enabled", self._clock()
            )
            return False
        try:
            files = await self._files(svc, row, task, provider)
            spec = replica_instance(
                settings=self._settings,
                provider=provider,
                svc=svc,
                row=row,
                task=task,
                files=files,
            )
            self._metrics.provider_calls.labels(provider.name, "launch").inc()
            iid = await provider.launch(spec)
        except ProviderError as exc:
            self._metrics.provider_errors.labels(provider.name, "launch").inc()
            self._backoff.refused(svc.id, row.market, self._clock())
            await self._owner.end(
                row,
                S.FAILED_PROVISION,
                f"{type(exc).__name__}: {exc}",
                self._clock(),
                zone_kind=ZoneEventKind.LAUNCH_FAILED,
            )
            return False
        self._backoff.launched(svc.id, row.market)
        self._memory.launched(row.key, self._clock())
        await self._store.update_replica_fields(row.key, instance_id=str(iid))
        return True

    async def _files(
        self, svc: ServiceRow, row: ReplicaRow, task: Task, provider: Provider
    ) -> AgentFiles:
        """Where this replica's agent reads its packages; an upload is the service's event."""
        mounts = {remote: m.source for remote, m in task.file_mounts.items()}
        s3 = s3_options(self._owner.providers.values())
        store, up = await stage_packages(
            settings=self._settings,
            provider=provider,
            refs=[task.workdir, *mounts.values()],
            s3=s3,
        )
        if up is not None:
            message, _ = uploaded_event(store, up)
            await self._store.update_service_fields(
                svc.id, now=self._clock(), event=f"replica {row.replica_id}: {message}"
            )
        return replica_files(
            settings=self._settings,
            svc=svc,
            row=row,
            task=task,
            blob_store=store,
            s3_endpoint_url=s3.endpoint_url or "",
        )
