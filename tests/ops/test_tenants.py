"""Tenants: quotas refused at launch with quota and use, and project tokens over TCP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from spotd.control.quota import (
    Ask,
    admit,
    check_quota,
    hash_token,
    job_gpus,
    new_token,
    service_gpus,
    service_reservation,
    validate_name,
)
from spotd.pricing.catalog import default_local_catalog
from spotd.sdk.client import ApiError, Client
from spotd.sdk.client_serve import serve_down, serve_up
from spotd.spec import load_tasks
from spotd.store import ProjectRow, ProjectUsage
from tests.e2e.helpers import wait_job
from tests.ops.conftest import TERMINAL, free_port, gpu_yaml


@pytest.mark.parametrize(
    ("quota", "active", "requested", "refused"),
    [
        (None, [64], 8, False),  # no quota: unlimited
        (8, [], 8, False),  # exactly the quota
        (8, [4], 4, False),
        (8, [4, 4], 1, True),
        (8, [6], 4, True),
        (8, [8, 0], 0, False),  # a CPU job is never refused by a GPU quota
        (0, [], 1, True),
    ],
)
def test_check_quota(quota, active, requested, refused) -> None:
    got = check_quota(project="ml", quota=quota, active=active, requested=requested)
    assert (got is not None) == refused
    if got is not None:
        assert str(quota) in got.message and f"{sum(active):g} in use" in got.message


def test_refusal_says_quota_and_use() -> None:
    got = check_quota(project="ml", quota=8, active=[4, 4, 0], requested=1)
    assert got is not None
    assert got.message == "project ml: GPU quota 8, 8 in use by 2 active jobs; this job asks for 1"


CATALOG = default_local_catalog()


@pytest.mark.parametrize(
    ("resources", "nodes", "gpus"),
    [
        ("{accelerators: 'A100:8'}", 1, 8),
        ("{accelerators: 'T4:1'}", 2, 2),
        ("{accelerators: {A100: 8, H100: 4}}", 1, 8),
        ("{cpus: 2+}", 3, 0),
        # counted from the instance type, not from `accelerators:` alone
        ("{instance_type: sim-a100-8}", 1, 8),
        ("{instance_type: sim-a100-8}", 2, 16),
        ("{instance_type: cpu-4}", 4, 0),
        # the most of any placement a relaunch may take, though the cheapest is smaller
        ("{any_of: [{accelerators: 'A100:1'}, {accelerators: 'A100:8'}]}", 2, 16),
        ("{ordered: [{accelerators: 'T4:1'}, {instance_type: sim-h100-8}]}", 1, 8),
    ],
)
def test_gpus_reserved_by_a_task(resources: str, nodes: int, gpus: float) -> None:
    [task] = load_tasks("t.yaml", text=f"num_nodes: {nodes}\nresources: {resources}\nrun: x\n")
    assert job_gpus(task.resource_request(), CATALOG, num_nodes=nodes) == gpus


def test_gpus_reserved_by_a_service() -> None:
    [task] = load_tasks("t.yaml", text="resources: {accelerators: 'T4:1'}\nrun: x\n")
    assert service_gpus(task.resource_request(), CATALOG, max_replicas=3) == 3


@pytest.mark.parametrize(
    ("service", "gpus"),
    [
        ("{readiness_probe: /, replicas: 2}", 16),
        ("{readiness_probe: /, replica_policy: {min_replicas: 1, max_replicas: 3, "
         "target_qps_per_replica: 5}}", 24),
        ("{readiness_probe: /, replica_policy: {min_replicas: 1, num_overprovision: 1}}", 16),
    ],
)  # fmt: skip
def test_gpus_reserved_by_a_service_task(service: str, gpus: float) -> None:
    [task] = load_tasks(
        "t.yaml", text=f"resources: {{instance_type: sim-a100-8}}\nservice: {service}\nrun: x\n"
    )
    assert service_reservation(task, CATALOG, enabled_providers=["local"]) == gpus


def _project(**limits: Any) -> ProjectRow:
    base = dict.fromkeys(("gpu_quota", "max_jobs", "max_nodes_per_job", "max_services"))
    return ProjectRow(name="ml", token_hash="h", created_at=0.0, **{**base, **limits})


@pytest.mark.parametrize(
    ("limits", "usage", "ask", "refused"),
    [
        ({}, ProjectUsage(gpus=64, jobs=9), Ask(gpus=8, nodes=16), None),  # no limits
        ({"max_nodes_per_job": 4}, ProjectUsage(), Ask(gpus=0, nodes=4), None),
        (
            {"max_nodes_per_job": 4},
            ProjectUsage(),
            Ask(gpus=0, nodes=8),
            "project ml: at most 4 nodes per job; this job asks for 8",
        ),
        ({"max_jobs": 2}, ProjectUsage(jobs=1), Ask(gpus=0), None),
        (
            {"max_jobs": 2},
            ProjectUsage(jobs=2),
            Ask(gpus=0),
            "project ml: at most 2 active jobs, 2 active; this job would exceed it",
        ),
        ({"max_jobs": 2}, ProjectUsage(jobs=2, services=5), Ask(gpus=0, service=True), None),
        (
            {"max_services": 1},
            ProjectUsage(services=1),
            Ask(gpus=0, service=True),
            "project ml: at most 1 live services, 1 live; this service would exceed it",
        ),
        ({"max_services": 1}, ProjectUsage(services=1), Ask(gpus=0), None),  # a job
        ({"gpu_quota": 8}, ProjectUsage(gpus=4, jobs=1, gpu_jobs=1), Ask(gpus=4), None),
        ({"gpu_quota": 8}, ProjectUsage(gpus=8, jobs=3, gpu_jobs=2), Ask(gpus=0), None),
        (
            {"gpu_quota": 8},
            ProjectUsage(gpus=6, jobs=1, gpu_jobs=1, services=1, gpu_services=1),
            Ask(gpus=4),
            "project ml: GPU quota 8, 6 in use by 1 active job and 1 service; this job asks for 4",
        ),
        (
            {"gpu_quota": 8},
            ProjectUsage(gpus=8, jobs=1, gpu_jobs=1),
            Ask(gpus=1, service=True),
            "project ml: GPU quota 8, 8 in use by 1 active job; this service asks for 1",
        ),
        # the first limit broken is the answer: nodes, then jobs, then GPUs
        (
            {"max_nodes_per_job": 1, "max_jobs": 0, "gpu_quota": 0},
            ProjectUsage(),
            Ask(gpus=8, nodes=2),
            "at most 1 nodes per job",
        ),
        ({"max_jobs": 0, "gpu_quota": 0}, ProjectUsage(), Ask(gpus=8), "at most 0 active jobs"),
    ],
)
def test_admit(limits, usage, ask, refused) -> None:
    got = admit(_project(**limits), usage, ask)
    assert (got is None) == (refused is None)
    if got is not None:
        assert refused in got.message
    assert admit(None, usage, ask) is None  # a project without a row has no limits


def test_tokens_and_names() -> None:
    a, b = new_token(), new_token()
    assert a != b and a.startswith("spotdp_") and len(hash_token(a)) == 64
    assert validate_name("ml-team.1") is None
    assert "project name" in (validate_name("ML Team") or "")


async def test_launch_over_quota_is_refused_and_creates_nothing(daemon) -> None:
    r = daemon.spotctl("project", "create", "ml", "--gpu-quota", "2")
    assert r.returncode == 0, r.stderr
    assert "project ml created (quota 2 GPUs)" in r.stdout and "token: spotdp_" in r.stdout
    async with daemon.client() as c:
        first = await c.launch(gpu_yaml(gpus="T4:1"), filename="g.yaml", project="ml")
        cpu = await c.launch(
            "resources: {cpus: 1+}\nrun: sleep 60\n", filename="c.yaml", project="ml"
        )
        with pytest.raises(ApiError) as refused:
            await c.launch(gpu_yaml(gpus="T4:1", nodes=2), filename="g.yaml", project="ml")
        assert refused.value.status == 403
        assert refused.value.message == (
            "project ml: GPU quota 2, 1 in use by 1 active job; this job asks for 2"
        )
        assert refused.value.details["gpus_in_use"] == 1
        assert len(await c.jobs()) == 2  # nothing was created
        # the CLI says the same, and exits non-zero
        (daemon.home / "g.yaml").write_text(gpu_yaml(gpus="T4:1", nodes=2))
        r = daemon.spotctl(
            "jobs", "launch", "-y", "-d", "--project", "ml", str(daemon.home / "g.yaml")
        )
        assert r.returncode == 1 and "GPU quota 2, 1 in use" in r.stderr
        assert len(await c.jobs()) == 2
        # other projects are not limited by ml's quota; unknown projects are refused
        await c.launch(gpu_yaml(gpus="T4:1", nodes=2), filename="g.yaml")
        with pytest.raises(ApiError, match="no project 'nope'"):
            await c.launch(gpu_yaml(), filename="g.yaml", project="nope")
        listed = json.loads(daemon.spotctl("project", "list", "-o", "json").stdout)
        assert listed == [
            {
                "name": "ml",
                "gpu_quota": 2.0,
                "max_jobs": None,
                "max_nodes_per_job": None,
                "max_services": None,
                "gpus_in_use": 1.0,
                "active_jobs": 2,
                "live_services": 0,
                "created_at": listed[0]["created_at"],
            }
        ]
        # a job that ends gives its GPUs back
        await c.cancel(first["id"])
        await wait_job(c, first["id"], lambda j: j["status"] in TERMINAL, timeout=30)
        again = await c.launch(gpu_yaml(gpus="T4:1", nodes=2), filename="g.yaml", project="ml")
        assert again["project"] == "ml"
        for j in (cpu, again):
            await c.cancel(j["id"])
    assert daemon.spotctl("project", "create", "ml").returncode == 1  # exists


async def test_project_tokens_isolate_projects_over_tcp(make_daemon) -> None:
    port = free_port()
    make_daemon(SPOTD_TCP=f"127.0.0.1:{port}", SPOTD_API_TOKEN="admin-s3cret")
    url = f"http://127.0.0.1:{port}"
    async with Client.connect(url=url, token="admin-s3cret") as admin:
        ml = (await admin.create_project("ml", gpu_quota=4))["token"]
        web = (await admin.create_project("web"))["token"]
        admin_job = await admin.launch("resources: {cpus: 1+}\nrun: sleep 60\n", filename="a.yaml")
    async with (
        Client.connect(url=url, token=ml) as c_ml,
        Client.connect(url=url, token=web) as c_web,
    ):
        ml_job = await c_ml.launch(gpu_yaml(gpus="T4:1"), filename="g.yaml")
        assert ml_job["project"] == "ml"  # the token's project, without asking
        web_job = await c_web.launch("resources: {cpus: 1+}\nrun: sleep 60\n", filename="w.yaml")
        assert [j["id"] for j in await c_ml.jobs()] == [ml_job["id"]]
        assert [j["id"] for j in await c_web.jobs()] == [web_job["id"]]
        for other in (web_job["id"], admin_job["id"]):
            for call in (c_ml.job(other), c_ml.cancel(other), c_ml.events(other)):
                with pytest.raises(ApiError) as e:
                    await call
                assert e.value.status == 404
        with pytest.raises(ApiError) as e:
            await c_ml.launch(gpu_yaml(), filename="g.yaml", project="web")
        assert e.value.status == 403
        with pytest.raises(ApiError) as e:  # admin-only routes
            await c_ml.create_project("mine")
        assert e.value.status == 403
        with pytest.raises(ApiError) as e:
            await c_ml.chaos("preempt", target=str(ml_job["id"]))
        assert e.value.status == 403
        assert [p["name"] for p in await c_ml.projects()] == ["ml"]
        # quota applies to launches made with the project token
        with pytest.raises(ApiError, match="GPU quota 4, 1 in use"):
            await c_ml.launch(gpu_yaml(gpus="T4:1", nodes=4), filename="g.yaml")
        cancelled = await c_web.cancel(web_job["id"])
        assert cancelled["status"] in ("CANCELLING", "CANCELLED")
        assert {r["key"] for r in (await c_ml.cost(by="project"))["rows"]} <= {"ml"}
        # services: the admin starts one for ml and one in default; ml's token sees its own
        async with Client.connect(url=url, token="admin-s3cret") as admin:
            mine = await serve_up(admin, SERVICE, name="mlsvc", project="ml")
            theirs = await serve_up(admin, SERVICE, name="defsvc")
            assert (mine["project"], theirs["project"]) == ("ml", "default")
            by_service = await _cost_when(admin, lambda keys: {"mlsvc", "defsvc"} <= keys)
            assert {r["key"] for r in by_service["rows"]} >= {"mlsvc", "defsvc"}
            by_project = await admin.cost(by="project")
            assert "ml" in {r["key"] for r in by_project["rows"]}
        seen = {r["key"] for r in (await c_ml.cost(by="service"))["rows"]}
        assert seen == {"mlsvc"}
        assert {r["key"] for r in (await c_ml.cost(by="project"))["rows"]} == {"ml"}
        with pytest.raises(ApiError) as e:  # services stay the admin's to manage
            await serve_down(c_ml, "mlsvc")
        assert e.value.status == 403
    async with aiohttp.ClientSession() as s:
        for token in ("spotdp_forged", "", "admin-s3cretX"):
            async with s.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 401
    async with Client.connect(url=url, token="admin-s3cret") as admin:
        for name in ("mlsvc", "defsvc"):
            await serve_down(admin, name)
        assert {j["project"] for j in await admin.jobs()} == {"default", "ml", "web"}
        for j in await admin.jobs():
            if j["status"] not in TERMINAL and j["status"] != "CANCELLING":
                await admin.cancel(j["id"])


SERVICE = """
resources: {cpus: 1+}
service:
  readiness_probe: {path: /health, initial_delay_seconds: 30}
  replicas: 1
run: exec python -m spotd.serve.stub_replica --port $SPOTD_REPLICA_PORT --id r$SPOTD_REPLICA_ID
"""


async def _cost_when(c: Client, ok: Any, *, timeout: float = 20) -> Any:
    """The cost report by service, once ``ok(keys)``: a replica counts once it has started."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        report = await c.cost(by="service")
        if ok({r["key"] for r in report["rows"]}):
            return report
        assert asyncio.get_running_loop().time() < deadline, report
        await asyncio.sleep(0.2)
