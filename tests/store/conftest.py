"""Every store test runs against SQLite (a file under tmp_path) and PostgreSQL.

PostgreSQL comes from ``SPOTD_TEST_PG_URL`` (``export SPOTD_TEST_PG_URL=$(bash scripts/pg.sh
start)``). The session creates its own database ``spotd_test_<random>`` and drops it at the
end; each test gets a fresh schema in it (through ``search_path``), so tests never see each
other's rows. Without the variable the postgres cases are skipped locally, and fail in CI.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

from spotd.store import AttemptIntent, Store

PG_ENV = "SPOTD_TEST_PG_URL"
PG_HOWTO = f"export {PG_ENV}=$(bash scripts/pg.sh start)"


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[tuple[Engine, str]]:
    """(an AUTOCOMMIT engine on a fresh session database, that database's URL)."""
    base = os.environ.get(PG_ENV)
    if not base:
        if os.environ.get("CI"):
            pytest.fail(
                f"CI is set but {PG_ENV} is not: the postgres store tests must run ({PG_HOWTO})"
            )
        pytest.skip(f"PostgreSQL not configured: {PG_HOWTO} to run these")
    name = f"spotd_test_{secrets.token_hex(4)}"
    server = create_engine(base, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(base).set(database=name)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        yield engine, url.render_as_string(hide_password=False)
    finally:
        engine.dispose()
        with server.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        server.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    engine, url = request.getfixturevalue("pg_admin")
    schema = f"t_{secrets.token_hex(6)}"
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield (
            make_url(url)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def open_store(db_url: str) -> Iterator[Callable[[], Store]]:
    """Opens stores on the test's database (a restart is a second call); closes them all."""
    opened: list[Store] = []

    def _open() -> Store:
        s = Store.open(db_url)
        opened.append(s)
        return s

    try:
        yield _open
    finally:
        for s in opened:
            s.close()


@pytest.fixture
def store(open_store: Callable[[], Store]) -> Store:
    return open_store()


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def tick(self, dt: float = 1.0) -> float:
        self.t += dt
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_job(store: Store, clock: FakeClock) -> Callable[..., object]:
    def _make(name: str = "train", **kw: object) -> object:
        args: dict[str, object] = {
            "name": name,
            "task_id_prefix": "spotd-abcd-j",
            "spec_json": '{"run": "python train.py", "secrets": {"HF_TOKEN": "hf_secret"}}',
            "spec_redacted_json": (
                '{"run": "python train.py", "secrets": {"HF_TOKEN": "<redacted>"}}'
            ),
            "resources": "1x A100 (spot)",
            "submitted_at": clock(),
        }
        args.update(kw)
        return store.create_job(**args)  # type: ignore[arg-type]

    return _make


@pytest.fixture
def make_attempt(store: Store, clock: FakeClock) -> Callable[..., object]:
    def _make(job_id: int, n: int = 1, *, nodes: int = 2, **kw: object) -> object:
        args: dict[str, object] = {
            "job_id": job_id,
            "attempt": n,
            "provider": "local",
            "region": "local-east",
            "zone": "local-east-a",
            "instance_type": "gpu.a100",
            "market": "spot",
            "price_per_hour": 1.25,
            "num_nodes": nodes,
            "now": clock(),
            "instances": [
                {"key": f"j{job_id}-a{n}-n{r}", "node_rank": r, "token": f"tok-{job_id}-{n}-{r}"}
                for r in range(nodes)
            ],
        }
        args.update(kw)
        return store.create_attempt(AttemptIntent(**args))  # type: ignore[arg-type]

    return _make
