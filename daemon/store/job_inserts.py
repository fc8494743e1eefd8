"""The inserts that start a job's rows: the job with its first event (``insert_job``), an
attempt's intent — the attempt, one instance row per node and its event (``insert_attempt``).
Each runs on the caller's connection, inside the transaction that decides it
(:mod:`spotd.store.jobs`: a launch's quota check, a placement's compare-and-set).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Insert, Update, bindparam

from spotd.store.cas import Subject, write_event
from spotd.store.rows import AttemptRow, JobRow
from spotd.store.tables import Attempt, Instance, Job, table_of
from spotd.types import AttemptStatus, InstanceState, JobStatus, Market

__all__ = ["ATTEMPTS", "JOBS", "AttemptIntent", "insert_attempt", "insert_job"]

JOBS = Subject(
    what="job",
    table=table_of(Job),
    key="id",
    row=JobRow.from_mapping,
    links=(("job_id", "id"),),
    # gpus: the reservation is written once, by the insert that admitted the job
    settable=frozenset(Job.model_fields) - {"id", "status", "task_id", "gpus"},
)
ATTEMPTS = Subject(
    what="attempt",
    table=table_of(Attempt),
    key="id",
    row=AttemptRow.from_mapping,
    links=(("job_id", "job_id"), ("attempt_id", "id")),
)


# built once, run with parameters (see spotd.store.cas: a statement built per call costs
# SQLAlchemy several times what running it does)


@functools.cache
def _job_insert() -> Insert:
    stmt: Insert = JOBS.table.insert().returning(JOBS.table.c.id)
    return stmt


@functools.cache
def _job_task_id() -> Update:
    jt = JOBS.table
    stmt: Update = jt.update().where(jt.c.id == bindparam("k_id")).returning(*jt.c)
    return stmt


@functools.cache
def _attempt_insert() -> Insert:
    stmt: Insert = ATTEMPTS.table.insert().returning(*ATTEMPTS.table.c)
    return stmt


def insert_job(
    conn: Connection,
    *,
    name: str,
    task_id_prefix: str,
    spec_json: str,
    spec_redacted_json: str,
    resources: str,
    submitted_at: float,
    project: str,
    deadline: float | None,
    gpus: float,
) -> JobRow:
    res = conn.execute(
        _job_insert(),
        {
            "name": name,
            "task_id": f"pending-{uuid.uuid4().hex}",
            "status": JobStatus.PENDING.value,
            "spec_json": spec_json,
            "spec_redacted_json": spec_redacted_json,
            "resources": resources,
            "project": project,
            "submitted_at": submitted_at,
            "deadline": deadline,
            "gpus": gpus,
            "owner": conn.get_execution_options().get("spotd_daemon"),  # its creator runs it
            "message": "submitted",
        },
    )
    job_id = int(res.scalar_one())
    row = conn.execute(_job_task_id(), {"k_id": job_id, "task_id": f"{task_id_prefix}{job_id}"})
    job = JobRow.from_mapping(row.mappings().one())
    write_event(
        conn,
        kind="job.status",
        message=f"→ PENDING: submitted {name!r} ({resources})",
        now=submitted_at,
        job_id=job_id,
        data={"from": None, "to": JobStatus.PENDING.value, "project": project, "gpus": gpus},
    )
    return job


@dataclass(frozen=True, slots=True)
class AttemptIntent:
    """An attempt as a placement decides it, before any provider call: where, what, at what
    price, and one ``{"key", "node_rank", "token"}`` per node (``instance_id`` unset until
    ``set_instance_id``)."""

    job_id: int
    attempt: int
    provider: str
    region: str
    zone: str
    instance_type: str
    market: Market | str
    price_per_hour: float
    num_nodes: int
    now: float
    instances: Sequence[Mapping[str, Any]]


def insert_attempt(conn: Connection, intent: AttemptIntent) -> AttemptRow:
    """The attempt (PROVISIONING), its instance rows and its event, on ``conn``."""
    aid = f"j{intent.job_id}-a{intent.attempt}"
    market_value = Market(intent.market).value
    inserted = conn.execute(
        _attempt_insert(),
        {
            "id": aid,
            "job_id": intent.job_id,
            "attempt": intent.attempt,
            "status": AttemptStatus.PROVISIONING.value,
            "provider": intent.provider,
            "region": intent.region,
            "zone": intent.zone,
            "instance_type": intent.instance_type,
            "market": market_value,
            "price_per_hour": intent.price_per_hour,
            "num_nodes": intent.num_nodes,
            "created_at": intent.now,
            "end_detail": "",
        },
    ).mappings()
    row = AttemptRow.from_mapping(inserted.one())
    if intent.instances:
        conn.execute(
            table_of(Instance).insert(),
            [
                {
                    "key": i["key"],
                    "attempt_id": aid,
                    "job_id": intent.job_id,
                    "node_rank": int(i["node_rank"]),
                    "provider": intent.provider,
                    "instance_id": None,
                    "region": intent.region,
                    "zone": intent.zone,
                    "state": InstanceState.PENDING.value,
                    "token": i["token"],
                    "created_at": intent.now,
                    "log_offset": 0,
                    "terminated": False,
                }
                for i in intent.instances
            ],
        )
    write_event(
        conn,
        kind="attempt.status",
        message=(
            f"→ PROVISIONING: attempt {intent.attempt} in "
            f"{intent.provider}/{intent.region}/{intent.zone}, {intent.num_nodes}x "
            f"{intent.instance_type} {market_value} ${intent.price_per_hour:.4f}/h"
        ),
        now=intent.now,
        job_id=intent.job_id,
        attempt_id=aid,
        data={"from": None, "to": AttemptStatus.PROVISIONING.value},
    )
    return row
