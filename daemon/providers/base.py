"""The one narrow interface every backend implements.

Desired state (``InstanceSpec``) and observed state (``ObservedInstance``) are kept apart, the
way kubernetes/autoscaler keeps ``TargetSize`` apart from ``Nodes()``. Every method is async and
idempotent: ``launch`` keyed by ``spec.key`` (an EC2 ClientToken, a pod name, a pid file),
``terminate`` of a gone instance is a no-op. Failures are exception classes, so that policies
branch on types, never on message text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from spotd.spec.resources import MachineAsk
from spotd.types import AgentConfig, CatalogEntry, InstanceId, InstanceState, Market

TAG_PREFIX = "spotd-"
TAG_HOME = "spotd-home"  # which daemon (data directory) owns the instance
TAG_JOB = "spotd-job"
TAG_ATTEMPT = "spotd-attempt"
TAG_NODE = "spotd-node"
TAG_KEY = "spotd-key"
TAG_REPLICA = "spotd-replica"
TAG_PROJECT = "spotd-project"  # whose job: on the local provider, who it runs as


class ProviderError(Exception):
    """Base of every classified provider failure."""


class CapacityUnavailable(ProviderError):
    """The zone has no capacity of that type in that market right now (a stock-out)."""


class QuotaExceeded(ProviderError):
    """An account or project limit forbids the request."""


class Preempted(ProviderError):
    """The instance was reclaimed while we were acting on it."""


class InvalidRequest(ProviderError):
    """The request can never succeed as written (unknown type, bad image...)."""


class ProviderUnavailable(ProviderError):
    """The provider's API could not be reached or answered with a server error."""


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """A request for one instance: one node of one attempt (or one replica); ``machine`` is
    what the task asks of it beyond the type (disk, network, image, labels: ``Task.machine``)."""

    key: str  # idempotency key, unique per node of an attempt: "j3-a2-n0"
    region: str
    zone: str
    instance_type: str
    market: Market
    tags: Mapping[str, str]
    agent: AgentConfig
    machine: MachineAsk = field(default_factory=MachineAsk)


@dataclass(frozen=True, slots=True)
class ObservedInstance:
    """What the provider reports about one of our tagged instances."""

    id: InstanceId
    key: str
    region: str
    zone: str
    state: InstanceState
    tags: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""  # provider's own words: "Server.SpotInstanceTermination", "exited"
    notice_deadline: float | None = None  # epoch seconds when a NOTICE instance goes away
    address: str = "127.0.0.1"


@runtime_checkable
class Provider(Protocol):
    """A place instances come from."""

    name: str

    def catalog(self) -> Sequence[CatalogEntry]:
        """Instance types with prices that this provider can launch (no I/O)."""
        ...

    async def launch(self, spec: InstanceSpec) -> InstanceId:
        """Create the instance, or return the existing one for ``spec.key``.

        Raises CapacityUnavailable, QuotaExceeded, InvalidRequest or ProviderUnavailable.
        """
        ...

    async def list_instances(self) -> Sequence[ObservedInstance]:
        """Every instance tagged as ours, in one batched call per region."""
        ...

    async def terminate(self, instance_id: InstanceId) -> None:
        """Terminate the instance; a no-op if it is already gone."""
        ...

    async def close(self) -> None:
        """Release clients and sessions."""
        ...
