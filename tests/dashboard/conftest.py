"""The dashboard in-process: the API's applications for the unix socket and the TCP listener
with the dashboard mounted as the composition root mounts it, over a real SQLite store and a
real (not started) controller; seeding helpers for jobs and attempts."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from spotd.api.app import make_app
from spotd.config import load_settings
from spotd.control import quota
from spotd.control.jobs import Controller
from spotd.dashboard import Dashboard, mount_dashboard
from spotd.metrics import DaemonMetrics
from spotd.store import AsyncStore, AttemptIntent, JobRow, Store
from spotd.types import AttemptStatus, EndReason, Market

ADMIN_TOKEN = "admin-token-for-dashboard-tests"


@dataclasses.dataclass
class Dash:
    store: AsyncStore
    dashboard: Dashboard
    unix: TestClient[web.Request, web.Application]
    tcp: TestClient[web.Request, web.Application]
    project_token: str  # project "alpha"

    @property
    def origin(self) -> str:
        return f"http://{self.tcp.host}:{self.tcp.port}"

    async def sign_in(self, token: str = ADMIN_TOKEN) -> str:
        """Sign the TCP client in with ``token``; the session's CSRF token."""
        r = await self.tcp.post(
            "/dashboard/login",
            data={"token": token},
            headers={"Origin": self.origin},
            allow_redirects=False,
        )
        assert r.status == 303, await r.text()
        page = await (await self.tcp.get("/dashboard/")).text()
        m = re.search(r'data-csrf="([^"]+)"', page)
        assert m, page[:500]
        return m.group(1)


@pytest.fixture
async def dash(tmp_path: Path) -> AsyncIterator[Dash]:
    settings = load_settings(
        tmp_path, env={"SPOTD_TCP": "127.0.0.1:1", "SPOTD_API_TOKEN": ADMIN_TOKEN}
    )
    store = AsyncStore(Store.open(f"sqlite:///{tmp_path / 'state.db'}"))
    metrics = DaemonMetrics()
    ctl = Controller(settings=settings, store=store, providers={}, metrics=metrics)
    dashboard = Dashboard(settings=settings, store=store, controller=ctl, services=None)
    apps = []
    for tcp in (False, True):
        app = make_app(settings=settings, store=store, controller=ctl, metrics_=metrics, tcp=tcp)
        mount_dashboard(app, dashboard, tcp=tcp)
        apps.append(app)
    token = quota.new_token()
    store.store.create_project(
        name="alpha", gpu_quota=None, token_hash=quota.hash_token(token), now=0.0
    )
    async with TestClient(TestServer(apps[0])) as unix, TestClient(TestServer(apps[1])) as tcp:
        yield Dash(store, dashboard, unix, tcp, token)
    await store.close()


def seed_job(
    store: Store,
    *,
    name: str = "train",
    project: str = "default",
    provider: str = "local",
    preempted: bool = False,
    now: float = 1_000_000.0,
) -> JobRow:
    """A job with one attempt on ``provider`` (two when ``preempted``: the first ended by a
    preemption with a notice)."""
    job = store.create_job(
        name=name,
        task_id_prefix=name,
        spec_json="{}",
        spec_redacted_json="{}",
        resources="1x cpus=1+",
        submitted_at=now - 100,
        project=project,
    )
    for n in (1, 2) if preempted else (1,):
        start = now - 90 + (n - 1) * 40
        store.create_attempt(
            AttemptIntent(
                job_id=job.id,
                attempt=n,
                provider=provider,
                region=f"{provider}-east" if n == 1 else f"{provider}-west",
                zone=f"{provider}-east-a" if n == 1 else f"{provider}-west-a",
                instance_type="cpu-1",
                market=Market.SPOT,
                price_per_hour=0.5,
                num_nodes=1,
                now=start,
                instances=[{"key": f"{job.id}-{n}", "node_rank": 0, "token": f"t{job.id}-{n}"}],
            )
        )
        if preempted and n == 1:
            aid = f"j{job.id}-a1"
            store.transition_attempt(
                aid,
                from_=[AttemptStatus.PROVISIONING],
                to=AttemptStatus.RUNNING,
                reason="run started",
                now=start + 5,
            )
            store.transition_attempt(
                aid,
                from_=[AttemptStatus.RUNNING],
                to=AttemptStatus.ENDED,
                reason="preempted",
                now=start + 30,
                end_reason=EndReason.PREEMPTED,
                end_detail="interruption notice from the provider",
            )
    return job
