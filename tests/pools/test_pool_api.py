"""The pools API in-process (a real store and app, no daemon): a project's token sees and
touches only its project's pools, bad requests are 4xx naming the problem, and a worker's ask
needs its instance's own token."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from spotd.api.app import make_app
from spotd.config import load_settings
from spotd.control import quota
from spotd.control.jobs import Controller
from spotd.metrics import DaemonMetrics
from spotd.store import AsyncStore, Store

ADMIN = "admin-token-for-tests"


@dataclasses.dataclass
class Api:
    store: AsyncStore
    tcp: TestClient[web.Request, web.Application]
    tokens: dict[str, str]

    async def call(self, who: str, method: str, path: str, body: Any = None) -> Any:
        token = ADMIN if who == "admin" else self.tokens[who]
        r = await self.tcp.request(
            method, path, json=body, headers={"Authorization": f"Bearer {token}"}
        )
        return r.status, await r.json()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = load_settings(tmp_path, env={"SPOTD_TCP": "127.0.0.1:1", "SPOTD_API_TOKEN": ADMIN})
    store = AsyncStore(Store.open(f"sqlite:///{tmp_path / 'state.db'}"))
    metrics = DaemonMetrics()
    ctl = Controller(settings=settings, store=store, providers={}, metrics=metrics)
    app = make_app(settings=settings, store=store, controller=ctl, metrics_=metrics, tcp=True)
    tokens = {}
    for name in ("ml", "web"):
        tokens[name] = quota.new_token()
        await store.create_project(
            name=name, gpu_quota=None, token_hash=quota.hash_token(tokens[name]), now=0.0
        )
        await store.create_pool(
            name=f"{name}-pool",
            project=name,
            workers=2,
            spec_json="{}",
            spec_redacted_json="{}",
            now=0.0,
        )
    async with TestClient(TestServer(app)) as tcp:
        yield Api(store, tcp, tokens)
    await store.close()


async def test_a_project_token_sees_only_its_pools(api: Api) -> None:
    status, pools = await api.call("ml", "GET", "/v1/pools")
    assert status == 200 and [p["name"] for p in pools] == ["ml-pool"]
    status, pools = await api.call("admin", "GET", "/v1/pools")
    assert [p["name"] for p in pools] == ["ml-pool", "web-pool"]
    job = {"yaml": "run: echo hi\n"}
    for method, path, body in [
        ("GET", "/v1/pools/web-pool", None),
        ("POST", "/v1/pools/web-pool/jobs", job),
        ("POST", "/v1/pools/web-pool/down", None),
        ("POST", "/v1/pools/web-pool/jobs/1/cancel", None),
        ("GET", "/v1/pools/web-pool/jobs/1/logs?follow=1", None),
    ]:
        status, answer = await api.call("ml", method, path, body)
        assert (status, answer["error"]) == (404, "no pool web-pool"), (path, answer)
    status, answer = await api.call("web", "GET", "/v1/pools/web-pool")
    assert status == 200 and answer["status"] == "UP"


async def test_jobs_are_queued_with_their_ranks(api: Api) -> None:
    body = {"yaml": "name: w\nenvs: {A: '1'}\nrun: echo $A\n", "num_jobs": 3}
    status, answer = await api.call("ml", "POST", "/v1/pools/ml-pool/jobs", body)
    assert status == 201, answer
    assert [(j["rank"], j["num_jobs"], j["status"]) for j in answer["jobs"]] == [
        (0, 3, "QUEUED"),
        (1, 3, "QUEUED"),
        (2, 3, "QUEUED"),
    ]
    status, pool = await api.call("ml", "GET", "/v1/pools/ml-pool")
    assert pool["job_counts"] == {"QUEUED": 3}
    assert "envs" not in pool["jobs"][0]  # a job's envs (and secrets) are never shown


@pytest.mark.parametrize(
    ("body", "status", "phrase"),
    [
        ({"yaml": "run: x\n", "num_jobs": 0}, 400, "num_jobs"),
        ({"yaml": "run: x\n", "num_jobs": 1001}, 400, "num_jobs"),
        ({"yaml": "setup: pip install x\nrun: x\n"}, 400, "`setup` in a pool job"),
        ({"yaml": "workdir: .\nrun: x\n"}, 400, "`workdir` in a pool job"),
        ({"yaml": "num_nodes: 2\nrun: x\n"}, 400, "num_nodes must be 1"),
        ({"yaml": "name: only\n"}, 400, "`run` is required"),
        ({"yaml": "run: [\n"}, 400, "invalid task YAML"),
    ],
)
async def test_a_job_a_pool_cannot_run_is_refused(
    api: Api, body: dict[str, Any], status: int, phrase: str
) -> None:
    got, answer = await api.call("admin", "POST", "/v1/pools/ml-pool/jobs", body)
    assert got == status, answer
    assert phrase in str(answer), answer


async def test_down_cancels_the_queue(api: Api) -> None:
    await api.call("ml", "POST", "/v1/pools/ml-pool/jobs", {"yaml": "run: x\n", "num_jobs": 2})
    status, answer = await api.call("ml", "POST", "/v1/pools/ml-pool/down")
    assert status == 200 and answer["status"] == "DOWN"
    status, _ = await api.call("ml", "GET", "/v1/pools/ml-pool")
    assert status == 404  # down: no longer listed


async def test_apply_needs_a_pool_section_and_a_good_name(api: Api) -> None:
    status, answer = await api.call("admin", "POST", "/v1/pools", {"pool": "x", "yaml": "run: a"})
    assert status == 400 and "no `pool:` section" in answer["error"], answer
    body = {"pool": "Bad Name", "yaml": "pool: {workers: 1}"}
    status, answer = await api.call("admin", "POST", "/v1/pools", body)
    assert status == 400 and answer["details"][0]["field"] == "pool", answer
    body = {"pool": "x", "yaml": "pool: {workers: 0}"}
    status, answer = await api.call("admin", "POST", "/v1/pools", body)
    assert status == 400 and "workers" in str(answer), answer


async def test_a_worker_ask_needs_its_instance_token(api: Api) -> None:
    r = await api.tcp.post(
        "/agent/v1/pool/next", json={"key": "j1-a1-n0"}, headers={"Authorization": "Bearer x"}
    )
    assert r.status == 401


async def test_one_job_is_cancelled_in_its_own_project_only(api: Api) -> None:
    body = {"yaml": "run: x\n", "num_jobs": 2}
    _, web_jobs = await api.call("web", "POST", "/v1/pools/web-pool/jobs", body)
    theirs = web_jobs["jobs"][0]["id"]
    _, ml_jobs = await api.call("ml", "POST", "/v1/pools/ml-pool/jobs", body)
    ours = ml_jobs["jobs"][0]["id"]
    # another project's job, even named through our own pool: 404, and it stays queued
    status, answer = await api.call("ml", "POST", f"/v1/pools/ml-pool/jobs/{theirs}/cancel")
    assert (status, answer["error"]) == (404, f"no job {theirs} in pool ml-pool"), answer
    status, answer = await api.call("ml", "POST", "/v1/pools/ml-pool/jobs/x/cancel")
    assert status == 400, answer
    status, answer = await api.call("ml", "POST", f"/v1/pools/ml-pool/jobs/{ours}/cancel")
    assert (status, answer["status"]) == (200, "CANCELLED"), answer
    status, answer = await api.call("ml", "POST", f"/v1/pools/ml-pool/jobs/{ours}/cancel")
    assert status == 409 and "ended already (CANCELLED)" in answer["error"], answer
    _, pool = await api.call("ml", "GET", "/v1/pools/ml-pool")
    assert pool["job_counts"] == {"CANCELLED": 1, "QUEUED": 1}
    _, pool = await api.call("web", "GET", "/v1/pools/web-pool")
    assert pool["job_counts"] == {"QUEUED": 2}


async def test_a_worker_question_needs_its_instance_token(api: Api) -> None:
    r = await api.tcp.post(
        "/agent/v1/pool/running",
        json={"key": "j1-a1-n0", "attempt_id": "q1-a1"},
        headers={"Authorization": "Bearer x"},
    )
    assert r.status == 401
