"""The one compare-and-set helper every status change goes through, table by table.

Each case seeds one row in its first status (a job PENDING, an attempt PROVISIONING, a
service STARTING, a replica PROVISIONING) and drives ``cas.compare_and_set`` / ``set_fields``
directly, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from spotd.serve.replica_state import ReplicaStatus
from spotd.store import NotFound, ServiceStatus, StaleTransition, Store, cas
from spotd.store.instances import INSTANCES
from spotd.store.jobs import ATTEMPTS, JOBS
from spotd.store.services import REPLICAS, SERVICES
from spotd.types import AttemptStatus, JobStatus
from tests.factories import intent

T0 = 1_700_000_000.0


@dataclass(frozen=True)
class Seeded:
    subject: cas.Subject[Any]
    row_id: Any
    status: enum.Enum  # the status it was created in
    links: dict[str, Any]  # what its events must name: job_id, attempt_id, service_id


def _job(store: Store) -> Seeded:
    job = store.create_job(
        name="j",
        task_id_prefix="p-j",
        spec_json="{}",
        spec_redacted_json="{}",
        resources="cpu",
        submitted_at=T0,
    )
    return Seeded(JOBS, job.id, JobStatus.PENDING, {"job_id": job.id})


def _attempt(store: Store) -> Seeded:
    job_id = _job(store).row_id
    a = store.create_attempt(intent(job_id, now=T0))
    return Seeded(
        ATTEMPTS, a.id, AttemptStatus.PROVISIONING, {"job_id": job_id, "attempt_id": a.id}
    )


def _service(store: Store) -> Seeded:
    svc = store.create_service(
        name="svc",
        spec_json="{}",
        spec_redacted_json="{}",
        lb_port=8000,
        lb_control_port=8001,
        lb_token="lb",
        target=1,
        now=T0,
    )
    return Seeded(SERVICES, svc.id, ServiceStatus.STARTING, {"service_id": svc.id})


def _replica(store: Store) -> Seeded:
    sid = _service(store).row_id
    r = store.create_replica(
        service_id=sid,
        version=1,
        provider="local",
        region="r",
        zone="z",
        instance_type="cpu.small",
        market="spot",
        price_per_hour=0.01,
        port=9000,
        token="rt",
        now=T0,
    )
    return Seeded(
        REPLICAS, r.key, ReplicaStatus.PROVISIONING, {"service_id": sid, "attempt_id": r.key}
    )


SEED: dict[str, Callable[[Store], Seeded]] = {
    "job": _job,
    "attempt": _attempt,
    "service": _service,
    "replica": _replica,
}

J, A, S, R = JobStatus, AttemptStatus, ServiceStatus, ReplicaStatus
TEXT = {"job": "message", "attempt": "end_detail", "service": "message", "replica": "message"}

# (table, from_, to, moves): the row starts in its first status (PENDING, PROVISIONING, ...)
CAS_CASES: list[tuple[str, list[Any], enum.Enum, bool]] = [
    ("job", [J.PENDING], J.STARTING, True),
    ("job", [J.PENDING, J.RECOVERING], J.CANCELLING, True),
    ("job", ["PENDING"], J.STARTING, True),  # a status's string value works as well
    ("job", [J.RUNNING, J.RECOVERING], J.STARTING, False),
    ("job", [], J.STARTING, False),  # nothing allowed: never moves
    ("attempt", [A.PROVISIONING], A.SETTING_UP, True),
    ("attempt", [A.PROVISIONING, A.SETTING_UP], A.RUNNING, True),
    ("attempt", [A.RUNNING], A.SETTING_UP, False),
    ("service", [S.STARTING], S.READY, True),
    ("service", [S.READY, S.NO_REPLICA], S.SHUTTING_DOWN, False),
    ("replica", [R.PROVISIONING], R.STARTING, True),
    ("replica", [R.STARTING, R.READY], R.DRAINING, False),
]


@pytest.mark.parametrize(("table", "from_", "to", "moves"), CAS_CASES)
def test_compare_and_set_moves_only_from_an_allowed_status(
    store: Store, table: str, from_: list[Any], to: enum.Enum, moves: bool
) -> None:
    seeded = SEED[table](store)
    before = store.events()
    if moves:
        with store.engine.begin() as conn:
            row = cas.compare_and_set(
                conn,
                seeded.subject,
                seeded.row_id,
                from_=from_,
                to=to,
                reason="why",
                now=T0 + 1,
                values={TEXT[table]: "moved"},
            )
        assert row.status is to and getattr(row, TEXT[table]) == "moved"
        [event] = store.events(since_id=before[-1].id)
        assert event.message == f"{seeded.status} → {to}: why"
        assert event.data == {"from": str(seeded.status), "to": str(to)}
        return
    with store.engine.begin() as conn, pytest.raises(StaleTransition) as err:
        cas.compare_and_set(
            conn,
            seeded.subject,
            seeded.row_id,
            from_=from_,
            to=to,
            reason="why",
            now=T0 + 1,
            values={TEXT[table]: "moved"},
        )
    e = err.value
    assert (e.what, e.row_id, e.current, e.to) == (table, seeded.row_id, seeded.status, str(to))
    assert e.expected == tuple(str(s) for s in from_)
    assert f"it is {seeded.status}" in str(e)
    with store.engine.connect() as conn:
        assert cas.fetch(conn, seeded.subject, seeded.row_id).status is seeded.status
    assert store.events() == before  # no event for a transition that did not happen


@pytest.mark.parametrize("table", sorted(SEED))
def test_the_event_names_the_row_it_changed(store: Store, table: str) -> None:
    seeded = SEED[table](store)
    nxt = {"job": J.STARTING, "attempt": A.SETTING_UP, "service": S.READY, "replica": R.STARTING}[
        table
    ]
    with store.engine.begin() as conn:
        cas.compare_and_set(
            conn,
            seeded.subject,
            seeded.row_id,
            from_=[seeded.status],
            to=nxt,
            reason="r",
            now=T0 + 5,
            values={},
            data={"extra": 1},
        )
    event = store.events()[-1]
    assert (event.kind, event.at) == (f"{table}.status", T0 + 5)
    links = {"job_id": event.job_id, "attempt_id": event.attempt_id, "service_id": event.service_id}
    assert links == {"job_id": None, "attempt_id": None, "service_id": None, **seeded.links}
    assert event.data == {"from": str(seeded.status), "to": str(nxt), "extra": 1}


@pytest.mark.parametrize("table", sorted(SEED))
@pytest.mark.parametrize("fails", ["the event", "a later step"])
def test_the_change_and_its_event_commit_together(
    store: Store, table: str, fails: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever part of the transaction fails, neither the status nor the event is kept."""
    seeded = SEED[table](store)
    before = store.events()
    nxt = {"job": J.STARTING, "attempt": A.SETTING_UP, "service": S.READY, "replica": R.STARTING}[
        table
    ]

    def broken(*a: Any, **kw: Any) -> Any:
        raise RuntimeError("disk full")

    if fails == "the event":
        monkeypatch.setattr(cas, "write_event", broken)
    with pytest.raises(RuntimeError, match="disk full"), store.engine.begin() as conn:
        cas.compare_and_set(
            conn,
            seeded.subject,
            seeded.row_id,
            from_=[seeded.status],
            to=nxt,
            reason="r",
            now=T0 + 1,
            values={},
        )
        broken()
    monkeypatch.undo()
    with store.engine.connect() as conn:
        assert cas.fetch(conn, seeded.subject, seeded.row_id).status is seeded.status
    assert store.events() == before


