"""Dynamic on-demand fallback (``dynamic_ondemand_fallback: true``) through the real daemon,
real replica processes on the local provider and load from a separate process:

- spot stocked out in every region → the service still comes up READY, on on-demand
  replicas, and serves;
- the stockout ends → spot replicas come up and the on-demand ones are retired only as spot
  ones are READY (READY capacity never drops below the target), leaving only spot — without
  a failed request;
- a spot replica preempted → an on-demand replica covers for it while its replacement
  starts, and leaves once the replacement is READY.

Without the fallback the first test never gets a READY replica and the second sees no
on-demand replica at all.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from spotd.pricing.catalog import default_local_catalog
from spotd.sdk.client_serve import serve_events, serve_status, serve_up, wait_service
from tests.conftest import DaemonProc

from .conftest import Load, stub_yaml

# the bounded waits below add up to more than the default 120 s (a loaded machine)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TARGET = 2
FALLBACK = f"""replica_policy:
    min_replicas: {TARGET}
    max_replicas: {TARGET}
    dynamic_ondemand_fallback: true"""
REGIONS = sorted({e.region for e in default_local_catalog() if e.provider == "local"})


def live(s: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in s["replicas"] if r["ended_at"] is None]


def ready_of(s: dict[str, Any], market: str) -> list[dict[str, Any]]:
    return [r for r in s["replicas"] if r["status"] == "READY" and r["market"] == market]


def only_spot(s: dict[str, Any]) -> bool:
    """The steady state: the target in READY spot replicas and nothing else alive."""
    return len(ready_of(s, "spot")) == TARGET and len(live(s)) == TARGET


def ready_after_each_change(events: list[dict[str, Any]]) -> list[tuple[int, str, str, str]]:
    """Replay the service's event log: (READY replicas, replica key, from, to) after every
    replica status change. Exact, where sampling the status could miss a short dip."""
    ready: set[str] = set()
    out = []
    for e in events:
        if e["kind"] != "replica.status":
            continue
        old, _, new = e["message"].split(":", 1)[0].partition("→")  # "READY → DRAINING: why"
        (ready.add if new.strip() == "READY" else ready.discard)(e["replica"])
        out.append((len(ready), e["replica"], old.strip(), new.strip()))
    return out


async def test_spot_stocked_out_everywhere_serves_on_demand_then_moves_back_to_spot(
    serve_daemon: DaemonProc, load: Callable[..., Load]
) -> None:
    async with serve_daemon.client() as c:
        for region in REGIONS:
            out = serve_daemon.spotctl(
                "chaos", "stockout", region, "--for", "600", "--market", "spot"
            )
            assert out.returncode == 0 and f"{region} (spot) stocked out" in out.stdout, out
        await serve_up(c, stub_yaml(replicas=FALLBACK), filename="svc.yaml")
        up = await wait_service(
            c,
            "svc",
            lambda s: len(ready_of(s, "on-demand")) == TARGET,
            timeout=60,
            what=f"{TARGET} on-demand READY",
        )
        # what `spotctl serve status -o json` tells the user: READY, on on-demand capacity
        shown = serve_daemon.spotctl("serve", "status", "svc", "-o", "json")
        assert shown.returncode == 0, shown.stderr
        status = json.loads(shown.stdout)
        assert status["status"] == "READY"
        assert [r["market"] for r in status["replicas"] if r["status"] == "READY"] == [
            "on-demand"
        ] * TARGET
        refused = await serve_status(c, "svc", all_replicas=True)
        assert any(
            r["market"] == "spot" and r["status"] == "FAILED_PROVISION" for r in refused["replicas"]
        ), "spot was tried (and refused) first"

        ld = load(
            up["endpoint"], "--concurrency", "4", "--max-requests", "20000", "--max-seconds", "110"
        )
        await ld.wait_done(40)
        for region in REGIONS:
            await c.chaos("stockout", target=region, seconds=0, market="spot")
        # spot launches back off while refused (up to 60 s): allow for the backoff reached
        samples: list[dict[str, Any]] = []  # every status polled on the way

        def back_to_spot(s: dict[str, Any]) -> bool:
            samples.append(s)
            return only_spot(s)

        await wait_service(
            c,
            "svc",
            back_to_spot,
            timeout=90,
            poll=0.1,
            what=f"{TARGET} spot READY and no on-demand left",
        )
        # and it stays there: the retired on-demand replicas are not relaunched
        await asyncio.sleep(2)
        steady = await serve_status(c, "svc")
        await ld.wait_done(ld.progress()["done"] + 40)
        result = ld.finish()
        final = await serve_status(c, "svc", all_replicas=True)
        events = await serve_events(c, "svc")

    assert result["failed"] == 0, result["errors"]
    on_demand = [r for r in final["replicas"] if r["market"] == "on-demand"]
    spot = [r for r in final["replicas"] if r["market"] == "spot" and r["ready_at"]]
    served = set(result["by_replica"])
    assert {f"r{r['id']}" for r in on_demand} <= served, "the on-demand replicas served"
    assert {f"r{r['id']}" for r in spot} <= served, "the spot replicas served"
    # make before break: from the moment the target was first READY, no replica status
    # change ever left fewer than the target READY (the on-demand replicas drained only as
    # spot replicas were READY) ...
    changes = ready_after_each_change(events)
    first = next(i for i, change in enumerate(changes) if change[0] >= TARGET)
    assert min(change[0] for change in changes[first:]) >= TARGET, changes[first:]
    drained = {(key, old, new) for _, key, old, new in changes}
    for r in on_demand:
        assert (r["key"], "READY", "DRAINING") in drained, changes
    # ... nor did any status the user polled meanwhile
    dips = [
        (s["ready_replicas"], [(r["id"], r["market"], r["status"]) for r in s["replicas"]])
        for s in samples
        if s["ready_replicas"] < TARGET or s["status"] != "READY"
    ]
    assert not dips, dips
    assert len(on_demand) == TARGET and {r["status"] for r in on_demand} == {"TERMINATED"}
    assert len(spot) == TARGET
    assert only_spot(steady), steady["replicas"]
    assert steady["status"] == "READY"


async def test_preempted_spot_replica_is_covered_on_demand_until_its_replacement_is_ready(
    serve_daemon: DaemonProc, load: Callable[..., Load]
) -> None:
    async with serve_daemon.client() as c:
        await serve_up(c, stub_yaml(replicas=FALLBACK), filename="svc.yaml")
        # at start the spot replicas are not READY either: on-demand covers them, then goes
        svc = await wait_service(
            c, "svc", only_spot, timeout=60, what=f"{TARGET} spot READY, nothing else"
        )
        ld = load(
            svc["endpoint"], "--concurrency", "4", "--max-requests", "20000", "--max-seconds", "90"
        )
        await ld.wait_done(40)
        victim = svc["replicas"][0]
        t_preempt = time.time()
        r = await c.chaos("preempt", target=victim["instance_id"])
        assert r["preempted"] == [victim["instance_id"]]

        def covered(s: dict[str, Any]) -> bool:
            return any(
                x["market"] == "on-demand" and x["created_at"] >= t_preempt for x in s["replicas"]
            )

        await wait_service(
            c,
            "svc",
            covered,
            timeout=30,
            poll=0.1,
            what="an on-demand fallback launched",
            all_replicas=True,
        )
        back = await wait_service(
            c,
            "svc",
            lambda s: only_spot(s) and victim["id"] not in {x["id"] for x in s["replicas"]},
            timeout=60,
            what="back to spot only",
        )
        await ld.wait_done(ld.progress()["done"] + 40)
        result = ld.finish()
        final = await serve_status(c, "svc", all_replicas=True)
        events = await serve_events(c, "svc")

    assert result["failed"] == 0, result["errors"]
    by_id = {x["id"]: x for x in final["replicas"]}
    assert by_id[victim["id"]]["status"] == "PREEMPTED"
    fallback = [
        x for x in final["replicas"] if x["market"] == "on-demand" and x["created_at"] >= t_preempt
    ]
    replacement = [x for x in back["replicas"] if x["created_at"] >= t_preempt]
    assert len(fallback) == 1, fallback
    assert len(replacement) == 1 and replacement[0]["market"] == "spot"
    assert by_id[fallback[0]["id"]]["status"] == "TERMINATED"
    # the fallback was launched while the replacement was not READY, and left after it was
    # (in the event log's order: a worker step stamps what it does with the time it began,
    # which may precede a READY the prober wrote meanwhile that the step acted on)
    changes = [(key, old, new) for _, key, old, new in ready_after_each_change(events)]
    came = changes.index((replacement[0]["key"], "STARTING", "READY"))
    launched = changes.index((fallback[0]["key"], "", "PROVISIONING"))
    left = next(
        i
        for i, (key, _, new) in enumerate(changes)
        if key == fallback[0]["key"] and new in ("DRAINING", "SHUTTING_DOWN")
    )
    assert launched < came < left, changes[launched:]
