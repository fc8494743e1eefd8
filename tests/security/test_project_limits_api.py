"""Project limits through the API: created, changed with ``PATCH /v1/projects/{name}``, and
held against jobs and services launched through a real daemon.

Before: the API took only ``gpu_quota``, no limit could be changed after creation, and services
belonged to no project (their GPUs counted against nobody's quota). After: ``max_jobs``,
``max_nodes_per_job`` and ``max_services`` are set at creation and changed by the admin; a
service reserves its GPUs from its project, and a job that would exceed the quota with the
service's share is refused.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from spotd.api.app import ROUTE_TABLE, make_app
from spotd.api.openapi import document
from spotd.config import load_settings
from spotd.control import quota
from spotd.control.jobs import Controller
from spotd.metrics import DaemonMetrics
from spotd.sdk.client import ApiError
from spotd.sdk.client_serve import serve_down, serve_up
from spotd.store import AsyncStore, Store
from tests.ops.conftest import gpu_yaml

ADMIN_TOKEN = "admin-token-for-limits"
CPU_JOB = "resources: {cpus: 1+}\nrun: sleep 60\n"


# -- the API in process: bodies, PATCH semantics, who may call ----------------------------


@dataclasses.dataclass
class Api:
    store: AsyncStore
    unix: TestClient[web.Request, web.Application]  # the admin
    tcp: TestClient[web.Request, web.Application]  # tokens


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = load_settings(
        tmp_path, env={"SPOTD_TCP": "127.0.0.1:1", "SPOTD_API_TOKEN": ADMIN_TOKEN}
    )
    store = AsyncStore(Store.open(f"sqlite:///{tmp_path / 'state.db'}"))
    metrics = DaemonMetrics()
    ctl = Controller(settings=settings, store=store, providers={}, metrics=metrics)
    apps = [
        make_app(settings=settings, store=store, controller=ctl, metrics_=metrics, tcp=tcp)
        for tcp in (False, True)
    ]
    async with TestClient(TestServer(apps[0])) as unix, TestClient(TestServer(apps[1])) as tcp:
        yield Api(store, unix, tcp)
    await store.close()


async def _create(api: Api, **body: Any) -> dict[str, Any]:
    r = await api.unix.post("/v1/projects", json={"name": "ml", **body})
    assert r.status == 201, await r.text()
    got: dict[str, Any] = await r.json()
    return got


@pytest.mark.parametrize(
    ("method", "path", "data", "phrase"),
    [
        ("POST", "/v1/projects", {"name": "p", "max_jobs": -1}, "greater than or equal to 0"),
        ("POST", "/v1/projects", {"name": "p", "max_services": 2_000_000}, "less than or equal"),
        ("POST", "/v1/projects", {"name": "p", "max_nodes_per_job": 1.5}, "valid integer"),
        ("POST", "/v1/projects", {"name": "p", "max_jobs": "2"}, "valid integer"),
        ("POST", "/v1/projects", {"name": "p", "max_jobs": True}, "valid integer"),
        ("PATCH", "/v1/projects/ml", {}, "nothing to change"),
        ("PATCH", "/v1/projects/ml", {"max_jobs": -1}, "greater than or equal to 0"),
        ("PATCH", "/v1/projects/ml", {"gpu_quota": 2e6}, "less than or equal to 1000000"),
        ("PATCH", "/v1/projects/ml", {"max_services": "1"}, "valid integer"),
        ("PATCH", "/v1/projects/ml", {"name": "other"}, "Extra inputs"),
        ("PATCH", "/v1/projects/ml", {"token_hash": "x"}, "Extra inputs"),
        ("PATCH", "/v1/projects/ML", {"max_jobs": 1}, "project name"),
        ("PATCH", "/v1/projects/a..", {"max_jobs": 1}, "project name"),
    ],
)
async def test_bad_bodies_and_names_are_400(
    api: Api, method: str, path: str, data: dict[str, Any], phrase: str
) -> None:
    await _create(api)
    r = await api.unix.request(method, path, json=data)
    body = await r.json()
    assert r.status == 400, body
    assert phrase in body["error"] + json.dumps(body.get("details")), body
    row = await api.store.get_project("ml")
    assert row is not None and row.max_jobs is None  # nothing changed


@pytest.mark.parametrize(
    ("created", "patch", "after"),
    [
        ({}, {"max_jobs": 2}, {"max_jobs": 2}),
        ({"max_jobs": 2, "gpu_quota": 8}, {"max_jobs": None}, {"gpu_quota": 8.0}),
        (
            {"max_jobs": 2, "max_services": 1},
            {"gpu_quota": 4, "max_nodes_per_job": 0},
            {"max_jobs": 2, "max_services": 1, "gpu_quota": 4.0, "max_nodes_per_job": 0},
        ),
        ({"gpu_quota": 8, "max_services": 3}, {"gpu_quota": None, "max_services": None}, {}),
    ],
)
async def test_patch_changes_only_what_it_names(
    api: Api, created: dict[str, Any], patch: dict[str, Any], after: dict[str, Any]
) -> None:
    p = await _create(api, **created)
    assert p["token"].startswith(quota.TOKEN_PREFIX)
    limits = dict.fromkeys(("gpu_quota", "max_jobs", "max_nodes_per_job", "max_services"))
    assert {k: p[k] for k in limits} == {**limits, **created}
    r = await api.unix.patch("/v1/projects/ml", json=patch)
    got = await r.json()
    assert r.status == 200, got
    assert {k: got[k] for k in limits} == {**limits, **after}
    assert (got["gpus_in_use"], got["active_jobs"], got["live_services"]) == (0, 0, 0)
    r = await api.unix.get("/v1/projects/ml")
    assert r.status == 200 and await r.json() == got
    [listed] = await (await api.unix.get("/v1/projects")).json()
    assert listed == got
    events = [e for e in await api.store.events() if e.kind == "project.update"]
    assert len(events) == 1


async def test_only_the_admin_patches_and_reads_a_project(api: Api) -> None:
    token = (await _create(api, max_jobs=1))["token"]
    other = quota.new_token()
    await api.store.create_project(
        name="web", gpu_quota=None, token_hash=quota.hash_token(other), now=0.0
    )
    as_ml = {"Authorization": f"Bearer {token}"}
    for method, path in (
        ("PATCH", "/v1/projects/ml"),
        ("PATCH", "/v1/projects/web"),
        ("GET", "/v1/projects/ml"),
    ):
        r = await api.tcp.request(method, path, headers=as_ml, json={"max_jobs": 100})
        assert r.status == 403, await r.text()
    row = await api.store.get_project("ml")
    assert row is not None and row.max_jobs == 1
    r = await api.tcp.get("/v1/projects", headers=as_ml)
    assert [p["name"] for p in await r.json()] == ["ml"]  # its own, with its limits
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = await api.tcp.patch("/v1/projects/ml", headers=admin, json={"max_jobs": 3})
    assert r.status == 200 and (await r.json())["max_jobs"] == 3
    r = await api.tcp.patch("/v1/projects/nope", headers=admin, json={"max_jobs": 3})
    assert r.status == 404


def test_the_document_publishes_patch() -> None:
    doc = document(ROUTE_TABLE)
    op = doc["paths"]["/v1/projects/{name}"]["patch"]
    assert op["x-spotd-callers"] == ["admin"] and "403" in op["responses"]
    body = doc["components"]["schemas"]["ProjectPatchBody"]
    assert set(body["properties"]) == {"gpu_quota", "max_jobs", "max_nodes_per_job", "max_services"}


# -- a real daemon: jobs and services held to their project's limits ----------------------


def _refused(exc: pytest.ExceptionInfo[ApiError], phrase: str) -> None:
    assert exc.value.status == 403, exc.value
    assert phrase in exc.value.message, exc.value.message


async def test_limits_hold_for_jobs_and_patch_takes_effect(daemon) -> None:
    r = daemon.spotctl("project", "create", "ml", "--max-jobs", "1", "--max-nodes-per-job", "2")
    assert r.returncode == 0, r.stderr
    assert "limits: unlimited GPUs, 1 jobs, 2 nodes/job, unlimited services" in r.stdout
    async with daemon.client() as c:
        with pytest.raises(ApiError) as e:  # 3 nodes at 2
            await c.launch(CPU_JOB.replace("run:", "num_nodes: 3\nrun:"), project="ml")
        _refused(e, "project ml: at most 2 nodes per job; this job asks for 3")
        assert e.value.details == {
            "project": "ml",
            "limit": "max_nodes_per_job",
            "quota": 2,
            "in_use": 0,
            "requested": 3,
        }
        first = await c.launch(CPU_JOB, project="ml")
        with pytest.raises(ApiError) as e:  # the second active job
            await c.launch(CPU_JOB, project="ml")
        _refused(e, "project ml: at most 1 active jobs, 1 active")
        assert [j["id"] for j in await c.jobs()] == [first["id"]]  # nothing was created
        # the admin raises the limit: the next launch sees it
        raised = await c.update_project("ml", max_jobs=2)
        assert (raised["max_jobs"], raised["active_jobs"]) == (2, 1)
        second = await c.launch(CPU_JOB, project="ml")
        with pytest.raises(ApiError) as e:
            await c.launch(CPU_JOB, project="ml")
        _refused(e, "at most 2 active jobs, 2 active")
        # and through the CLI: unlimited jobs, nodes lowered to 1
        r = daemon.spotctl(
            "project", "update", "ml", "--unlimited", "max-jobs", "--max-nodes-per-job", "1"
        )
        assert r.returncode == 0, r.stderr
        assert "unlimited jobs, 1 nodes/job" in r.stdout
        third = await c.launch(CPU_JOB, project="ml")
        with pytest.raises(ApiError) as e:
            await c.launch(CPU_JOB.replace("run:", "num_nodes: 2\nrun:"), project="ml")
        _refused(e, "at most 1 nodes per job")
        for args, why in (
            ((), "nothing to change"),
            (("--max-jobs", "2", "--unlimited", "max-jobs"), "max_jobs is given and named"),
            (("--max-jobs", "-1"), "-1 is not in the range x>=0"),
        ):
            bad = daemon.spotctl("project", "update", "ml", *args)
            assert bad.returncode != 0 and why in bad.stderr, bad.stderr
        [listed] = json.loads(daemon.spotctl("project", "list", "-o", "json").stdout)
        assert listed["active_jobs"] == 3 and listed["max_jobs"] is None
        for j in (first, second, third):
            await c.cancel(j["id"])


def _gpu_service(name: str, *, replicas: int) -> str:
    return f"""