@pytest.mark.parametrize(
    ("subject", "row_id"),
    [(JOBS, 404), (ATTEMPTS, "j4-a4"), (SERVICES, 404), (REPLICAS, "s4-r4")],
)
def test_a_missing_row_is_not_found_not_stale(
    store: Store, subject: cas.Subject[Any], row_id: Any
) -> None:
    with store.engine.begin() as conn, pytest.raises(NotFound, match=f"no {subject.what} "):
        cas.compare_and_set(
            conn,
            subject,
            row_id,
            from_=["PENDING"],
            to=JobStatus.STARTING,
            reason="r",
            now=T0,
            values={},
        )


# (table, note): set_fields logs "<what>.update" only when given a note
SET_CASES = [("job", None), ("job", "waiting 30s"), ("service", None), ("service", "lb up")]


@pytest.mark.parametrize(("table", "note"), SET_CASES)
def test_set_fields_leaves_the_status_and_logs_only_when_asked(
    store: Store, table: str, note: str | None
) -> None:
    seeded = SEED[table](store)
    before = store.events()
    with store.engine.begin() as conn:
        row = cas.set_fields(
            conn,
            seeded.subject,
            seeded.row_id,
            {"message": "noted"},
            note=None if note is None else cas.Note(note, T0 + 2),
        )
    assert row.status is seeded.status and row.message == "noted"
    new = store.events()[len(before) :]
    if note is None:
        assert new == []
        return
    [event] = new
    assert (event.kind, event.message, event.at) == (f"{table}.update", note, T0 + 2)
    assert event.data == {"fields": {"message": "noted"}}
    assert {k: getattr(event, k) for k in seeded.links} == seeded.links


@pytest.mark.parametrize("sets_something", [True, False])
@pytest.mark.parametrize(
    ("subject", "row_id"), [(JOBS, 404), (SERVICES, 404), (REPLICAS, "s4-r4"), (INSTANCES, "k")]
)
def test_set_fields_on_a_missing_row_is_not_found(
    store: Store, subject: cas.Subject[Any], row_id: Any, sets_something: bool
) -> None:
    values = {"log_offset" if subject is INSTANCES else "message": 1} if sets_something else {}
    with store.engine.begin() as conn, pytest.raises(NotFound, match=f"no {subject.what} "):
        cas.set_fields(conn, subject, row_id, values)


class Color(enum.StrEnum):
    RED = "red"


@pytest.mark.parametrize(
    ("subject", "fields", "outcome"),
    [
        (JOBS, {"recoveries": 2, "next_try_at": None}, {"recoveries": 2, "next_try_at": None}),
        (JOBS, {"message": Color.RED}, {"message": "red"}),  # enums go in as their values
        (
            JOBS,
            {"status": "RUNNING"},
            r"not settable job fields: \['status'\] "
            r"\(status changes go through transition_job\)",
        ),
        (JOBS, {"task_id": "x"}, r"not settable job fields: \['task_id'\]$"),
        (SERVICES, {"lb_pid": 42, "target": 3}, {"lb_pid": 42, "target": 3}),
        (SERVICES, {"version": 2}, r"not settable service fields: \['version'\]"),
        (REPLICAS, {"url": "http://a:1"}, {"url": "http://a:1"}),
        (REPLICAS, {"lb_pid": 1, "status": "READY"}, r"\['lb_pid', 'status'\].*transition_replica"),
    ],
)
def test_checked_fields(subject: cas.Subject[Any], fields: dict[str, Any], outcome: Any) -> None:
    if isinstance(outcome, str):
        with pytest.raises(TypeError, match=outcome):
            cas.checked_fields(subject, fields)
    else:
        assert cas.checked_fields(subject, fields) == outcome
