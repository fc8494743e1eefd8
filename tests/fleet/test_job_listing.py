"""GET /v1/jobs: a bounded number of statements however many jobs, and its pages.

The listing once read every job, then each job's attempts and each current attempt's nodes one
query at a time (1 + 2 per job). These tests count the statements the database receives
(SQLAlchemy's ``before_cursor_execute`` event) while the real route answers, on stores of
different sizes, and walk the pages through the ``Link`` header and the SDK.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import event

from spotd.api.app import make_app
from spotd.config import load_settings
from spotd.control.jobs import Controller
from spotd.metrics import DaemonMetrics
from spotd.store import AsyncStore, JobRow, Store
from spotd.types import JobStatus
from tests.factories import intent

ADMIN_TOKEN = "admin-token-for-listing-tests"


@dataclasses.dataclass
class Api:
    store: Store
    client: TestClient[web.Request, web.Application]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = load_settings(tmp_path, env={})
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    astore = AsyncStore(store)
    metrics = DaemonMetrics()
    ctl = Controller(settings=settings, store=astore, providers={}, metrics=metrics)
    app = make_app(settings=settings, store=astore, controller=ctl, metrics_=metrics)
    async with TestClient(TestServer(app)) as client:
        yield Api(store, client)
    await astore.close()


def new_job(store: Store, name: str, *, submitted_at: float, project: str = "default") -> JobRow:
    return store.create_job(
        name=name,
        task_id_prefix="t-",
        spec_json="{}",
        spec_redacted_json="{}",
        resources="cpu-1",
        submitted_at=submitted_at,
        project=project,
    )


def add_jobs(store: Store, n: int, *, project: str = "default", attempts: int = 2) -> list[int]:
    """``n`` jobs, each with ``attempts`` attempts of one node (a preempted one, then a live
    one), the last RUNNING: what a listing shows of a busy daemon."""
    ids = []
    for i in range(n):
        job = new_job(store, f"j{i}", submitted_at=1000.0 + i, project=project)
        for a in range(1, attempts + 1):
            store.create_attempt(
                intent(
                    job.id,
                    a,
                    now=1000.0 + i,
                    provider="fleet",
                    region="fleet-east",
                    zone="fleet-east-a",
                    instance_type="cpu-1",
                    price_per_hour=0.1,
                )
            )
        store.transition_job(
            job.id, from_=[JobStatus.PENDING], to=JobStatus.RUNNING, reason="test", now=2000.0
        )
        ids.append(job.id)
    return ids


@contextmanager
def statements(store: Store) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", count)


async def get(api: Api, query: str = "") -> tuple[list[dict[str, Any]], str | None]:
    r = await api.client.get(f"/v1/jobs{query}")
    assert r.status == 200, await r.text()
    nxt = r.links.get("next")
    return await r.json(), nxt["url"].path_qs if nxt else None


@pytest.mark.parametrize("query", ["", "?limit=20", "?status=RUNNING", "?limit=5&before=30"])
async def test_a_listing_costs_the_same_statements_at_5_and_60_jobs(api: Api, query: str) -> None:
    add_jobs(api.store, 5)
    with statements(api.store) as small:
        await get(api, query)
    add_jobs(api.store, 55)
    with statements(api.store) as large:
        rows, _ = await get(api, query)
    assert rows, "the listing must show jobs"
    assert len(large) == len(small) <= 3


async def test_without_a_limit_every_job_is_listed_newest_first_with_its_attempts(
    api: Api,
) -> None:
    ids = add_jobs(api.store, 12)
    rows, nxt = await get(api)
    assert nxt is None
    assert [r["id"] for r in rows] == sorted(ids, reverse=True)
    for r in rows:
        assert [a["attempt"] for a in r["attempts"]] == [1, 2]
        assert r["status"] == "RUNNING" and r["zone"] == "fleet-east-a"
        assert r["gpus"] == [{"node": 0, "at": None, "gpus": None}]


async def test_pages_follow_the_link_header_to_every_job_once(api: Api) -> None:
    ids = add_jobs(api.store, 23)
    seen: list[int] = []
    url: str | None = "/v1/jobs?limit=10"
    pages = 0
    while url is not None:
        r = await api.client.get(url)
        assert r.status == 200
        rows = await r.json()
        assert len(rows) <= 10
        seen.extend(j["id"] for j in rows)
        nxt = r.links.get("next")
        url = nxt["url"].path_qs if nxt else None
        pages += 1
    assert pages == 3
    assert seen == sorted(ids, reverse=True)


async def test_a_page_keeps_the_status_filter_in_its_next_link(api: Api) -> None:
    ids = add_jobs(api.store, 6)
    api.store.transition_job(
        ids[2], from_=[JobStatus.RUNNING], to=JobStatus.CANCELLING, reason="t", now=3000.0
    )
    first, nxt = await get(api, "?status=RUNNING&limit=3")
    assert nxt is not None and "status=RUNNING" in nxt
    r = await api.client.get(nxt)
    rest = await r.json()
    assert [j["id"] for j in first + rest] == [i for i in reversed(ids) if i != ids[2]]


@pytest.mark.parametrize(
    "query", ["?limit=0", "?limit=1001", "?limit=x", "?before=-1", "?before=99999999999"]
)
async def test_a_bad_page_is_a_400_naming_the_parameter(api: Api, query: str) -> None:
    r = await api.client.get(f"/v1/jobs{query}")
    assert r.status == 400
    name = query[1:].split("=")[0]
    assert name in (await r.json())["error"]


async def test_the_sdk_follows_pages_and_the_cli_shows_the_first(api: Api, tmp_path: Path) -> None:
    from spotd.sdk.client import Client

    ids = add_jobs(api.store, 7)
    session = api.client.session
    client = Client(session, str(api.client.make_url("")).rstrip("/"), None)
    every = await client.jobs(page_size=3)
    assert [j["id"] for j in every] == sorted(ids, reverse=True)
    page, cursor = await client.job_page(limit=4)
    assert [j["id"] for j in page] == sorted(ids, reverse=True)[:4]
    rest, end = await client.job_page(limit=4, before=cursor)
    assert [j["id"] for j in rest] == sorted(ids, reverse=True)[4:] and end is None


def test_the_reaper_reads_live_keys_and_reapable_nodes_in_one_query_each(
    api: Api,
) -> None:
    from spotd.types import AttemptStatus, EndReason

    ids = add_jobs(api.store, 30)
    api.store.transition_attempt(
        f"j{ids[0]}-a1",
        from_=[AttemptStatus.PROVISIONING],
        to=AttemptStatus.ENDED,
        reason="reclaimed",
        now=3000.0,
        end_reason=EndReason.PREEMPTED,
    )
    with statements(api.store) as seen:
        keys = api.store.live_instance_keys()
        ended = api.store.reapable_nodes("fleet")
    assert len(seen) == 2
    assert len(keys) == 60 and f"j{ids[0]}-a1-n0" in keys
    assert [(a.id, a.end_reason, n.key) for a, n in ended] == [
        (f"j{ids[0]}-a1", EndReason.PREEMPTED, f"j{ids[0]}-a1-n0")
    ]
    assert api.store.reapable_nodes("aws") == []
    api.store.mark_instance_terminated(f"j{ids[0]}-a1-n0", now=3001.0)
    assert api.store.reapable_nodes("fleet") == []
    assert f"j{ids[0]}-a1-n0" not in api.store.live_instance_keys()


async def test_a_job_on_demand_after_refused_returns_shows_where_it_runs(api: Api) -> None:
    """A DEADLINE job on on-demand attempt 2 tried spot beside it twice and was refused
    (attempts 3 and 4, LAUNCH_FAILED): the listing and the job show attempt 2's market, zone
    and nodes, not the refused spot attempt numbered last."""
    from spotd.types import AttemptStatus, EndReason

    job = new_job(api.store, "paced", submitted_at=1000.0)
    on_demand = {"market": "on-demand", "zone": "od-zone", "price_per_hour": 0.3}
    first = api.store.start_attempt(
        intent(job.id, 1, now=1000.0, zone="spot-zone"), from_=[JobStatus.PENDING], reason="go"
    )[1]
    api.store.transition_attempt(
        first.id,
        from_=[AttemptStatus.PROVISIONING],
        to=AttemptStatus.ENDED,
        reason="reclaimed",
        now=1100.0,
        end_reason=EndReason.PREEMPTED,
    )
    api.store.transition_job(
        job.id, from_=[JobStatus.STARTING], to=JobStatus.RECOVERING, reason="lost", now=1100.0
    )
    api.store.start_attempt(
        intent(job.id, 2, now=1200.0, **on_demand), from_=[JobStatus.RECOVERING], reason="od"
    )
    api.store.transition_job(
        job.id, from_=[JobStatus.STARTING], to=JobStatus.RUNNING, reason="up", now=1300.0
    )
    for n in (3, 4):  # make before break, refused: the job stays on attempt 2
        refused = api.store.create_attempt(intent(job.id, n, now=2000.0 + n, zone="spot-zone"))
        api.store.transition_attempt(
            refused.id,
            from_=[AttemptStatus.PROVISIONING],
            to=AttemptStatus.ENDED,
            reason="stockout",
            now=2000.0 + n,
            end_reason=EndReason.LAUNCH_FAILED,
        )
    rows, _ = await get(api)
    r = await api.client.get(f"/v1/jobs/{job.id}")
    assert r.status == 200
    for shown in (rows[0], await r.json()):
        assert [a["attempt"] for a in shown["attempts"]] == [1, 2, 3, 4]
        assert (shown["market"], shown["zone"]) == ("on-demand", "od-zone"), shown
        assert [n["node"] for n in shown["gpus"]] == [0]
