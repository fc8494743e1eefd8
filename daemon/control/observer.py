"""One batched listing per provider, shared by the job controller and the service controller.

Every ``observe_interval`` seconds the observer asks each provider once for every instance it
holds, keeps the part tagged with this daemon's home, and hands the new listing, with the one
before it, to each listener in turn (the job controller reaps and wakes jobs; the service
controller wakes services and reaps stray replicas). Nobody else lists a provider, and nobody
reads another controller's copy of a listing: they read ``latest(provider)`` here.

A listing is a snapshot taken at ``started_at``. An instance created before that moment and
absent from it is gone; one created after it simply is not covered yet (``Observation.covers``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import structlog

from spotd.clock import wall
from spotd.metrics import DaemonMetrics
from spotd.providers.base import TAG_HOME, ObservedInstance, Provider, ProviderError

log = structlog.get_logger("spotd.control.observer")

# a listing must begin this long after an instance was created to count as covering it
COVER_SLACK = 0.5


@dataclass(frozen=True, slots=True)
class Observation:
    """The latest batched listing of one provider."""

    started_at: float = 0.0  # when the listing call began
    instances: Mapping[str, ObservedInstance] = field(default_factory=dict)  # by key

    def covers(self, created_at: float) -> bool:
        """Whether an instance created at ``created_at`` should appear in this listing."""
        return self.started_at > created_at + COVER_SLACK


def changed_keys(previous: Observation, current: Observation) -> set[str]:
    """Keys that appeared, changed state, or disappeared between two listings."""
    before, now = previous.instances, current.instances
    moved = {k for k, o in now.items() if k not in before or before[k].state != o.state}
    return moved | (set(before) - set(now))


# provider name, the listing before, the new listing
Listener = Callable[[str, Observation, Observation], Awaitable[None]]


class FleetObserver:
    """Owns the providers' listings; see the module docstring."""

    def __init__(
        self,
        *,
        providers: Mapping[str, Provider],
        home_tag: str,
        metrics: DaemonMetrics,
        clock: Callable[[], float] = wall,
    ) -> None:
        self.providers = dict(providers)
        self._home_tag = home_tag
        self._metrics = metrics
        self._clock = clock
        self._latest: dict[str, Observation] = {p: Observation() for p in self.providers}
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        """Call ``listener`` after every new listing, in the order listeners were added."""
        self._listeners.append(listener)

    def latest(self, provider: str) -> Observation | None:
        """The newest listing of ``provider`` (None: no such provider is enabled)."""
        return self._latest.get(provider)

    async def observe_once(self, provider_name: str) -> None:
        provider = self.providers[provider_name]
        started = self._clock()
        t0 = time.perf_counter()
        try:
            listed = await provider.list_instances()
        except ProviderError as exc:
            self._metrics.provider_errors.labels(provider_name, "list").inc()
            log.warning("listing failed", provider=provider_name, error=str(exc))
            return
        finally:
            self._metrics.provider_calls.labels(provider_name, "list").inc()
        ours = {o.key: o for o in listed if o.tags.get(TAG_HOME) == self._home_tag}
        previous = self._latest[provider_name]
        current = Observation(started_at=started, instances=ours)
        self._latest[provider_name] = current
        for listener in self._listeners:
            try:
                await listener(provider_name, previous, current)
            except Exception:  # one listener's failure must not starve the next (the services')
                log.exception("a listing's listener failed", provider=provider_name)
        self._metrics.reconcile_seconds.observe(time.perf_counter() - t0)

    def find(self, key_or_id: str) -> tuple[Provider, ObservedInstance] | None:
        """The listed instance with this key or provider id, and its provider."""
        for name, obs in self._latest.items():
            for o in obs.instances.values():
                if key_or_id in (o.id, o.key):
                    return self.providers[name], o
        return None

    def tagged(self, tag: str, value: str) -> list[tuple[Provider, ObservedInstance]]:
        """Every listed instance whose ``tag`` is ``value``, ordered by key."""
        out = [
            (self.providers[name], o)
            for name, obs in self._latest.items()
            for o in obs.instances.values()
            if o.tags.get(tag) == value
        ]
        return sorted(out, key=lambda po: po[1].key)
