"""Issue 14, item 8 — hygiene: what a long-lived daemon must not accumulate.

- an abandoned ``logs --follow`` stops at once (before: it polled the store every 0.2 s for as
  long as the job ran, with nobody reading);
- events, zone events and attempt logs have a retention (before: kept forever);
- per-job and per-replica state in the controllers goes when the job ends, the replica ends or
  the service is down (before: parsed tasks, launch times, idle-GPU states, notices, workers'
  supervised tasks were kept for every job and replica the daemon ever ran).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from spotd.api.app import make_app
from spotd.api.common import SERVICES
from spotd.api.routes import AGENT
from spotd.config import ConfigError, Settings, load_settings
from spotd.control.jobs import Controller
from spotd.control.retention import DAY, ZONE_HISTORY_SECONDS, Cutoffs, retention_plan
from spotd.control.serve_config import ServeSettings
from spotd.control.services import ServiceController
from spotd.files.private import private_dir
from spotd.metrics import DaemonMetrics
from spotd.sdk.client import Client
from spotd.sdk.client_serve import serve_down, serve_status, serve_up
from spotd.server import build_providers
from spotd.store import AsyncStore, Store
from tests.conftest import FAST_ENV, DaemonProc, kill_instance_groups
from tests.services.conftest import SERVE_ENV, cleanup_services, stub_yaml

NOW = 100 * DAY

# -- retention: the plan ------------------------------------------------------------------


def settings_with(**kw: float) -> Settings:
    return Settings(home=Path("/nonexistent"), db_url="sqlite:////nonexistent/x.db", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "want"),
    [
        ({}, Cutoffs(events=NOW - 30 * DAY, zone_events=NOW - 14 * DAY, logs=NOW - 14 * DAY)),
        (
            {"retention_events_days": 0, "retention_zone_events_days": 0, "retention_logs_days": 0},
            Cutoffs(events=None, zone_events=None, logs=None),  # 0: keep forever
        ),
        (
            {"retention_zone_events_days": 0.5},  # never below the day placement reads
            Cutoffs(
                events=NOW - 30 * DAY, zone_events=NOW - ZONE_HISTORY_SECONDS, logs=NOW - 14 * DAY
            ),
        ),
        (
            {"retention_events_days": 1, "retention_logs_days": 0.25},
            Cutoffs(events=NOW - DAY, zone_events=NOW - 14 * DAY, logs=NOW - DAY / 4),
        ),
    ],
)
def test_retention_plan(kw: dict[str, float], want: Cutoffs) -> None:
    assert retention_plan(NOW, settings_with(**kw)) == want


def test_retention_settings_from_the_environment(tmp_path: Path) -> None:
    s = load_settings(tmp_path, env={"SPOTD_RETENTION_EVENTS_DAYS": "7"})
    assert (s.retention_events_days, s.retention_zone_events_days, s.retention_logs_days) == (
        7.0,
        14.0,
        14.0,
    )
    with pytest.raises(ConfigError, match="retention_logs_days"):
        load_settings(tmp_path, env={"SPOTD_RETENTION_LOGS_DAYS": "-1"})


@pytest.mark.parametrize(
    ("variable", "value", "phrase"),
    [
        ("SPOTD_OBSERVE_INTERVAL", "nan", "finite"),
        ("SPOTD_LOST_AFTER", "inf", "finite"),
        ("SPOTD_RETENTION_EVENTS_DAYS", "Infinity", "finite"),
        ("SPOTD_HEARTBEAT_SECONDS", "-0.5", "0 or more"),
        ("SPOTD_SUSPECT_AFTER", "soon", "a number"),
    ],
)
def test_numeric_settings_are_finite_and_not_negative(
    tmp_path: Path, variable: str, value: str, phrase: str
) -> None:
    with pytest.raises(ConfigError, match=phrase):
        load_settings(tmp_path, env={variable: value})


# -- an abandoned follower ends -------------------------------------------------------------


async def followers(session: aiohttp.ClientSession) -> float:
    async with session.get("http://spotd/metrics") as r:
        text = await r.text()
    m = re.search(r"^spotd_log_followers (\S+)$", text, re.M)
    assert m, "spotd_log_followers is published"
    return float(m.group(1))


async def until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def test_a_follower_ends_when_its_client_goes_away(daemon: DaemonProc) -> None:
    async with daemon.client() as c:
        job = await c.launch("name: chatty\nrun: echo started; sleep 120\n")
    connector = aiohttp.UnixConnector(path=str(daemon.socket))
    async with aiohttp.ClientSession(connector=connector) as session:
        assert await followers(session) == 0
        follower = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(daemon.socket)))
        resp = await follower.get(f"http://spotd/v1/jobs/{job['id']}/logs", params={"follow": "1"})
        seen = b""
        while b"started" not in seen:
            seen += await asyncio.wait_for(resp.content.readany(), 30)
        assert await followers(session) == 1
        resp.close()  # the client goes away while the job still runs
        await follower.close()

        async def gone() -> bool:
            return await followers(session) == 0

        await until(gone, 3.0, "the follower still runs after its client left")


# -- per-job and per-replica state ----------------------------------------------------------


@dataclass
class InProcess:
    """The daemon's parts, wired as spotd.server wires them, in this process."""

    settings: Settings
    ctl: Controller
    services: ServiceController

    def job_state(self) -> dict[str, int]:
        c = self.ctl
        return {
            **c.memory.sizes(),
            "idle": c.idle.size(),
            "notices": len(c.attempts.notices),
            "workers": c.workers.size(),
            # the supervisor's own table, finished tasks included
            "job tasks": sum(1 for n in c.sup._tasks if n.startswith("job:")),
        }

    def service_state(self) -> dict[str, int]:
        s = self.services
        return {
            **s.memory.sizes(),
            "prober": s.prober.size(),
            "drainer": s.drainer.size(),
            "scaler": s.scaler.size(),
            "backoff": s.backoff.size(),
            "lbs": s.lbs.size(),
            "workers": s.workers.size() + s.probers.size(),
            "service tasks": sum(
                1 for n in s.sup._tasks if n.split(":")[0] in ("service", "probe")
            ),
        }


