"""Tenants: GPU quotas refused at launch with quota and use, and project tokens over TCP."""

from __future__ import annotations

import json

import aiohttp
import pytest

from spotd.control.quota import check_quota, gpus_of, hash_token, new_token, validate_name
from spotd.sdk.client import ApiError, Client
from spotd.spec import load_tasks
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
def test_check_quota(quota, active, requested, refused) -> None:  # noqa: ANN001
    got = check_quota(project="ml", quota=quota, active=active, requested=requested)
    assert (got is not None) == refused
    if got is not None:
        assert str(quota) in got.message and f"{sum(active):g} in use" in got.message


def test_refusal_says_quota_and_use() -> None:
    got = check_quota(project="ml", quota=8, active=[4, 4, 0], requested=1)
    assert got is not None
    assert got.message == "project ml: GPU quota 8, 8 in use by 2 active jobs; this job asks for 1"


@pytest.mark.parametrize(
    ("resources", "nodes", "gpus"),
    [("{accelerators: 'A100:8'}", 1, 8), ("{accelerators: 'T4:1'}", 2, 2),
     ("{accelerators: {A100: 8, H100: 4}}", 1, 8), ("{cpus: 2+}", 3, 0)],
)
def test_gpus_reserved_by_a_task(resources: str, nodes: int, gpus: float) -> None:
    [task] = load_tasks("t.yaml", text=f"num_nodes: {nodes}\nresources: {resources}\nrun: x\n")
    assert gpus_of(task) == gpus


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
        cpu = await c.launch("resources: {cpus: 1+}\nrun: sleep 60\n", filename="c.yaml",
                             project="ml")
        with pytest.raises(ApiError) as refused:
            await c.launch(gpu_yaml(gpus="T4:1", nodes=2), filename="g.yaml", project="ml")
        assert refused.value.status == 403
        assert refused.value.message == (
            "project ml: GPU quota 2, 1 in use by 1 active job; this job asks for 2")
        assert refused.value.details["gpus_in_use"] == 1
        assert len(await c.jobs()) == 2  # nothing was created
        # the CLI says the same, and exits non-zero
        (daemon.home / "g.yaml").write_text(gpu_yaml(gpus="T4:1", nodes=2))
        r = daemon.spotctl("jobs", "launch", "-y", "-d", "--project", "ml",
                           str(daemon.home / "g.yaml"))
        assert r.returncode == 1 and "GPU quota 2, 1 in use" in r.stderr
        assert len(await c.jobs()) == 2
        # other projects are not limited by ml's quota; unknown projects are refused
        await c.launch(gpu_yaml(gpus="T4:1", nodes=2), filename="g.yaml")
        with pytest.raises(ApiError, match="no project 'nope'"):
            await c.launch(gpu_yaml(), filename="g.yaml", project="nope")
        listed = json.loads(daemon.spotctl("project", "list", "-o", "json").stdout)
        assert listed == [{"name": "ml", "gpu_quota": 2.0, "gpus_in_use": 1.0,
                           "active_jobs": 2, "created_at": listed[0]["created_at"]}]
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
    async with Client.connect(url=url, token=ml) as c_ml, \
            Client.connect(url=url, token=web) as c_web:
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
    async with aiohttp.ClientSession() as s:
        for token in ("spotdp_forged", "", "admin-s3cretX"):
            async with s.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 401
    async with Client.connect(url=url, token="admin-s3cret") as admin:
        assert {j["project"] for j in await admin.jobs()} == {"default", "ml", "web"}
        for j in await admin.jobs():
            if j["status"] not in TERMINAL and j["status"] != "CANCELLING":
                await admin.cancel(j["id"])
