"""Simulated capacity never competes with real capacity, and its costs say they are made up.

Before: with AWS configured, ``accelerators: A100:8, use_spot: true`` was placed on the local
provider's ``sim-a100-8``, whose made-up spot price ($9.83/h) is below ``p4d.24xlarge``'s: a
real deployment would have run a GPU job as processes on the daemon's host and billed it at
invented prices, shown in ``spotctl cost`` like money spent. After: the local provider's types
are candidates only when the task names ``infra: local`` or no real provider is enabled, and
cost rows carry ``simulated``/``simulated_dollars`` with a note on the report.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from spotd.control.submit import InvalidRequest, LaunchRequest, Plan, plan_submission
from spotd.pricing.catalog import default_local_catalog, parse_catalog, real_capacity
from spotd.pricing.cost import CostBy, Usage, cost_report, report_json
from spotd.spec import load_task
from spotd.store import AsyncStore
from spotd.types import Market
from tests.aws.motoserver import AMI, Moto, aws_env, moto_server  # noqa: F401 - the fixture
from tests.conftest import DaemonProc, kill_instance_groups
from tests.e2e.helpers import wait_job
from tests.ops.conftest import TERMINAL

LOCAL = default_local_catalog()
AWS = parse_catalog(
    importlib.resources.files("spotd").joinpath("data/aws_catalog.yaml").read_text("utf-8"),
    source="aws_catalog.yaml",
)
BOTH = LOCAL + AWS
A100_8_SPOT = "resources: {accelerators: A100:8, use_spot: true}\nrun: x\n"


@pytest.mark.parametrize(
    ("enabled", "resources", "local_kept"),
    [
        (["local"], "{accelerators: A100:8}", True),  # nothing real: local is all there is
        ([], "{accelerators: A100:8}", True),
        (["local", "aws"], "{accelerators: A100:8}", False),
        (["local", "aws"], "{accelerators: A100:8, infra: local}", True),  # asked for
        (["local", "aws"], "{infra: local/local-east}", True),
        (["local", "aws"], "{any_of: [{infra: aws}, {infra: local}]}", True),
        (["local", "aws"], "{accelerators: A100:8, infra: aws}", False),
        (["local", "k8s"], "{cpus: 2+}", False),  # any real provider, not only aws
        (["local", "slurm"], "{cpus: 2+}", False),
        (["aws"], "{cpus: 2+}", False),
    ],
)
def test_real_capacity(enabled: list[str], resources: str, local_kept: bool) -> None:
    task = load_task("t.yaml", text=f"resources: {resources}\nrun: x\n")
    usable = real_capacity(BOTH, request=task.resource_request(), enabled_providers=enabled)
    assert usable == (BOTH if local_kept else AWS)  # only simulated entries ever go


async def _plan(
    store: AsyncStore, yaml: str, *, enabled: list[str], infra: str | None = None
) -> Plan:
    return await plan_submission(
        LaunchRequest(yaml=yaml, infra=infra),
        scope=None,
        catalog=[e for e in BOTH if e.provider in enabled],
        providers=dict.fromkeys(enabled),  # type: ignore[arg-type] - only the names are read
        store=store,
        now=0.0,
    )


async def test_a100_spot_goes_to_aws_not_to_the_simulated_a100(store: AsyncStore) -> None:
    plan = await _plan(store, A100_8_SPOT, enabled=["local", "aws"])
    assert plan.candidates[0].instance_type == "p4d.24xlarge"
    assert {c.provider for c in plan.candidates} == {"aws"}
    assert plan.gpus == 8


@pytest.mark.parametrize(
    ("enabled", "infra", "first"),
    [
        (["local"], None, "sim-a100-8"),  # a laptop, the tests: as before
        (["local", "aws"], "local", "sim-a100-8"),  # asked for, by --infra
    ],
)
async def test_simulated_capacity_when_asked_for_or_alone(
    store: AsyncStore, enabled: list[str], infra: str | None, first: str
) -> None:
    plan = await _plan(store, A100_8_SPOT, enabled=enabled, infra=infra)
    assert plan.candidates[0].instance_type == first


async def test_what_only_simulated_capacity_has_is_refused_saying_how_to_ask(
    store: AsyncStore,
) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await _plan(
            store, "resources: {instance_type: sim-t4-1}\nrun: x\n", enabled=["local", "aws"]
        )
    assert exc.value.message == (
        "no feasible placement on real capacity: only the local provider's simulated types "
        "fit (sim-t4-1); to run the job as processes on the daemon's host, say `infra: local` "
        "(or --infra local)"
    )


H = 3600.0
SIM = Usage(
    job_id=1, job_name="j", service=None, project="ml", provider="local",
    region="local-east", instance_type="sim-a100-8", market=Market.SPOT, price_per_hour=9.83,
    ondemand_price_per_hour=32.77, gpus_per_node=8, nodes=1, start=0.0, end=H,
)  # fmt: skip
REAL = Usage(
    job_id=1, job_name="j", service=None, project="ml", provider="aws",
    region="us-west-2", instance_type="p4d.24xlarge", market=Market.SPOT,
    price_per_hour=13.7645, ondemand_price_per_hour=32.7726, gpus_per_node=8, nodes=1,
    start=H, end=2 * H,
)  # fmt: skip


@pytest.mark.parametrize(
    ("usages", "by", "rows", "note"),
    [
        # (key, simulated, simulated_dollars) per row
        ([SIM], CostBy.JOB, [("1", True, 9.83)], "simulated: all of these costs"),
        ([REAL], CostBy.JOB, [("1", False, 0.0)], None),
        ([SIM, REAL], CostBy.JOB, [("1", False, 9.83)], "simulated: $9.8300 of these costs"),
        (
            [SIM, REAL],
            CostBy.REGION,
            [("aws/us-west-2", False, 0.0), ("local/local-east", True, 9.83)],
            "simulated: $9.8300",
        ),
    ],
)
def test_simulated_costs_are_marked(
    usages: list[Usage], by: CostBy, rows: list[tuple[str, bool, float]], note: str | None
) -> None:
    got, total = cost_report(usages, by=by, since=None, now=10 * H)
    report = report_json(got, total, by=by, since=None, now=10 * H)
    assert [
        (r["key"], r["simulated"], pytest.approx(r["simulated_dollars"])) for r in report["rows"]
    ] == rows
    if note is None:
        assert report["note"] is None
    else:
        assert note in report["note"] and "made-up prices" in report["note"]


# -- through a real daemon ---------------------------------------------------------------


@pytest.fixture
def aws_and_local_daemon(moto_server: Moto) -> Iterator[DaemonProc]:  # noqa: F811
    home = Path(f"/tmp/spotd-s{os.getpid()}-{time.monotonic_ns() % 10**9}")
    cfg = {"regions": ["us-west-2"], "endpoint_url": moto_server.url, "image_id": AMI}
    d = DaemonProc(home, {**aws_env(moto_server), "SPOTD_PROVIDERS_JSON": json.dumps({"aws": cfg})})
    d.start()
    try:
        yield d
    finally:
        d.stop()
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)


async def _dry_run(d: DaemonProc, yaml: str, **body: Any) -> tuple[int, Any]:
    conn = aiohttp.UnixConnector(path=str(d.socket))
    async with (
        aiohttp.ClientSession(connector=conn) as s,
        s.post("http://spotd/v1/jobs", json={"yaml": yaml, "dry_run": True, **body}) as r,
    ):
        return r.status, await r.json()


@pytest.mark.aws
async def test_a_daemon_with_aws_never_offers_the_simulated_a100(
    aws_and_local_daemon: DaemonProc,
) -> None:
    status, plan = await _dry_run(aws_and_local_daemon, A100_8_SPOT)
    assert status == 200, plan
    assert {c["provider"] for c in plan["candidates"]} == {"aws"}
    assert plan["candidates"][0]["instance_type"] == "p4d.24xlarge"
    status, plan = await _dry_run(aws_and_local_daemon, A100_8_SPOT, infra="local")
    assert status == 200, plan
    assert plan["candidates"][0]["instance_type"] == "sim-a100-8"


@pytest.mark.aws
async def test_a_daemon_with_aws_places_the_job_itself_on_aws(
    aws_and_local_daemon: DaemonProc,
) -> None:
    """Not only the plan: the attempt the job controller launches (and every relaunch)."""
    async with aws_and_local_daemon.client() as c:
        job = await c.launch(A100_8_SPOT.replace("run: x", "run: sleep 5"), filename="a.yaml")
        job = await wait_job(c, job["id"], lambda j: bool(j["attempts"]), timeout=30)
        await c.cancel(job["id"])
    assert (job["attempts"][0]["provider"], job["attempts"][0]["instance_type"]) == (
        "aws",
        "p4d.24xlarge",
    )


async def test_a_local_daemon_marks_its_costs_simulated(daemon: DaemonProc) -> None:
    async with daemon.client() as c:
        job = await c.launch("name: sim\nresources: {cpus: 1+}\nrun: sleep 0.5\n", filename="s.y")
        job = await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL, timeout=30)
        assert job["status"] == "SUCCEEDED"
        report = await c.cost(by="job")
    [row] = report["rows"]
    assert row["simulated"] is True and row["simulated_dollars"] == row["dollars"] > 0
    assert "made-up prices" in report["note"]
