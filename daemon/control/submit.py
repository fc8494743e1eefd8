"""The one launch request: a task submission becomes a ``Plan``, and the plan becomes a job.

Files come from the client: ``spotctl`` and the SDK upload the workdir and local file_mounts
as packages (``spotd.api.files``) and the request names each by its manifest (``packages``:
``workdir`` or the mount's target → sha). A source the request does not name that way is a
path on the daemon's host: refused to a project token, and to the admin unless it resolves
(symlinks followed) under one of the config's ``file_roots`` (none by default), e.g. a project
token's ``workdir: /root/.aws`` is a 403, whatever exists there.

``plan_submission`` does everything that can refuse a launch, in the order a user meets the
problems: the YAML and its one task, ``--infra``, local paths and buckets, ``run`` and no
``service:``, a feasible placement on real capacity (``spotd.pricing.catalog.real_capacity``:
the local provider's simulated types only when asked for or when nothing else is enabled), the
project the caller may launch into, its limits, the deadline. It writes nothing. ``submit``
applies a plan: it packages the files, then stores the job with
``Store.create_job``, which checks the project's limits again and inserts in one
transaction (another launch, on any listener or any daemon sharing the database, may have come
in between), and starts its worker.

A dry run is ``plan_submission`` alone, so the candidates a user is shown are those of the plan
that a launch of the same request applies. Refusals are ``Refused`` exceptions whose class says
what kind of refusal it is; the API maps each class to an HTTP status.

The GPUs a job reserves are counted from its placements (``spotd.control.quota.job_gpus``):
``instance_type: sim-a100-8`` reserves 8 per node though it names no accelerator. Example,
project ``ml`` with quota 8 and a job of ``A100:4`` active: a job of ``A100:2`` × 2 is accepted
(8 of 8); another one is refused by ``plan_submission`` with ``QuotaExceeded`` ("project ml:
GPU quota 8, 8 in use by 2 active jobs; this job asks for 4"), before any of its files is
packaged.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from spotd.config import Settings
from spotd.control import quota
from spotd.control.packages import s3_options
from spotd.control.refusals import (
    InvalidRequest,
    NotPermitted,
    QuotaExceeded,
    Refused,
    UnknownProject,
)
from spotd.control.sources import Uploaded, check_files, check_sources, package_files, packed_event
from spotd.files import mounts as s3src
from spotd.files.storage_buckets import Storage
from spotd.files.storage_s3 import S3Bucket
from spotd.files.workdir import BlobStore, PackageError
from spotd.pricing.catalog import real_capacity
from spotd.providers.allowlist import barred_providers, without_barred
from spotd.providers.base import Provider
from spotd.recovery import placement
from spotd.spec import SpecError, Task, load_tasks_bounded, parse_duration
from spotd.spec.resources import CONTAINER_BACKENDS
from spotd.store import AsyncStore, JobRow, OverQuota
from spotd.types import Candidate, CatalogEntry

__all__ = [
    "InvalidRequest",
    "LaunchRequest",
    "NotPermitted",
    "Plan",
    "QuotaExceeded",
    "Refused",
    "UnknownProject",
    "check_buckets",
    "check_containers",
    "check_files",
    "check_quota",
    "check_runnable",
    "check_sources",
    "launch_project",
    "package_files",
    "parse_deadline",
    "parse_task",
    "place",
    "placeable_catalog",
    "plan_submission",
    "source_refusal",
    "submit",
    "usable_catalog",
    "with_infra",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchRequest:
    """What a client asks for: the task's YAML and how to read it."""

    yaml: str
    filename: str = "<api>"
    name: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    deadline: str | None = None  # ISO-8601 or a duration from now ("6h")
    infra: str | None = None  # replaces resources.infra (`spotctl jobs launch --infra aws`)
    project: str = quota.DEFAULT_PROJECT
    base_dir: str | None = None  # the admin's daemon-host paths: relative ones resolve here
    # the packages the client uploaded: "workdir" or a mount target → the manifest's sha256
    packages: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A launch that passed every check: what ``submit`` stores, and what a dry run shows."""

    task: Task
    name: str | None  # the request's name, else the task's
    project: str
    deadline: float | None
    candidates: tuple[Candidate, ...]  # cheapest first; the job's first attempt takes [0]
    gpus: float  # reserved against the project's quota while the job is active
    base_dir: Path
    now: float
    uploaded: Mapping[str, Uploaded] = field(default_factory=dict)  # by "workdir"/mount target
    file_roots: tuple[Path, ...] = ()  # where the admin's daemon-host sources may be


# -- the pure steps ----------------------------------------------------------------------


async def parse_task(req: LaunchRequest) -> Task:
    """The request's one task, with ``--infra`` applied.

    The YAML is read off the event loop, under the spec's size/alias/depth limits and a time
    limit, so a hostile file costs the daemon a refusal, not its answers to everyone else."""
    try:
        tasks = await load_tasks_bounded(req.filename, text=req.yaml, env_overrides=dict(req.env))
    except SpecError as exc:
        raise InvalidRequest(
            "invalid task YAML",
            [{"path": i.path, "line": i.line, "message": i.message} for i in exc.issues],
        ) from exc
    if len(tasks) != 1:
        raise InvalidRequest(
            f"expected one task, the file has {len(tasks)} (pipelines are not "
            "supported by spotd jobs launch)"
        )
    return with_infra(tasks[0], req.infra) if req.infra else tasks[0]


def with_infra(task: Task, infra: str) -> Task:
    """The task with ``infra`` as its only location: the top level's, and none of its own in
    any ``any_of``/``ordered`` entry. Re-validated, so a bad value is refused naming the flag."""
    data = json.loads(task.model_dump_json(exclude_unset=True))  # unset stays unset: entries
    res = data.setdefault("resources", {})  # still inherit from the top
    for key in ("cloud", "region", "zone"):
        res.pop(key, None)
    res["infra"] = infra
    for key in ("any_of", "ordered"):
        for entry in res.get(key) or []:
            for loc in ("infra", "cloud", "region", "zone"):
                entry.pop(loc, None)
    try:
        return Task.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(f"--infra {infra!r}: {exc.errors()[0]['msg']}") from exc


def check_runnable(task: Task) -> None:
    """A managed job needs ``run``; a task with ``service:`` is a service, not a job, and
    one with ``pool:`` describes a pool's workers."""
    if task.pool is not None:
        raise InvalidRequest(
            "this task has a `pool:` section: create the pool with `spotctl jobs pool apply`, "
            "then queue jobs on it with `spotctl jobs launch --pool NAME`"
        )
    if not task.run:
        raise InvalidRequest("`run` is required for a managed job")
    if task.service is not None:
        raise InvalidRequest("this task has a `service:` section: use `spotctl serve up`")


