"""Each listener of a provider's listing runs on every listing, whatever another one raised:
the services' reaper is the listener after the jobs', and a failure at one instance in the
jobs' one stopped it, round after round."""

from __future__ import annotations

from spotd.control.observer import FleetObserver, Observation
from spotd.metrics import DaemonMetrics
from tests.factories import QuietProvider


async def test_a_listener_that_raises_does_not_starve_the_next() -> None:
    observer = FleetObserver(
        providers={"local": QuietProvider()}, home_tag="h", metrics=DaemonMetrics()
    )
    heard: list[str] = []

    async def jobs(name: str, before: Observation, now: Observation) -> None:
        heard.append("jobs")
        raise RuntimeError("one instance the provider would not terminate")

    async def services(name: str, before: Observation, now: Observation) -> None:
        heard.append("services")

    observer.listen(jobs)
    observer.listen(services)
    for _ in range(2):
        await observer.observe_once("local")
    assert heard == ["jobs", "services"] * 2
