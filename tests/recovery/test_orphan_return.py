"""A return to spot that a stop interrupted, in a job that then ended another way (it finished,
or was cancelled, at the first step after the restart, so the DEADLINE controller never ran
to finish the return): the reaper ends the spot attempt and terminates its instance
(``Attempts.reap``), where it used to run, billed, until someone noticed."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotd.config import load_settings
from spotd.control.attempts import Attempts
from spotd.metrics import DaemonMetrics
from spotd.providers.base import (
    InstanceId,
    ObservedInstance,
    ProviderError,
)
from spotd.store import AsyncStore
from spotd.types import AttemptStatus, EndReason, InstanceState, JobStatus
from tests.factories import QuietProvider, intent
from tests.recovery.test_deadline_progress import _running_on_demand


def _attempts(db: AsyncStore, tmp_path: Path, provider: QuietProvider) -> Attempts:
    """The job side's attempts on ``provider`` alone, at t = 10 s."""
    return Attempts(
        settings=load_settings(tmp_path, env={}),
        store=db,
        providers={"local": provider},
        metrics=DaemonMetrics(),
        clock=lambda: 10.0,
    )


@pytest.mark.parametrize("recorded", [True, False], ids=["id-recorded", "answer-in-flight"])
@pytest.mark.parametrize("ended", [JobStatus.SUCCEEDED, JobStatus.CANCELLED])
async def test_a_return_left_by_a_stop_in_a_job_that_ended_is_reaped(
    store: AsyncStore,
    tmp_path: Path,
    recorded: bool,
    ended: JobStatus,
) -> None:
    job, od = await _running_on_demand(store, deadline=10_000.0)
    spot = await store.create_attempt(intent(job.id, 2, now=3.0))
    key = f"j{job.id}-a2-n0"
    if recorded:  # else the daemon stopped before the provider's answer was written
        await store.set_instance_id(key, "i-spot", now=4.0)
    provider = QuietProvider()
    attempts = _attempts(store, tmp_path, provider)
    # the job ends as a worker ends it: its attempt first, then the job
    end = EndReason.SUCCEEDED if ended == JobStatus.SUCCEEDED else EndReason.CANCELLED
    await attempts.end(od.id, end, "its run ended", 5.0)
    await store.transition_job(
        job.id, from_=[JobStatus.RUNNING], to=ended, reason="x", now=5.0, ended_at=5.0
    )
    for _ in range(2):  # an unrecorded id is found by its key at the next listing
        state = InstanceState.TERMINATED if provider.terminated else InstanceState.RUNNING
        seen = ObservedInstance(id=InstanceId("i-spot"), key=key, region="r", zone="z", state=state)
        await attempts.reap("local", {key: seen})
    assert provider.terminated == ["i-spot"]
    row = await store.require_attempt(spot.id)
    assert (row.status, row.end_reason) == (AttemptStatus.ENDED, EndReason.CANCELLED)
    assert row.end_detail == "the job ended before this attempt was handed it"
    assert (await store.require_instance(key)).terminated
    assert (await store.require_attempt(od.id)).end_reason == end  # the first reason stands


class _Protected(QuietProvider):
    """One instance the provider will not terminate (EC2's termination protection, an IAM
    tag condition): ``terminate`` raises for it, as the AWS provider's calls do."""

    def __init__(self, protected: str) -> None:
        super().__init__()
        self.protected, self.refused = protected, 0

    async def terminate(self, instance_id: InstanceId) -> None:
        if instance_id == self.protected:
            self.refused += 1
            raise ProviderError("OperationNotPermitted: termination protection is on")
        await super().terminate(instance_id)


async def test_an_instance_the_provider_will_not_terminate_does_not_stop_the_reaping(
    store: AsyncStore,
    tmp_path: Path,
) -> None:
    """Before, the refusal raised out of the reap: every instance after it, round after round,
    stayed up and billed (and a daemon whose first reap met it did not start)."""
    provider = _Protected("i-protected")
    attempts = _attempts(store, tmp_path, provider)
    running = InstanceState.RUNNING
    listed = {  # two strays tagged as this daemon's, unknown to its store
        k: ObservedInstance(id=InstanceId(i), key=k, region="r", zone="z", state=running)
        for k, i in (("j90-a1-n0", "i-protected"), ("j91-a1-n0", "i-leak"))
    }
    await attempts.reap("local", listed)
    assert provider.terminated == ["i-leak"] and provider.refused == 1
    await attempts.reap("local", {"j90-a1-n0": listed["j90-a1-n0"]})
    assert provider.refused == 2  # tried again at the next round
