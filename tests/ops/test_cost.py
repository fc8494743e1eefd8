"""Cost accounting: pure reports, table-driven; and a finished job's cost through spotctl."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest

from spotd.pricing.catalog import default_local_catalog
from spotd.pricing.cost import (
    CatalogIndex,
    CostBy,
    Usage,
    cost_report,
    parse_since,
    usage_from_attempt,
)
from spotd.types import EndReason, Market
from tests.e2e.helpers import wait_job
from tests.ops.conftest import TERMINAL

H = 3600.0
NOW = 100 * H

# one A100 node on spot at $0.60/h where on-demand is $2.00/h, from t=0 to t=3h
SPOT = Usage(
    job_id=1,
    job_name="train",
    service=None,
    project="ml",
    provider="aws",
    region="us-east-1",
    instance_type="p4",
    market=Market.SPOT,
    price_per_hour=0.60,
    ondemand_price_per_hour=2.00,
    gpus_per_node=1,
    nodes=1,
    start=0.0,
    end=3 * H,
)
ONDEMAND = replace(SPOT, market=Market.ON_DEMAND, price_per_hour=2.00)


def report(usages, *, by=CostBy.JOB, since=None):
    rows, total = cost_report(usages, by=by, since=since, now=NOW)
    return [(r.key, round(r.dollars, 4), round(r.saving_dollars, 4)) for r in rows], total


@pytest.mark.parametrize(
    ("case", "usages", "by", "since", "rows", "total"),
    [
        (
            "spot saves the on-demand difference",
            [SPOT],
            CostBy.JOB,
            None,
            [("1", 1.80, 4.20)],
            {
                "hours": 3,
                "gpu_hours": 3,
                "spot_hours": 3,
                "ondemand_hours": 0,
                "dollars": 1.80,
                "ondemand_equivalent_dollars": 6.00,
                "saving_dollars": 4.20,
                "saving_pct": 70.0,
            },
        ),
        (
            "on-demand saves nothing",
            [ONDEMAND],
            CostBy.JOB,
            None,
            [("1", 6.00, 0.0)],
            {"spot_hours": 0, "ondemand_hours": 3, "dollars": 6.00, "saving_dollars": 0.0},
        ),
        (
            "a job preempted once then finished on-demand: one row, both markets",
            [SPOT, replace(ONDEMAND, start=3 * H, end=4 * H)],
            CostBy.JOB,
            None,
            [("1", 3.80, 4.20)],
            {
                "placements": 2,
                "spot_hours": 3,
                "ondemand_hours": 1,
                "dollars": 3.80,
                "ondemand_equivalent_dollars": 8.00,
            },
        ),
        (
            "nodes multiply hours, GPUs multiply GPU-hours",
            [replace(SPOT, nodes=2, gpus_per_node=8)],
            CostBy.JOB,
            None,
            [("1", 3.60, 8.40)],
            {"hours": 6, "gpu_hours": 48},
        ),
        (
            "--since clips a placement to the window",
            [SPOT],
            CostBy.JOB,
            2 * H,
            [("1", 0.60, 1.40)],
            {"hours": 1, "dollars": 0.60},
        ),
        (
            "--since drops what ended before it",
            [SPOT, replace(SPOT, job_id=2, start=50 * H, end=51 * H)],
            CostBy.JOB,
            10 * H,
            [("2", 0.60, 1.40)],
            {"placements": 1},
        ),
        (
            "a running placement is billed up to now",
            [replace(SPOT, start=NOW - H, end=None)],
            CostBy.JOB,
            None,
            [("1", 0.60, 1.40)],
            {"hours": 1},
        ),
        (
            "a launch that got no machine costs nothing",
            [replace(SPOT, start=None)],
            CostBy.JOB,
            None,
            [],
            {"placements": 0, "dollars": 0},
        ),
        (
            "an unknown on-demand price saves nothing and is counted",
            [replace(SPOT, ondemand_price_per_hour=None)],
            CostBy.JOB,
            None,
            [("1", 1.80, 0.0)],
            {"unpriced": 1},
        ),
        (
            "by project and by region, most expensive first",
            [SPOT, replace(ONDEMAND, job_id=2, project="web", region="eu-west-1")],
            CostBy.PROJECT,
            None,
            [("web", 6.00, 0.0), ("ml", 1.80, 4.20)],
            {"dollars": 7.80},
        ),
        (
            "by region",
            [SPOT, replace(ONDEMAND, job_id=2, region="eu-west-1")],
            CostBy.REGION,
            None,
            [("aws/eu-west-1", 6.00, 0.0), ("aws/us-east-1", 1.80, 4.20)],
            {"dollars": 7.80},
        ),
        (
            "by service leaves jobs out, by job leaves services out",
            [SPOT, replace(SPOT, job_id=None, service="llama")],
            CostBy.SERVICE,
            None,
            [("llama", 1.80, 4.20)],
            {"placements": 1},
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_cost_report(case, usages, by, since, rows, total) -> None:
    got_rows, got_total = report(usages, by=by, since=since)
    assert got_rows == rows, case
    t = got_total.to_json()
    for k, v in total.items():
        assert t[k] == pytest.approx(v), (case, k)


def test_attempts_are_priced_from_the_catalog() -> None:
    index = CatalogIndex(default_local_catalog())
    entry = next(
        e
        for e in default_local_catalog()
        if e.instance_type == "sim-a100-8" and e.spot_price is not None
    )
    job = SimpleNamespace(id=7, name="big", project="ml")
    attempt = SimpleNamespace(
        provider="local",
        region=entry.region,
        zone=entry.zone,
        instance_type="sim-a100-8",
        market="spot",
        price_per_hour=entry.spot_price,
        num_nodes=2,
        created_at=0.0,
        ended_at=H,
        end_reason=EndReason.PREEMPTED,
    )
    u = usage_from_attempt(attempt, job=job, index=index)
    assert (u.gpus_per_node, u.ondemand_price_per_hour, u.nodes) == (8, entry.ondemand_price, 2)
    [row], _ = cost_report([u], by=CostBy.JOB, since=None, now=NOW)
    assert row.gpu_hours == 16
    assert row.saving_dollars == pytest.approx(2 * (entry.ondemand_price - entry.spot_price))
    failed = usage_from_attempt(
        replace_ns(attempt, end_reason=EndReason.LAUNCH_FAILED), job=job, index=index
    )
    assert failed.start is None


def replace_ns(ns: SimpleNamespace, **kw: object) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(ns), **kw})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", NOW - 7 * 24 * H),
        ("12h", NOW - 12 * H),
        ("1700000000", 1.7e9),
        ("2024-01-01T00:00:00+00:00", 1704067200.0),
    ],
)
def test_since_accepts_dates_epochs_and_durations(text: str, expected: float) -> None:
    assert parse_since(text, now=NOW) == expected


def test_since_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="--since"):
        parse_since("last tuesday", now=NOW)


async def test_finished_job_cost_shows_in_spotctl(daemon) -> None:
    yaml = "name: costly\nresources: {accelerators: 'T4:1', use_spot: true}\nrun: sleep 1.5\n"
    async with daemon.client() as c:
        job = await c.launch(yaml, filename="c.yaml")
        job = await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL, timeout=30)
    assert job["status"] == "SUCCEEDED"
    [attempt] = job["attempts"]
    r = daemon.spotctl("cost", "-o", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    [row] = data["rows"]
    assert (row["key"], row["label"], row["placements"]) == (str(job["id"]), "costly", 1)
    hours = (attempt["ended_at"] - attempt["created_at"]) / H
    assert row["spot_hours"] == pytest.approx(hours, rel=1e-3)
    assert row["gpu_hours"] == pytest.approx(hours, rel=1e-3)  # sim-t4-1: one T4
    assert row["dollars"] == pytest.approx(hours * attempt["price_per_hour"], rel=1e-3)
    assert row["saving_dollars"] > 0 and data["total"]["dollars"] == row["dollars"]
    by_region = json.loads(daemon.spotctl("cost", "--by", "region", "-o", "json").stdout)
    assert [r["key"] for r in by_region["rows"]] == [f"local/{attempt['region']}"]
    later = json.loads(daemon.spotctl("cost", "--since", "2999-01-01", "-o", "json").stdout)
    assert later["rows"] == [] and later["total"]["dollars"] == 0
    assert data["total"]["simulated"] and row["simulated"]  # sim-t4-1: a made-up price
    assert data["note"] and "not money spent" in data["note"]
    table = daemon.spotctl("cost", "--by", "project")
    assert table.returncode == 0 and "default" in table.stdout and "SAVED" in table.stdout
    assert "(simulated)" in table.stdout and "not money spent" in " ".join(table.stderr.split())