def check_containers(task: Task, enabled: Collection[str]) -> None:
    """``image_id: docker:IMAGE`` runs only where a provider runs containers (Kubernetes, as
    the pod's image; an option without a provider of its own is placed there): refused,
    naming what would run it, when the task's options name only other providers, or when no
    such provider is enabled. A dry run says the same."""
    images = sorted(task.resources.docker_images())
    if not images:
        return
    asked = {o.provider for o in task.resource_request().options}
    fix = "or drop image_id and install what the image has in `setup`"
    if not asked & {None, *CONTAINER_BACKENDS}:
        names = ", ".join(sorted(str(p) for p in asked))
        raise InvalidRequest(
            f"image_id docker:{images[0]}: {names} runs no containers; only kubernetes "
            f"does (infra: k8s), {fix}"
        )
    if not set(CONTAINER_BACKENDS) & set(enabled):
        raise InvalidRequest(
            f"image_id docker:{images[0]} runs only on kubernetes (as the pod's image), which "
            f"is not enabled (enabled: {', '.join(sorted(enabled))}): enable k8s, {fix}"
        )


def usable_catalog(
    task: Task, catalog: Sequence[CatalogEntry], *, enabled_providers: Collection[str]
) -> list[CatalogEntry]:
    """What the task may be placed on: ``catalog`` less simulated capacity, unless the task
    asks for it or no real provider is enabled (``spotd.pricing.catalog.real_capacity``)."""
    return real_capacity(
        catalog, request=task.resource_request(), enabled_providers=enabled_providers
    )


def placeable_catalog(
    task: Task,
    catalog: Sequence[CatalogEntry],
    project: str,
    *,
    enabled: Collection[str],
    configs: Mapping[str, Mapping[str, Any]],
) -> list[CatalogEntry]:
    """What a placement of ``project``'s ``task`` may choose from, at launch and at every
    relaunch (``spotd.control.jobs``): ``usable_catalog`` less the providers the admin bars
    the project from (``spotd.providers.allowlist``, the config's ``providers`` = ``configs``).
    """
    usable = usable_catalog(task, catalog, enabled_providers=enabled)
    return without_barred(usable, barred_providers(project, configs))


