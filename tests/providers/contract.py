"""The provider contract: what every backend must do, as one suite each provider runs.

A provider's test module defines a ``harness`` fixture returning an object with the
``Harness`` shape below, and a test class that inherits ``ProviderContract``. The suite then
runs the same behaviours against the local provider, moto (AWS), a real Slurm cluster and kmock
(Kubernetes): launch, observe, preempt, terminate, adopt after a daemon restart, and leak
visibility for the reaper.

A capability's behaviours run only where the backend declares it: a backend whose provider is
``AdvanceNotices`` also inherits ``NoticeContract`` (its harness can stage a notice), and
``test_capability_suites_match_what_the_provider_declares`` fails if the two ever disagree —
nothing is skipped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from spotd.providers.base import TAG_HOME, InstanceSpec, ObservedInstance, Provider
from spotd.providers.capabilities import AdvanceNotices
from spotd.types import InstanceId, InstanceState


class Harness(Protocol):
    provider: Provider
    home_tag: str

    def spec(self, key: str) -> InstanceSpec:
        """A launchable spec for this backend, tagged with ``home_tag``."""
        ...

    async def preempt(self, instance_id: InstanceId) -> None:
        """Stage a preemption on the backend's side, without notice."""
        ...

    async def new_provider(self) -> Provider:
        """A fresh provider object over the same backend: what a restarted daemon builds."""
        ...

    async def make_stray(self, key: str) -> InstanceId:
        """An instance tagged as ours that no store knows about (behind spotd's back)."""
        ...


class NoticeHarness(Harness, Protocol):
    """The harness of a backend whose provider declares ``AdvanceNotices``."""

    async def notice(self, instance_id: InstanceId, seconds: float) -> None:
        """Stage an advance interruption notice the way the backend reports one."""
        ...


async def eventually(
    probe: Callable[[], Awaitable[ObservedInstance | None]],
    pred: Callable[[ObservedInstance | None], bool],
    *,
    timeout: float = 30.0,
) -> ObservedInstance | None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await probe()
        if pred(last):
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s; last observation: {last}")


def finder(provider: Provider, key: str) -> Callable[[], Awaitable[ObservedInstance | None]]:
    async def find() -> ObservedInstance | None:
        for o in await provider.list_instances():
            if o.key == key:
                return o
        return None

    return find


ALIVE = (InstanceState.PENDING, InstanceState.RUNNING)


class ProviderContract:
    """Inherit in a provider's test module; needs a ``harness`` fixture."""

    def test_capability_suites_match_what_the_provider_declares(self, harness: Harness) -> None:
        assert isinstance(self, NoticeContract) == isinstance(harness.provider, AdvanceNotices)

    async def test_launch_is_listed_with_tags(self, harness: Harness) -> None:
        spec = harness.spec("c1-a1-n0")
        iid = await harness.provider.launch(spec)
        obs = await eventually(
            finder(harness.provider, spec.key),
            lambda o: o is not None and o.state == InstanceState.RUNNING,
        )
        assert obs is not None and obs.id == iid
        assert obs.tags.get(TAG_HOME) == harness.home_tag
        assert (obs.region, obs.zone) == (spec.region, spec.zone)

    async def test_launch_is_idempotent_by_key(self, harness: Harness) -> None:
        spec = harness.spec("c2-a1-n0")
        first = await harness.provider.launch(spec)
        second = await harness.provider.launch(spec)
        assert first == second
        listed = [o for o in await harness.provider.list_instances() if o.key == spec.key]
        assert len([o for o in listed if o.state in ALIVE]) == 1

    async def test_terminate_is_idempotent(self, harness: Harness) -> None:
        spec = harness.spec("c3-a1-n0")
        iid = await harness.provider.launch(spec)
        await eventually(
            finder(harness.provider, spec.key),
            lambda o: o is not None and o.state == InstanceState.RUNNING,
        )
        await harness.provider.terminate(iid)
        await harness.provider.terminate(iid)
        await eventually(
            finder(harness.provider, spec.key),
            lambda o: o is None or o.state not in (*ALIVE, InstanceState.NOTICE),
        )

    async def test_preemption_is_observed(self, harness: Harness) -> None:
        spec = harness.spec("c4-a1-n0")
        iid = await harness.provider.launch(spec)
        await eventually(
            finder(harness.provider, spec.key),
            lambda o: o is not None and o.state == InstanceState.RUNNING,
        )
        await harness.preempt(iid)
        obs = await eventually(
            finder(harness.provider, spec.key),
            lambda o: o is None or o.state in (InstanceState.PREEMPTED, InstanceState.TERMINATED),
        )
        # gone from the listing, or listed as reclaimed: either is provider-side evidence
        assert obs is None or obs.state in (InstanceState.PREEMPTED, InstanceState.TERMINATED)

    async def test_restarted_daemon_adopts_running_instances(self, harness: Harness) -> None:
        spec = harness.spec("c6-a1-n0")
        iid = await harness.provider.launch(spec)
        await eventually(
            finder(harness.provider, spec.key),
            lambda o: o is not None and o.state == InstanceState.RUNNING,
        )
        fresh = await harness.new_provider()
        try:
            obs = await eventually(
                finder(fresh, spec.key),
                lambda o: o is not None and o.state == InstanceState.RUNNING,
            )
            assert obs is not None and obs.id == iid
            assert await fresh.launch(spec) == iid  # re-launching the intent finds it
        finally:
            await fresh.close()

    async def test_stray_instances_are_visible_for_the_reaper(self, harness: Harness) -> None:
        iid = await harness.make_stray("c7-a1-n0")
        obs = await eventually(
            finder(harness.provider, "c7-a1-n0"), lambda o: o is not None and o.state in ALIVE
        )
        assert obs is not None and obs.id == iid and obs.tags.get(TAG_HOME) == harness.home_tag
        await harness.provider.terminate(iid)
        await eventually(
            finder(harness.provider, "c7-a1-n0"), lambda o: o is None or o.state not in ALIVE
        )


class NoticeContract:
    """Inherit beside ``ProviderContract`` where the provider declares ``AdvanceNotices``."""

    async def test_notice_is_observed_with_a_deadline(self, harness: NoticeHarness) -> None:
        spec = harness.spec("c5-a1-n0")
        iid = await harness.provider.launch(spec)
        await eventually(
            finder(harness.provider, spec.key),
            lambda o: o is not None and o.state == InstanceState.RUNNING,
        )
        await harness.notice(iid, 30)
        obs = await eventually(
            finder(harness.provider, spec.key),
            lambda o: o is not None and o.state == InstanceState.NOTICE,
        )
        assert obs is not None and obs.notice_deadline is not None
        assert obs.notice_deadline > time.time()
