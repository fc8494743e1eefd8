"""What a provider can do beyond the Provider protocol, each as a small Protocol.

A provider declares a capability by having its members; callers ask with ``isinstance`` against
these runtime-checkable Protocols, never with ``getattr`` or by a provider's name. The contract
suite (tests/providers) runs a capability's tests for exactly the backends that declare it.

- ``AgentEndpoint``: instances run spotd's agent, which must be told where the daemon is and
  where the provider's interruption notices come from (AWS, Kubernetes, Slurm; the local
  provider's agents use the daemon's unix socket and read notices from files).
- ``PackageStore``: workdirs and mounts travel through a store the instance can read (an
  ``s3://`` prefix on AWS), which the daemon reaches with the provider's own S3 settings.
- ``Chaos``: the test controls of a provider whose instances we own end to end (the local
  provider): reclaim one like a spot market would, kill it, cut it off, or stock out a region.
- ``Disableable``: a configured backend that can be present but switched off, with the reason
  (AWS without credentials).
- ``AdvanceNotices``: the provider's own listing reports an instance in NOTICE, with a deadline,
  before it goes (Kubernetes: a DisruptionTarget condition or a terminating pod; local: a chaos
  notice). On AWS and Slurm the notice reaches only the agent on the instance (the metadata
  service, a signal), so their listings never say NOTICE and they do not declare it.

- ``SpotPriceFeed``: the provider quotes its spot market, the newest price per (region, zone,
  instance type) (AWS: ``DescribeSpotPriceHistory``; local: a seeded price walk). The daemon
  lays the quotes over the catalog it places with (``spotd.pricing.live``).
  ``FixedSpotPrices`` is the fake beside it.

Which backend declares which is a table in tests/providers/test_capabilities.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from spotd.types import CatalogEntry, Market


@runtime_checkable
class AgentEndpoint(Protocol):
    """Instances whose agents must be told how to reach the daemon and the notice source."""

    @property
    def daemon_url(self) -> str | None:
        """The daemon's TCP API as agents reach it; None: the daemon's unix socket."""
        ...

    @property
    def notice_url(self) -> str:
        """Where the agent polls for interruption notices ('' when notices come otherwise)."""
        ...


@dataclass(frozen=True, slots=True)
class ObjectStore:
    """How the daemon's own S3 client reaches a provider's object store.

    The daemon uploads packages there, and reads ``s3://`` mount sources, with the endpoint and
    credential profile the provider is configured with (moto or LocalStack in tests).
    """

    endpoint_url: str | None = None  # None: AWS itself
    profile: str | None = None  # None: the standard credential chain
    package_store_url: str | None = None  # s3://bucket/prefix, or None: packages stay local


@runtime_checkable
class PackageStore(Protocol):
    """Workdirs and mount sources travel to instances through an object store."""

    @property
    def package_store_url(self) -> str | None:
        """An ``s3://bucket/prefix`` the instances can read, or None when none is configured."""
        ...

    @property
    def object_store(self) -> ObjectStore:
        """The store as the daemon's S3 client reaches it."""
        ...


@runtime_checkable
class Chaos(Protocol):
    """Test controls over instances this daemon owns end to end."""

    def preempt(self, instance_id: str, *, notice_seconds: float | None = None) -> None:
        """Reclaim it like a spot market would: after an advance notice, or at once."""
        ...

    def kill(self, instance_id: str) -> None:
        """The machine vanishes with no notice at all."""
        ...

    def partition(self, instance_id: str, *, seconds: float) -> None:
        """It keeps running, but the daemon stops hearing from it for ``seconds``."""
        ...

    def stockout(self, region: str, *, seconds: float, market: Market | None = None) -> None:
        """Launches in ``region`` (of one market, or both) fail for ``seconds``; 0 ends it."""
        ...


@runtime_checkable
class Disableable(Protocol):
    """A configured backend that may be switched off; the reason is shown to the operator."""

    @property
    def disabled_reason(self) -> str | None: ...

    @property
    def snapshot(self) -> Sequence[CatalogEntry]:
        """What it would offer when enabled (its packaged catalog), shown while it is off."""
        ...


@runtime_checkable
class AdvanceNotices(Protocol):
    """The listing itself reports NOTICE (with ``notice_deadline``) before an instance goes."""

    @property
    def notice_source(self) -> str:
        """Where the listing's notices come from, in the operator's words."""
        ...


SpotQuotes = Mapping[tuple[str, str, str], float]  # (region, zone, instance type) -> USD/h


@runtime_checkable
class SpotPriceFeed(Protocol):
    """The provider quotes its spot market."""

    async def spot_quotes(self, types_by_region: Mapping[str, set[str]]) -> SpotQuotes:
        """The newest spot price of each of ``types_by_region[region]`` in each zone."""
        ...


class FixedSpotPrices:
    """A ``SpotPriceFeed`` for tests: it answers what ``quotes`` holds when asked (change it
    between calls), limited to the regions and types asked for; ``calls`` counts the asks."""

    def __init__(self, quotes: SpotQuotes | None = None) -> None:
        self.quotes: dict[tuple[str, str, str], float] = dict(quotes or {})
        self.calls = 0

    async def spot_quotes(self, types_by_region: Mapping[str, set[str]]) -> SpotQuotes:
        self.calls += 1
        return {
            k: v
            for k, v in self.quotes.items()
            if k[0] in types_by_region and k[2] in types_by_region[k[0]]
        }