def place(
    task: Task, catalog: Sequence[CatalogEntry], *, enabled_providers: Collection[str]
) -> tuple[Candidate, ...]:
    """Every feasible placement, cheapest first; refused (naming why) when there is none.

    With AWS enabled, ``accelerators: A100:8`` is placed on ``p4d.24xlarge``, never on the
    local provider's ``sim-a100-8``; ``instance_type: sim-t4-1``, which only the local
    provider has, is refused with a message that says so and how to ask for it.
    """
    request = task.resource_request()
    usable = usable_catalog(task, catalog, enabled_providers=enabled_providers)
    cands = placement.candidates(request, usable, num_nodes=task.num_nodes)
    if cands:
        return tuple(cands)
    simulated = placement.candidates(request, catalog, num_nodes=task.num_nodes)
    if simulated:
        types = ", ".join(sorted({c.instance_type for c in simulated}))
        raise InvalidRequest(
            "no feasible placement on real capacity: only the local provider's simulated "
            f"types fit ({types}); to run the job as processes on the daemon's host, say "
            "`infra: local` (or --infra local)"
        )
    reason = placement.explain_infeasible(request, usable)
    raise InvalidRequest(f"no feasible placement: {reason}")


def launch_project(asked: str, scope: str | None) -> str:
    """The project a job goes to: a project token launches only into its own project (asking
    for ``default`` means "mine"); the admin launches wherever it asks."""
    if scope is None:
        return asked
    if asked not in (quota.DEFAULT_PROJECT, scope):
        raise NotPermitted(f"a token of project {scope} cannot launch into project {asked}")
    return scope


def parse_deadline(raw: str, now: float) -> float:
    """A duration from ``now`` ("6h") or an ISO-8601 time (local time when it has no zone)."""
    try:
        return now + parse_duration(raw)
    except (ValueError, TypeError):
        pass
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise InvalidRequest(f"deadline must be a duration (6h) or ISO-8601, got {raw!r}") from exc
    return dt.timestamp() if dt.tzinfo else dt.astimezone().timestamp()


# -- the steps that read -----------------------------------------------------------------


async def check_buckets(
    task: Task, providers: Mapping[str, Provider], scope: str | None = None
) -> None:
    """Refuse s3:// sources whose bucket is missing or unreachable, naming it. A project's
    caller (``scope``) may not name a bucket another project claimed as a storage object,
    nor the daemon's own store of checkpoints and packages: the agent reads a source with
    the daemon's credentials (or the instance role), so this is what stands between one
    project and every bucket those reach (a review read another project's checkpoints so)."""
    sources = [(r, m.source) for r, m in task.file_mounts.items() if s3src.is_s3(m.source)]
    if not sources:
        return
    opts = s3_options(providers.values())
    for remote, url in sources:
        try:
            await s3src.check_source(url, endpoint_url=opts.endpoint_url, profile=opts.profile)
            if scope is not None:
                await _check_owner(remote, url, scope, opts)
        except ImportError as exc:
            raise InvalidRequest(
                f"file_mounts: {remote}: {url}: aioboto3 is not installed "
                "(pip install 'spotd[aws]')"
            ) from exc
        except s3src.S3Error as exc:
            raise InvalidRequest(f"file_mounts: {remote}: {exc}") from exc


def source_refusal(
    bucket: str, project: str, *, owner: str | None, daemon_bucket: str | None
) -> str | None:
    """Why ``project`` may not name ``bucket`` as a plain ``s3://`` source (None: it may).
    ``owner``: the project that claimed it as a storage object (None: none did);
    ``daemon_bucket``: where the daemon keeps every project's checkpoints and packages."""
    if bucket == daemon_bucket:
        return (
            f"bucket {bucket} is the daemon's store of every project's checkpoints and "
            "packages, not a source"
        )
    if owner is not None and owner != project:
        return f"bucket {bucket} belongs to another project"
    return None


async def _check_owner(remote: str, url: str, project: str, opts: s3src.S3Options) -> None:
    name, _ = s3src.split_source(url)
    bucket = S3Bucket(name, endpoint_url=opts.endpoint_url, profile=opts.profile)
    try:
        owner = await Storage.owner(bucket)
    except Exception as exc:  # botocore's ClientError, on a bucket it may not read
        raise InvalidRequest(
            f"file_mounts: {remote}: {url}: cannot read whose bucket {name} is: {exc}"
        ) from exc
    finally:
        await bucket.close()
    store = s3src.split_source(opts.package_store)[0] if opts.package_store else None
    why = source_refusal(name, project, owner=owner, daemon_bucket=store)
    if why is not None:
        raise NotPermitted(f"file_mounts: {remote}: {url}: {why}")


async def check_quota(store: AsyncStore, project: str, ask: quota.Ask) -> None:
    """Refuse a launch that would take ``project`` over its limits (or names no project).

    An early answer, before any file is packaged; ``submit`` decides again, atomically.
    """
    row = await store.get_project(project)
    if row is None:
        if project == quota.DEFAULT_PROJECT:
            return
        raise UnknownProject(f"no project {project!r}: create it with `spotctl project create`")
    refusal = quota.admit(row, await store.project_usage(project), ask)
    if refusal is not None:
        raise QuotaExceeded(refusal.message, refusal.details)