@pytest.fixture
async def inproc() -> AsyncIterator[InProcess]:
    async with running_in_process() as d:
        yield d


@contextlib.asynccontextmanager
async def running_in_process() -> AsyncIterator[InProcess]:
    home = Path(f"/tmp/spotd-h{time.monotonic_ns() % 10**9}")
    settings = load_settings(home, env=dict(FAST_ENV))
    for d in (settings.logs_dir, settings.checkpoints_dir, settings.local_dir):
        private_dir(d)
    store = AsyncStore(Store.open(settings.db_url))
    providers = build_providers(settings)
    metrics = DaemonMetrics()
    ctl = Controller(settings=settings, store=store, providers=providers, metrics=metrics)
    services = ServiceController(
        settings=settings,
        store=store,
        observer=ctl.observer,
        metrics=metrics,
        serve=ServeSettings.from_env(SERVE_ENV),
    )
    app = make_app(settings=settings, store=store, controller=ctl, metrics_=metrics)
    agent_app = make_app(
        settings=settings, store=store, controller=ctl, metrics_=metrics, tcp=True, callers=AGENT
    )
    runners = []
    for a in (app, agent_app):
        a[SERVICES] = services
        runners.append(web.AppRunner(a, handle_signals=False, access_log=None))
        await runners[-1].setup()
    try:
        await ctl.start()
        await services.start()
        await web.UnixSite(runners[0], str(settings.socket_path)).start()
        await web.UnixSite(runners[1], str(settings.agent_socket_path)).start()
        yield InProcess(settings, ctl, services)
    finally:
        await services.shutdown()
        await ctl.shutdown()
        for r in runners:
            await r.cleanup()
        for p in providers.values():
            await p.close()
        await store.close()
        cleanup_services(home)
        kill_instance_groups(home)
        import shutil

        shutil.rmtree(home, ignore_errors=True)


def client(d: InProcess) -> Client:
    return Client.connect(settings=d.settings, autostart=False)


async def test_state_of_ended_jobs_and_a_downed_service_is_dropped(inproc: InProcess) -> None:
    async with client(inproc) as c:
        jobs = [await c.launch(f"name: short{i}\nrun: echo {i}\n") for i in range(3)]
        slow = await c.launch("name: slow\nrun: sleep 120\n")
        await serve_up(c, stub_yaml(name="hyg", replicas="replicas: 1"), filename="s.yaml")
        for j in jobs:
            assert (await c.wait(j["id"], timeout=60))["status"] == "SUCCEEDED"

        async def slow_running() -> bool:
            return (await c.job(slow["id"]))["status"] == "RUNNING"

        await until(slow_running, 60, "the slow job never ran")
        assert inproc.ctl.memory.sizes()["tasks"] >= 1  # it is kept while the job runs
        await c.cancel(slow["id"])
        await c.wait(slow["id"], timeout=60)

        async def replica_up() -> bool:
            st = await serve_status(c, "hyg")
            return any(r["status"] in ("STARTING", "READY") for r in st.get("replicas", []))

        await until(replica_up, 60, "the service never got a replica")
        assert inproc.services.memory.sizes()["tasks"] == 1
        await serve_down(c, "hyg")

        async def down() -> bool:
            return (await serve_status(c, "hyg"))["status"] == "DOWN"

        await until(down, 60, "the service never went down")
        await c.request("GET", "/v1/services", params={"all": "1"})  # DOWN, shown: not kept

    empty_jobs = dict.fromkeys(inproc.job_state(), 0)
    empty_services = dict.fromkeys(inproc.service_state(), 0)

    async def all_dropped() -> bool:
        return inproc.job_state() == empty_jobs and inproc.service_state() == empty_services

    try:
        await until(all_dropped, 10, "state kept")
    except AssertionError:
        pytest.fail(f"kept: jobs {inproc.job_state()}, services {inproc.service_state()}")
