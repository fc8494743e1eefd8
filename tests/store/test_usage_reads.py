"""The cost report's reads (``spotd.control.usage``): every attempt and replica in a fixed
number of queries, whatever the number of jobs (one query per job made the dashboard's cost
page and ``GET /v1/cost`` slow at ten thousand jobs), and only the asking project's."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from spotd.control.usage import usages
from spotd.store import AsyncStore, Store
from tests.factories import intent

JOBS = 30


async def test_usages_read_a_fixed_number_of_queries_and_only_the_projects(
    store: Store, make_job: Any, clock: Any
) -> None:
    mine: set[int] = set()
    for i in range(JOBS):
        project = "a" if i % 3 else "b"
        job = make_job(project=project)
        store.create_attempt(intent(job.id, now=clock()))
        store.create_attempt(intent(job.id, 2, now=clock.tick()))
        if project == "a":
            mine.add(job.id)
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        statements.append(sql)

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        got = await usages(AsyncStore(store), [], project="a")
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
    assert {u.job_id for u in got} == mine
    assert len(got) == 2 * len(mine)
    assert len(statements) <= 4, statements  # attempts, jobs, services, replicas
    everyone = await usages(AsyncStore(store), [])
    assert len(everyone) == 2 * JOBS
