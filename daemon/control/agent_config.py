"""The one place an ``AgentConfig`` is built, for a job's node and for a service replica alike.

What differs between the two is said by the caller, in two small records: who the agent is
(``AgentIdentity``) and which files it stages (``AgentFiles``). Everything else — the task's
programs and environment, where the daemon and the notices are, the daemon's timings — comes
from the task, the provider's capabilities and the settings here, so the two cannot drift.

Where the agent reports: the agents' listener, which serves only the agent routes. A provider
that declares ``AgentEndpoint`` has instances that cannot reach our unix sockets: they call the
agents' TCP listener when one is configured (``agent_url``, or ``agent_host:agent_port``), else
the provider's own ``daemon_url``. Any other provider's instances run on this machine and use
the agents' socket ``agent.sock`` (and a replica there gets the daemon's Python first on
``PATH``). An agent
that calls an https ``daemon_url`` is handed the CA of the daemon's certificate (``tls_ca``),
so it verifies whom it reports to (and sends its token) with no system trust store involved.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from spotd.config import Settings
from spotd.files.storage import STORAGE_REF
from spotd.providers.base import Provider
from spotd.providers.capabilities import AgentEndpoint
from spotd.spec import Task
from spotd.types import AgentConfig


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """Who an agent is; the program sees these as ``SPOTD_JOB_ID``, ``SPOTD_TASK_ID``, ..."""

    instance_key: str  # the instance's idempotency key ("j3-a2-n0", "s1-r4")
    attempt_id: str  # a job's attempt; a replica is its own single attempt (its key)
    job_id: int  # 0 for a service replica: it belongs to no job
    task_id: str  # stable across a job's attempts
    attempt: int = 1
    node_rank: int = 0
    num_nodes: int = 1


@dataclass(frozen=True, slots=True)
class AgentFiles:
    """What the agent stages before the program starts, and where its checkpoints go."""

    checkpoint_store: str
    workdir: str | None = None  # "cas:<sha>" (a package) or a directory on this machine
    blob_store: str = ""  # the package store the refs are read from
    file_mounts: Mapping[str, str] = field(default_factory=dict)
    s3_endpoint_url: str = ""
    await_final_from: int = 0  # a predecessor still checkpointing after a notice (0: none)
    await_final_until: float = 0.0


@runtime_checkable
class BootstrapsAgents(Protocol):
    """A provider whose instances fetch their config from the daemon once, with a one-time
    bootstrap token, instead of finding it in what the provider hands them (AWS: user-data is
    readable for the instance's whole life). The daemon holds the config as the instance runs
    it (``held_config``) until the agent takes it (``POST /agent/v1/bootstrap``)."""

    def instance_agent(self, agent: AgentConfig) -> AgentConfig:
        """The config as the agent runs it on this provider's instances."""
        ...


def held_config(provider: Provider, agent: AgentConfig) -> str | None:
    """The JSON the daemon holds for the agent's bootstrap; None: the provider hands the
    config over itself."""
    if not isinstance(provider, BootstrapsAgents):
        return None
    return json.dumps(asdict(provider.instance_agent(agent)))


def shares_this_machine(provider: Provider) -> bool:
    """Instances that reach the daemon's unix socket run here (the local provider)."""
    return not isinstance(provider, AgentEndpoint)


def daemon_python_path(task: Task) -> dict[str, str]:
    """``PATH`` with the daemon's Python first, unless the task sets its own ``PATH``: on this
    machine a program that runs ``python -m spotd...`` then finds the daemon's spotd."""
    if "PATH" in task.envs or "PATH" in task.secrets:
        return {}
    bindir = str(Path(sys.executable).parent)
    return {"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def agent_listener_url(settings: Settings) -> str | None:
    """Where remote agents reach the agents' TCP listener, None when there is none."""
    if settings.agent_url:
        return settings.agent_url
    if not (settings.agent_host and settings.agent_port):
        return None
    if settings.agent_host in ("0.0.0.0", "::"):  # every interface: no address to hand out
        return None
    scheme = "https" if settings.tls_cert is not None else "http"
    host = f"[{settings.agent_host}]" if ":" in settings.agent_host else settings.agent_host
    return f"{scheme}://{host}:{settings.agent_port}"


def endpoints(provider: Provider, settings: Settings) -> tuple[str, str]:
    """(where the agent calls the daemon, where it polls for notices)."""
    local = f"unix:{settings.agent_socket_path}"
    listener = agent_listener_url(settings)
    if isinstance(provider, AgentEndpoint):
        return listener or provider.daemon_url or local, provider.notice_url or ""
    if settings.ha and listener:  # several daemons: through what is in front of them all,
        return listener, ""  # not this one's socket (its agents would go silent with it)
    return local, ""


def daemon_ca_pem(settings: Settings, daemon_url: str) -> str:
    """The CA an agent checks the daemon's certificate against: ``tls_ca``'s PEM text when the
    agent calls the daemon over https (a certificate is public: it may travel in user-data);
    "" otherwise (a unix socket or plain http has no certificate, and an https URL without
    ``tls_ca`` is verified against the instance's system trust store)."""
    if not daemon_url.startswith("https://") or settings.tls_ca is None:
        return ""
    return settings.tls_ca.read_text()


def with_storage_refs(task: Task, mounts: Mapping[str, str]) -> dict[str, str]:
    """``mounts`` with each storage object's remote path marked ``STORAGE_REF``: the agent
    asks the daemon for those (``spotd.agent.storage``) instead of copying them."""
    out = dict(mounts)
    for remote, mount in task.file_mounts.items():
        if mount.is_storage_object:
            out[remote] = STORAGE_REF
    return out


def gpus_per_node(task: Task) -> float:
    """The most accelerators any of the task's resource options asks for."""
    return max((o.accelerator_count for o in task.resource_request().options), default=0)


def build_agent_config(
    *,
    settings: Settings,
    provider: Provider,
    task: Task,
    who: AgentIdentity,
    token: str,
    files: AgentFiles,
    envs: Mapping[str, str] | None = None,
) -> AgentConfig:
    """The agent's config: the task's envs and secrets, then ``envs`` (spotd's own names).

    A service's client API keys (the variable its ``api_keys_env`` names) are the load
    balancer's to check, never the replicas' to read: that variable is left out."""
    env = dict(task.envs) | dict(task.secrets) | dict(envs or {})
    keys_env = task.service.api_keys_env if task.service is not None else None
    if keys_env:
        env.pop(keys_env, None)
    daemon_url, notice_url = endpoints(provider, settings)
    return AgentConfig(
        instance_key=who.instance_key,
        attempt_id=who.attempt_id,
        job_id=who.job_id,
        task_id=who.task_id,
        attempt=who.attempt,
        node_rank=who.node_rank,
        num_nodes=who.num_nodes,
        setup=task.setup,
        run=task.run,
        envs=env,
        secret_names=tuple(task.secrets),
        num_gpus_per_node=gpus_per_node(task),
        daemon_url=daemon_url,
        daemon_ca_pem=daemon_ca_pem(settings, daemon_url),
        notice_url=notice_url,
        token=token,
        checkpoint_store=files.checkpoint_store,
        checkpoint_sync_seconds=settings.checkpoint_sync_seconds,
        heartbeat_seconds=settings.heartbeat_seconds,
        term_grace_seconds=settings.term_grace_seconds,
        workdir=files.workdir,
        blob_store=files.blob_store,
        file_mounts=with_storage_refs(task, files.file_mounts),
        s3_endpoint_url=files.s3_endpoint_url,
        await_final_from=files.await_final_from,
        await_final_until=files.await_final_until,
    )