async def plan_submission(
    req: LaunchRequest,
    *,
    scope: str | None,
    catalog: Sequence[CatalogEntry],
    providers: Mapping[str, Provider],
    store: AsyncStore,
    now: float,
    file_roots: Sequence[Path] = (),
    blob_store: Path | None = None,
    provider_configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> Plan:
    """Every check a launch passes, in order; the plan a dry run shows and a launch applies.

    ``scope``: the project a project token limits the caller to (None: the admin).
    ``file_roots``: where the admin's daemon-host sources may be; ``blob_store``: the
    content store (``<home>/cas``) the client's uploads are in; ``provider_configs``: the
    config's ``providers`` section, whose allowlists (``spotd.providers.allowlist``) say which
    projects may run on the operator's own machines (local, slurm): a barred provider's
    capacity is no choice, and a launch that only it could place is a 403 naming the setting.
    """
    task = await parse_task(req)
    base = Path(req.base_dir or ".")
    blobs = None if blob_store is None else BlobStore(blob_store)
    uploaded = await asyncio.to_thread(
        check_sources,
        task,
        packages=req.packages,
        scope=scope,
        file_roots=file_roots,
        base=base,
        blobs=blobs,
    )
    await check_buckets(task, providers, scope)
    check_runnable(task)
    project = launch_project(req.project, scope)
    # every configured provider still counts as enabled for real_capacity: being barred from
    # Slurm must not make the local provider's simulated GPUs a choice
    enabled = set(providers)
    check_containers(task, enabled)
    barred = {
        p: why
        for p, why in barred_providers(project, provider_configs or {}).items()
        if p in enabled
    }
    if barred:
        catalog = without_barred(catalog, barred)
        if not enabled - barred.keys():
            raise NotPermitted("; ".join(barred.values()))
    try:
        cands = place(task, catalog, enabled_providers=enabled)
    except InvalidRequest as exc:
        if barred:  # what is left does not fit: say why the barred providers were no choice
            raise NotPermitted(f"{exc.message}; {'; '.join(barred.values())}") from exc
        raise
    gpus = quota.job_gpus(
        task.resource_request(),
        usable_catalog(task, catalog, enabled_providers=enabled),
        num_nodes=task.num_nodes,
    )
    await check_quota(store, project, quota.Ask(gpus=gpus, nodes=task.num_nodes))
    deadline = (
        parse_deadline(req.deadline, now)
        if req.deadline
        else task.job_recovery.resolve_deadline(now)
    )
    return Plan(
        task=task,
        name=req.name or task.name,
        project=project,
        deadline=deadline,
        candidates=cands,
        gpus=gpus,
        base_dir=base,
        now=now,
        uploaded=uploaded,
        file_roots=tuple(file_roots),
    )


# -- applying a plan ---------------------------------------------------------------------


async def submit(
    plan: Plan,
    *,
    settings: Settings,
    store: AsyncStore,
    start: Callable[[int], None],
) -> JobRow:
    """Store the planned job and ``start`` its worker.

    The project's limits are checked again in the transaction that inserts the job
    (``Store.create_job``), so two launches cannot both take the last GPUs, on
    one listener or across several (an in-process lock could not: it was one per listener, and
    means nothing to a second daemon on the same database).
    """
    try:
        task, packed = await asyncio.to_thread(
            package_files,
            plan.task,
            plan.base_dir,
            settings.cas_dir,
            uploaded=plan.uploaded,
            file_roots=plan.file_roots,
        )
    except PackageError as exc:
        raise InvalidRequest(str(exc)) from exc
    try:
        job = await store.create_job(
            admit=quota.job_admission(gpus=plan.gpus, nodes=task.num_nodes),
            name=plan.name or "job",
            task_id_prefix=f"spotd-{settings.home_tag}-j",
            spec_json=task.model_dump_json(exclude_unset=True),
            spec_redacted_json=json.dumps(task.redacted()),
            resources=task.resources_summary(),
            submitted_at=plan.now,
            project=plan.project,
            deadline=plan.deadline,
            gpus=plan.gpus,
        )
    except OverQuota as exc:
        raise QuotaExceeded(exc.message, exc.details) from exc
    for what, p in packed:
        message, data = packed_event(what, p)
        await store.add_event(
            kind="files.packaged", message=message, now=plan.now, job_id=job.id, data=data
        )
    start(job.id)
    return job
