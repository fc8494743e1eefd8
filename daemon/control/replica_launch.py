"""What launching a replica takes besides the provider call: the files its agent stages, its
instance spec (agent config, tags), its port, and the back-off that holds a market's launches
after a refusal (the launch itself: ``control.launcher``).

A refused launch holds back launches of its own market only, for ``launch_backoff`` seconds,
doubling on each refusal in a row up to 60 s: a spot stockout says nothing of on-demand
capacity, which is what the fallback needs then. A success clears it.
"""

from __future__ import annotations

from pathlib import Path

from spotd.config import Settings
from spotd.control.agent_config import (
    AgentFiles,
    AgentIdentity,
    build_agent_config,
    daemon_python_path,
    shares_this_machine,
)
from spotd.control.ports import PortAllocator
from spotd.files.workdir import CAS_PREFIX
from spotd.providers.base import TAG_HOME, TAG_KEY, TAG_REPLICA, InstanceSpec, Provider
from spotd.spec import Task
from spotd.store import ReplicaRow, ServiceRow
from spotd.types import Market

TAG_SERVICE = "spotd-service"
MAX_BACKOFF = 60.0


def replica_files(
    *,
    settings: Settings,
    svc: ServiceRow,
    row: ReplicaRow,
    task: Task,
    blob_store: str,
    s3_endpoint_url: str = "",
) -> AgentFiles:
    """What the replica's agent stages before setup and run: the version's workdir and
    file_mounts packages (``cas:<sha>``, made at ``serve up``/``update``) read from
    ``blob_store``, and bucket mounts. A service stored before services shipped their code
    may still name a directory on this machine as its workdir: it is passed on as it is."""
    workdir = task.workdir
    if workdir and not workdir.startswith(CAS_PREFIX):
        workdir = str(Path(workdir).expanduser())
    return AgentFiles(
        checkpoint_store=str(settings.checkpoints_dir / f"s{svc.id}-r{row.replica_id}"),
        workdir=workdir or None,
        blob_store=blob_store,
        file_mounts={remote: m.source for remote, m in task.file_mounts.items()},
        s3_endpoint_url=s3_endpoint_url,
    )


def replica_instance(
    *,
    settings: Settings,
    provider: Provider,
    svc: ServiceRow,
    row: ReplicaRow,
    task: Task,
    files: AgentFiles,
) -> InstanceSpec:
    """The instance for one replica: one node, its own agent token, the replica's tags."""
    envs = {
        "SPOTD_REPLICA_PORT": str(row.port),
        "SPOTD_REPLICA_ID": str(row.replica_id),
        "SPOTD_SERVICE_NAME": svc.name,
        "SPOTD_SERVICE_VERSION": str(row.version),
        "SPOTD_NODE_IPS": "127.0.0.1",
    }
    if shares_this_machine(provider):
        envs |= daemon_python_path(task)
    who = AgentIdentity(
        instance_key=row.key,
        attempt_id=row.key,
        job_id=0,
        task_id=f"spotd-{settings.home_tag}-s{svc.id}-r{row.replica_id}",
    )
    agent = build_agent_config(
        settings=settings,
        provider=provider,
        task=task,
        who=who,
        token=row.token,
        files=files,
        envs=envs,
    )
    return InstanceSpec(
        key=row.key,
        region=row.region,
        zone=row.zone,
        instance_type=row.instance_type,
        market=row.market,
        tags={
            TAG_HOME: settings.home_tag,
            TAG_REPLICA: row.key,
            TAG_KEY: row.key,
            TAG_SERVICE: str(svc.id),
        },
        agent=agent,
        machine=task.machine(
            provider=row.provider, region=row.region, instance_type=row.instance_type
        ),
    )


async def replica_port(ports: PortAllocator, provider: Provider | None, task: Task) -> int:
    """Replicas that share this machine each get their own port. Elsewhere a replica has its
    machine to itself and serves on the task's port."""
    if provider is None or not shares_this_machine(provider):
        return task.service_port() or 8080
    return await ports.one()


class LaunchBackoff:
    """Per (service, market): until when launches wait, and the current back-off."""

    def __init__(self, initial: float) -> None:
        self._initial = initial
        self._blocked: dict[tuple[int, Market], tuple[float, float]] = {}

    def blocked_until(self, service_id: int, market: Market) -> float:
        return self._blocked.get((service_id, market), (0.0, 0.0))[0]

    def refused(self, service_id: int, market: Market, now: float) -> None:
        _, backoff = self._blocked.get((service_id, market), (0.0, 0.0))
        backoff = min(MAX_BACKOFF, backoff * 2 if backoff else self._initial)
        self._blocked[(service_id, market)] = (now + backoff, backoff)

    def launched(self, service_id: int, market: Market) -> None:
        self._blocked.pop((service_id, market), None)

    def forget(self, service_id: int) -> None:
        for market in Market:
            self._blocked.pop((service_id, market), None)

    def size(self) -> int:
        return len(self._blocked)
