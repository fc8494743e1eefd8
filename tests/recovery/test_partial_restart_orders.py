"""The daemon's side of a gang restart: who is told to stop, and when every node may go."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from spotd.config import load_settings
from spotd.control import node_replace
from spotd.control.jobs import Controller
from spotd.control.observer import Observation
from spotd.metrics import DaemonMetrics
from spotd.providers.base import ObservedInstance
from spotd.providers.local import LocalProvider
from spotd.recovery.detection import Verdict, VerdictKind
from spotd.recovery.watch import NodeReport
from spotd.store import AsyncStore, Store
from spotd.types import AttemptStatus, InstanceId, InstanceState, JobStatus
from tests.factories import intent

NOW = 1_800_000_000.0


@pytest.fixture
async def ctl(tmp_path: Path) -> AsyncIterator[Controller]:
    store = AsyncStore(Store.open(f"sqlite:///{tmp_path / 'state.db'}"))
    local = LocalProvider(tmp_path / "local", [])
    yield Controller(
        settings=load_settings(tmp_path, env={}),
        store=store,
        providers={"local": local},
        metrics=DaemonMetrics(),
    )
    await store.close()


async def _running_gang(ctl: Controller, nodes: int) -> tuple[int, str]:
    store = ctl.store
    job = await store.create_job(
        name="gang",
        task_id_prefix="t",
        spec_json="{}",
        spec_redacted_json="{}",
        resources="",
        submitted_at=NOW,
    )
    await store.create_attempt(
        intent(
            job.id,
            nodes=nodes,
            now=NOW,
            region="local-east",
            zone="local-east-a",
            instance_type="cpu",
            price_per_hour=0.1,
        )
    )
    await store.transition_job(
        job.id, from_=[JobStatus.PENDING], to=JobStatus.STARTING, reason="placed", now=NOW
    )
    for r in range(nodes):
        await store.record_heartbeat(
            f"j{job.id}-a1-n{r}", now=NOW, phase="run", exit_code=None, notice_deadline=None
        )
    return job.id, f"j{job.id}-a1"


def _reports(aid: str, lost: int, nodes: int) -> list[NodeReport]:
    return [
        NodeReport(
            key=f"{aid}-n{r}",
            node_rank=r,
            phase="run",
            reported=True,
            verdict=Verdict(VerdictKind.PREEMPTED if r == lost else VerdictKind.HEALTHY, "why"),
        )
        for r in range(nodes)
    ]


async def test_survivors_stop_first_and_every_node_goes_together(ctl: Controller) -> None:
    store, losses = ctl.store, ctl.losses
    jid, aid = await _running_gang(ctl, 3)
    assert await losses.order_for(await store.require_instance(f"{aid}-n0"), 0, "run") is None
    job, attempt = await store.require_job(jid), await store.require_attempt(aid)
    assert await losses.replace(job, attempt, _reports(aid, 1, 3), NOW + 1)
    assert (await store.require_job(jid)).status == JobStatus.STARTING
    assert (await store.require_attempt(aid)).status == AttemptStatus.PROVISIONING
    new = await store.require_instance(f"{aid}-n1-g1")
    assert new.instance_id is None  # the intent: the job worker launches it
    assert (await store.require_instance(f"{aid}-n1")).terminated

    async def order(key: str, generation: int, phase: str) -> dict[str, object] | None:
        await store.record_heartbeat(
            key, now=NOW + 2, phase=phase, exit_code=None, notice_deadline=None
        )
        return await losses.order_for(await store.require_instance(key), generation, phase)

    # a survivor still running generation 0 is told to stop, never to go
    stop = await order(f"{aid}-n0", 0, "run")
    assert stop == {
        "generation": 1,
        "num_nodes": 3,
        "node_ips": "\n".join(["127.0.0.1"] * 3),
        "go": False,
    }
    # the replacement, booting, hears nothing; waiting while node 2 still runs: no go
    assert await order(f"{aid}-n1-g1", 1, "setup") is None
    assert await order(f"{aid}-n0", 1, "waiting") == {**stop, "go": False}
    assert await order(f"{aid}-n1-g1", 1, "waiting") == {**stop, "go": False}
    # the last one to stop makes every waiting node go
    assert await order(f"{aid}-n2", 1, "waiting") == {**stop, "go": True}
    assert await order(f"{aid}-n1-g1", 1, "waiting") == {**stop, "go": True}
    # a node already running the new generation is left alone; the others may still go
    assert await order(f"{aid}-n1-g1", 1, "run") is None
    assert await order(f"{aid}-n0", 1, "waiting") == {**stop, "go": True}


async def test_a_single_node_job_is_never_partially_recovered(ctl: Controller) -> None:
    jid, aid = await _running_gang(ctl, 1)
    job, attempt = await ctl.store.require_job(jid), await ctl.store.require_attempt(aid)
    assert not await ctl.losses.replace(job, attempt, _reports(aid, 0, 1), NOW + 1)
    assert (await ctl.store.require_job(jid)).status == JobStatus.STARTING  # untouched here


async def test_the_first_run_goes_when_every_node_waits_and_has_an_address(
    ctl: Controller,
) -> None:
    """Generation 0 of a gang: ``go`` with the listing's addresses once every node waits and
    is listed with an address (an EC2 instance has none until its interface is up)."""
    store, losses = ctl.store, ctl.losses
    _, aid = await _running_gang(ctl, 2)
    keys = [f"{aid}-n0", f"{aid}-n1"]
    for k in keys:
        await store.record_heartbeat(
            k, now=NOW, phase="setup", exit_code=None, notice_deadline=None
        )

    def listing(addresses: dict[str, str]) -> None:
        observed = {
            k: ObservedInstance(
                id=InstanceId(f"i-{k}"),
                key=k,
                region="r",
                zone="z",
                state=InstanceState.RUNNING,
                address=a,
            )
            for k, a in addresses.items()
        }
        ctl.observer._latest["local"] = Observation(instances=observed)

    async def order(key: str, phase: str) -> dict[str, object] | None:
        await store.record_heartbeat(
            key, now=NOW, phase=phase, exit_code=None, notice_deadline=None
        )
        return await losses.order_for(await store.require_instance(key), 0, phase)

    listing({keys[0]: "10.0.0.5", keys[1]: ""})  # node 1 has no address yet
    assert await order(keys[0], "run") is None  # a node not waiting is told nothing
    assert await order(keys[0], "waiting") == {
        "generation": 0,
        "num_nodes": 2,
        "node_ips": "",
        "go": False,
    }
    assert (await order(keys[1], "waiting"))["go"] is False  # type: ignore[index]
    listing({keys[0]: "10.0.0.5", keys[1]: "10.0.0.6"})
    assert await order(keys[1], "waiting") == {
        "generation": 0,
        "num_nodes": 2,
        "node_ips": "10.0.0.5\n10.0.0.6",
        "go": True,
    }
    # a provider that reports no addresses (the local one, Slurm): go, the launch's list kept
    listing({keys[0]: "127.0.0.1", keys[1]: "127.0.0.1"})
    assert await order(keys[0], "waiting") == {
        "generation": 0,
        "num_nodes": 2,
        "node_ips": "",
        "go": True,
    }


async def test_a_daemon_that_does_not_run_the_job_answers_from_the_store_and_keeps_little(
    ctl: Controller, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Heartbeats land on any daemon. One that does not run the job kept each attempt's
    rounds for ever, as first read: it grew with every attempt it heard, and after the owner
    replaced a node it still told the survivors nothing (so they never stopped)."""
    monkeypatch.setattr(node_replace, "HEARD_SECONDS", 0.0)
    monkeypatch.setattr(node_replace, "HEARD_MAX", 3)
    other = Controller(
        settings=load_settings(tmp_path / "other", env={}),
        store=ctl.store,
        providers=ctl.providers,
        metrics=DaemonMetrics(),
    )
    store = ctl.store
    jid, aid = await _running_gang(ctl, 3)
    survivor = await store.require_instance(f"{aid}-n0")
    assert await other.losses.order_for(survivor, 0, "run", mine=False) is None
    job, attempt = await store.require_job(jid), await store.require_attempt(aid)
    assert await ctl.losses.replace(job, attempt, _reports(aid, 1, 3), NOW + 1)  # the owner
    order = await other.losses.order_for(survivor, 0, "run", mine=False)
    assert order is not None and order["generation"] == 1 and order["go"] is False
    for _ in range(5):  # more attempts heard than it keeps
        _, more = await _running_gang(ctl, 1)
        row = await store.require_instance(f"{more}-n0")
        await other.losses.order_for(row, 0, "run", mine=False)
    assert len(other.losses._heard) == 3
    gone = await store.require_instance(f"{aid}-n1")
    assert gone.terminated and await other.losses.order_for(gone, 0, "run", mine=False) is None