name: {name}
resources: {{accelerators: 'T4:1'}}
service:
  readiness_probe: {{path: /health, initial_delay_seconds: 30}}
  replicas: {replicas}
run: exec python -m spotd.serve.stub_replica --port $SPOTD_REPLICA_PORT --id r$SPOTD_REPLICA_ID
"""


async def test_a_service_reserves_gpus_from_its_project(daemon) -> None:
    async with daemon.client() as c:
        await c.create_project("ml", gpu_quota=3, max_services=1)
        svc = await serve_up(c, _gpu_service("gpusvc", replicas=2), project="ml")
        assert (svc["project"], svc["gpus"]) == ("ml", 2.0)  # 2 replicas × T4:1
        p = await c.project("ml")
        assert (p["gpus_in_use"], p["live_services"], p["active_jobs"]) == (2.0, 1, 0)
        with pytest.raises(ApiError) as e:  # 2 + 2 > 3
            await c.launch(gpu_yaml(gpus="T4:1", nodes=2), filename="g.yaml", project="ml")
        _refused(e, "project ml: GPU quota 3, 2 in use by 0 active jobs and 1 service")
        job = await c.launch(gpu_yaml(gpus="T4:1"), filename="g.yaml", project="ml")  # 3 of 3
        with pytest.raises(ApiError) as e:  # a second live service
            await serve_up(c, _gpu_service("other", replicas=1), project="ml")
        _refused(e, "project ml: at most 1 live services, 1 live")
        await c.update_project("ml", max_services=None)
        with pytest.raises(ApiError) as e:  # now the GPUs refuse it, with the numbers
            await serve_up(c, _gpu_service("other", replicas=1), project="ml")
        _refused(e, "GPU quota 3, 3 in use by 1 active job and 1 service; this service asks for 1")
        assert e.value.details["gpus_requested"] == 1
        with pytest.raises(ApiError) as e:
            await serve_up(c, _gpu_service("other", replicas=1), project="nope")
        assert e.value.status == 404
        # the default project has no limits, and the admin's services go there unless named
        dflt = await serve_up(c, _gpu_service("dflt", replicas=1))
        assert dflt["project"] == "default"
        await c.cancel(job["id"])
        for name in ("gpusvc", "dflt"):
            await serve_down(c, name)
