"""Migrations, schema versions, SQLite settings, and what survives a daemon restart."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text

import spotd.store.migrations as migrations_mod
import spotd.store.tables as tables_mod
from spotd.store import (
    LATEST_VERSION,
    AttemptRow,
    EventRow,
    InstanceRow,
    JobRow,
    ProjectRow,
    ReplicaRow,
    SchemaTooNew,
    ServiceRow,
    StaleTransition,
    Store,
    ZoneEventRow,
)
from spotd.types import JobStatus
from tests.factories import intent


def test_reopen_is_idempotent(open_store: Callable[[], Store], clock: Any) -> None:
    s1 = open_store()
    assert s1.schema_version() == LATEST_VERSION
    job = s1.create_job(
        name="a",
        task_id_prefix="p-j",
        spec_json="{}",
        spec_redacted_json="{}",
        resources="cpu",
        submitted_at=clock(),
    )
    s1.close()
    s2 = open_store()
    s3 = open_store()
    assert s3.schema_version() == LATEST_VERSION
    with s3.engine.connect() as conn:
        assert conn.execute(text("select count(*) from schema_version")).scalar_one() == 1
    assert s2.get_job(job.id) == job


def test_a_newer_schema_is_refused(open_store: Callable[[], Store]) -> None:
    s = open_store()
    with s.engine.begin() as conn:
        conn.execute(text("update schema_version set version = :v"), {"v": LATEST_VERSION + 1})
    s.close()
    with pytest.raises(SchemaTooNew, match=rf"schema version {LATEST_VERSION + 1}.*upgrade spotd"):
        open_store()


def test_later_migrations_run_once_on_older_databases_only(
    open_store: Callable[[], Store], db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = open_store()
    s.close()
    ran: list[int] = []

    def v2(conn: Connection) -> None:
        ran.append(2)
        conn.execute(text("create table extra_v2 (id integer primary key)"))

    nxt = migrations_mod.LATEST_VERSION + 1
    monkeypatch.setattr(migrations_mod, "MIGRATIONS", [*migrations_mod.MIGRATIONS, (nxt, v2)])
    monkeypatch.setattr(migrations_mod, "LATEST_VERSION", nxt)
    s = open_store()
    assert s.schema_version() == nxt and ran == [2]
    s.close()
    open_store()
    assert ran == [2]  # not again
    if db_url.startswith("sqlite"):
        fresh = Store.open(f"sqlite:///{tmp_path / 'fresh.db'}")
        try:
            assert fresh.schema_version() == nxt and ran == [2]  # a fresh db is created at LATEST
        finally:
            fresh.close()


def test_a_failed_migration_leaves_the_old_version(
    open_store: Callable[[], Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    open_store().close()

    def bad(conn: Connection) -> None:
        conn.execute(text("create table half_done (id integer primary key)"))
        raise RuntimeError("migration bug")

    before = migrations_mod.LATEST_VERSION
    monkeypatch.setattr(
        migrations_mod, "MIGRATIONS", [*migrations_mod.MIGRATIONS, (before + 1, bad)]
    )
    monkeypatch.setattr(migrations_mod, "LATEST_VERSION", before + 1)
    with pytest.raises(RuntimeError, match="migration bug"):
        open_store()
    monkeypatch.undo()
    s = open_store()
    assert s.schema_version() == before
    with s.engine.connect() as conn:  # DDL is transactional on both backends
        assert "half_done" not in _tables(conn)


def _tables(conn: Connection) -> set[str]:
    from sqlalchemy import inspect

    return set(inspect(conn).get_table_names())


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    s = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        with s.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() >= 5000
    finally:
        s.close()
    assert (tmp_path / "state.db").exists()


def test_urls_that_cannot_work_are_refused() -> None:
    with pytest.raises(ValueError, match="in-memory"):
        Store.open("sqlite://")
    with pytest.raises(ValueError, match="unsupported"):
        Store.open("mysql://root@localhost/x")


def test_everything_survives_close_and_reopen(
    open_store: Callable[[], Store], make_job: Any, make_attempt: Any, clock: Any
) -> None:
    s1 = open_store()
    job = s1.create_job(
        name="persist",
        task_id_prefix="spotd-h-j",
        spec_json='{"run":"x"}',
        spec_redacted_json='{"run":"x"}',
        resources="1x T4",
        submitted_at=clock(),
        project="research",
        deadline=clock() + 3600.25,
    )
    job = s1.transition_job(
        job.id,
        from_=[JobStatus.PENDING],
        to=JobStatus.STARTING,
        reason="attempt 1",
        now=clock.tick(0.123456),
        current_attempt=1,
    )
    a = s1.create_attempt(
        intent(
            job.id,
            now=clock(),
            provider="aws",
            region="us-east-1",
            zone="us-east-1a",
            instance_type="g4dn.xlarge",
            price_per_hour=0.1578,
            instances=[{"key": "k0", "node_rank": 0, "token": "secret-token"}],
        )
    )
    inst = s1.set_instance_id("k0", "i-0123")
    z = s1.add_zone_event(
        provider="aws",
        region="us-east-1",
        zone="us-east-1a",
        kind="PREEMPTED",
        at=clock(),
        detail="spot interruption",
    )
    events = s1.events()
    s1.close()

    s2 = open_store()
    assert s2.get_job(job.id) == job
    assert s2.get_attempt(a.id) == a
    assert s2.get_instance("k0") == inst
    assert s2.events() == events
    assert s2.zone_events(since=0) == [z]
    assert job.deadline == 1_700_003_600.25  # floats keep sub-second precision (double)
    assert events[-1].at == 1_700_000_000.123456


def test_rows_mirror_their_tables(store: Store) -> None:
    pairs = [
        (JobRow, tables_mod.Job),
        (AttemptRow, tables_mod.Attempt),
        (InstanceRow, tables_mod.Instance),
        (EventRow, tables_mod.Event),
        (ZoneEventRow, tables_mod.ZoneEvent),
        (ServiceRow, tables_mod.Service),
        (ReplicaRow, tables_mod.Replica),
        (ProjectRow, tables_mod.Project),
    ]
    for row, table in pairs:
        assert {f.name for f in dataclasses.fields(row)} == set(table.model_fields), row


def test_enums_are_stored_as_their_string_values(
    store: Store, make_job: Any, make_attempt: Any, clock: Any
) -> None:
    job = make_job()
    make_attempt(job.id, market="on-demand")
    with store.engine.connect() as conn:
        assert conn.execute(text("select status from job")).scalar_one() == "PENDING"
        m = conn.execute(text("select market, status from attempt")).one()
        assert tuple(m) == ("on-demand", "PROVISIONING")


def test_two_stores_on_one_database_see_each_other(
    open_store: Callable[[], Store], clock: Any
) -> None:
    """A restarted daemon (or a second reader) opens the same file while the first is open."""
    a, b = open_store(), open_store()
    job = a.create_job(
        name="x",
        task_id_prefix="p-j",
        spec_json="{}",
        spec_redacted_json="{}",
        resources="cpu",
        submitted_at=clock(),
    )
    assert b.get_job(job.id) == job
    b.transition_job(
        job.id,
        from_=[JobStatus.PENDING],
        to=JobStatus.CANCELLING,
        reason="cancel from the API",
        now=clock.tick(),
    )
    with pytest.raises(StaleTransition, match="CANCELLING"):
        a.transition_job(
            job.id,
            from_=[JobStatus.PENDING],
            to=JobStatus.STARTING,
            reason="attempt 1",
            now=clock.tick(),
        )
    assert [e.message.split(":")[0] for e in a.events(job_id=job.id)] == [
        "→ PENDING",
        "PENDING → CANCELLING",
    ]


def test_racing_writers_exactly_one_wins(open_store: Callable[[], Store], clock: Any) -> None:
    """Eight stores race the same CAS from eight threads: one wins, seven get StaleTransition
    (never 'database is locked'), and exactly one event is written."""
    stores = [open_store() for _ in range(8)]
    job = stores[0].create_job(
        name="race",
        task_id_prefix="p-j",
        spec_json="{}",
        spec_redacted_json="{}",
        resources="cpu",
        submitted_at=clock(),
    )
    barrier = threading.Barrier(len(stores), timeout=30)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(i: int, s: Store) -> None:
        barrier.wait()
        try:
            s.transition_job(
                job.id,
                from_=[JobStatus.PENDING],
                to=JobStatus.STARTING,
                reason=f"writer {i}",
                now=clock(),
                current_attempt=1,
            )
            out = "won"
        except StaleTransition:
            out = "stale"
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test checks
            out = f"error: {exc}"
        with lock:
            outcomes.append(out)

    threads = [threading.Thread(target=attempt, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["stale"] * 7 + ["won"], outcomes
    assert len([e for e in stores[0].events(job_id=job.id) if "→ STARTING" in e.message]) == 1
