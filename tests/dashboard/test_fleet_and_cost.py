"""The Fleet and Cost pages in-process: live nodes with their GPUs (idle ones flagged), and
spend per step that adds up to the window's total, savings against on-demand."""

from __future__ import annotations

import json

import pytest

from spotd.dashboard.fleet import spend_series
from spotd.pricing.cost import CostBy, Usage, cost_report
from spotd.types import Market

from .conftest import Dash, seed_job


def usage(project: str, start: float, end: float | None, market: Market = Market.SPOT) -> Usage:
    return Usage(
        job_id=1, job_name="j", service=None, project=project, provider="aws",
        region="us-east-1", instance_type="g5", market=market, price_per_hour=1.0,
        ondemand_price_per_hour=3.0, gpus_per_node=1, nodes=1, start=start, end=end,
    )  # fmt: skip


def test_spend_per_step_adds_up_to_the_window() -> None:
    usages = [usage("a", 0, 5400), usage("b", 3600, None), usage("c", 1800, 2000)]
    s = spend_series(usages, by=CostBy.PROJECT, since=0, now=7200, step=3600)
    assert s["data"][0] == [0, 3600]
    by_name = dict(zip(s["names"], s["data"][1:], strict=True))
    assert by_name["a"] == pytest.approx([1.0, 0.5]) and by_name["b"] == [0.0, 1.0]
    _, total = cost_report(usages, by=CostBy.PROJECT, since=0, now=7200)
    spent = sum(sum(ys) for ys in s["data"][1:])
    assert spent == pytest.approx(total.dollars)
    assert sum(s["ondemand"]) == pytest.approx(total.ondemand_equivalent_dollars)


async def test_the_fleet_flags_a_node_whose_gpus_are_idle(dash: Dash) -> None:
    busy = seed_job(dash.store.store, name="busy")
    idle = seed_job(dash.store.store, name="idle")
    for job, util in ((busy, 93.0), (idle, 2.0)):
        gpus = [
            {"index": 0, "name": "A100", "utilization_pct": util, "memory_used_mib": 30000,
             "memory_total_mib": 81920, "temperature_c": 50}
        ]  # fmt: skip
        await dash.store.record_heartbeat(
            f"{job.id}-1",
            now=1e6,
            phase="RUNNING",
            exit_code=None,
            notice_deadline=None,
            gpus_json=json.dumps(gpus),
        )
    html = await (await dash.unix.get("/dashboard/fleet")).text()
    rows = html.split("<tr")
    busy_row = next(r for r in rows if "job 1 · busy" in r)
    idle_row = next(r for r in rows if "job 2 · idle" in r)
    assert 'class="flag">idle' in idle_row and 'class="flag">idle' not in busy_row
    assert "93% · 29.3/80 GiB" in busy_row


async def test_the_cost_page_groups_and_refuses_nothing(dash: Dash) -> None:
    seed_job(dash.store.store, project="alpha")
    for q in ("", "?by=region&window=7d", "?by=nonsense&window=1y", "?by=job"):
        r = await dash.unix.get("/dashboard/cost" + q)
        assert r.status == 200, q
    assert (await dash.unix.get("/dashboard/services")).status == 200
    assert (await dash.unix.get("/dashboard/services/nope")).status == 404
