"""The Jobs pages in-process: a page of the list costs a bounded number of queries at 1,000
jobs (pagination, not a scan of every job's attempts), filters narrow it, a project's token
sees only its project, and the job page tells the preemption story."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event

from spotd.dashboard.jobs import PAGE_SIZE

from .conftest import Dash, seed_job


@contextmanager
def counting(dash: Dash) -> Iterator[list[str]]:
    """Every query (SELECT) the store runs meanwhile (not BEGIN and the like)."""
    seen: list[str] = []

    def note(conn, cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    engine = dash.store.store.engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def job_ids(html: str) -> list[int]:
    return [int(x) for x in re.findall(r'<tr data-job="(\d+)"', html)]


async def test_a_page_of_1000_jobs_costs_one_query_per_shown_job(dash: Dash) -> None:
    for i in range(1000):
        seed_job(dash.store.store, name=f"j{i}", provider="aws" if i % 10 == 0 else "local")
    with counting(dash) as queries:
        r = await dash.unix.get("/dashboard/")
        html = await r.text()
    assert r.status == 200
    assert job_ids(html) == list(range(1000, 1000 - PAGE_SIZE, -1)), "newest first, one page"
    assert "1000 jobs · page 1 of 20" in html
    assert len(queries) <= PAGE_SIZE + 3, len(queries)

    page3 = await (await dash.unix.get("/dashboard/?page=3")).text()
    assert job_ids(page3) == list(range(900, 900 - PAGE_SIZE, -1))

    with counting(dash) as queries:
        aws = await (await dash.unix.get("/dashboard/?provider=aws")).text()
    assert "100 jobs · page 1 of 2" in aws
    assert all(i % 10 == 1 for i in job_ids(aws))  # job ids start at 1: i=0 is job 1
    assert len(queries) <= PAGE_SIZE + 4, len(queries)


async def test_filters_and_bad_query_values(dash: Dash) -> None:
    seed_job(dash.store.store, name="a", project="alpha")
    seed_job(dash.store.store, name="b", project="default")
    html = await (await dash.unix.get("/dashboard/?project=alpha")).text()
    assert job_ids(html) == [1]
    html = await (await dash.unix.get("/dashboard/?status=SUCCEEDED")).text()
    assert job_ids(html) == [] and "No jobs match these filters" in html
    # a typo in a filter is no error: it is ignored
    r = await dash.unix.get("/dashboard/?status=NOPE&page=-4")
    assert r.status == 200 and job_ids(await r.text()) == [2, 1]


async def test_a_project_token_sees_only_its_project(dash: Dash) -> None:
    mine = seed_job(dash.store.store, name="mine", project="alpha")
    other = seed_job(dash.store.store, name="other", project="default")
    await dash.sign_in(dash.project_token)
    html = await (await dash.tcp.get("/dashboard/")).text()
    assert job_ids(html) == [mine.id]
    r = await dash.tcp.get(f"/dashboard/jobs/{other.id}")
    assert r.status == 404, "another project's job does not exist for this token"
    assert (await dash.tcp.get(f"/dashboard/jobs/{mine.id}")).status == 200


async def test_the_job_page_shows_both_attempts_and_the_preemption(dash: Dash) -> None:
    job = seed_job(dash.store.store, preempted=True)
    html = await (await dash.unix.get(f"/dashboard/jobs/{job.id}")).text()
    assert 'class="band band-spot" data-attempt="1"' in html
    assert 'class="band band-spot live" data-attempt="2"' in html
    kinds = re.findall(r'data-kind="(\w+)"', html)
    assert kinds == ["notice", "detected", "replacement"], kinds  # attempt 2 never ran
    assert "local/local-east-a · spot" in html and "local/local-west-a · spot" in html
    assert (await dash.unix.get("/dashboard/jobs/99")).status == 404
    assert (await dash.unix.get("/dashboard/jobs/abc")).status == 404


async def test_odd_paths_are_a_404_not_an_error(dash: Dash) -> None:
    seed_job(dash.store.store)
    for path in ("/dashboard/jobs/²", "/dashboard/jobs/1" + "0" * 30, "/dashboard/jobs/-1"):
        r = await dash.unix.get(path)
        assert r.status == 404, path
    r = await dash.unix.post("/dashboard/jobs/²/cancel", allow_redirects=False)
    assert r.status == 404
    r = await dash.unix.post(
        "/dashboard/services/a%2F%2Fevil.example/drain",
        data={"replica": "³"},
        allow_redirects=False,
    )
    assert r.status == 303 and r.headers["Location"].startswith("/dashboard/services/a%2F%2F")


async def test_a_deadline_job_page_shows_its_pace(dash: Dash) -> None:
    """A DEADLINE job's page has its pace: progress, how far ahead of or behind the
    uniform-progress line, the slack left; other jobs' pages have none."""
    store, now = dash.store.store, time.time()  # the dashboard's clock
    spec = {
        "run": "x",
        "job_recovery": {"strategy": "DEADLINE", "deadline": "2h", "expected_duration": "1h"},
    }
    job = store.create_job(
        name="paced",
        task_id_prefix="paced",
        spec_json=json.dumps(spec),
        spec_redacted_json="{}",
        resources="1x cpus=1+",
        submitted_at=now - 3600,  # half-way to the deadline: the line asks 30 min
        deadline=now + 3600,
    )
    store.update_job_fields(job.id, now=now, work_done_seconds=1200.0)
    html = await (await dash.unix.get(f"/dashboard/jobs/{job.id}")).text()
    tile = html[html.index('id="job-pace"') :][:400]
    assert "33%" in tile, tile  # 20 of 60 min; 10 min behind, 20 min of slack, to the second
    assert re.search(r"(9m 5\d|10m \d)s behind the line", tile), tile
    assert re.search(r"slack (19m 5\d|20m \d)s", tile), tile
    plain = seed_job(store)
    html = await (await dash.unix.get(f"/dashboard/jobs/{plain.id}")).text()
    assert 'id="job-pace"' not in html
