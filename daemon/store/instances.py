"""Instances: the nodes of an attempt, keyed by our idempotency key (``j<job>-a<n>-n<rank>``).

The row exists before the provider is asked (see ``create_attempt``); the provider's id comes
later through :meth:`InstanceStore.set_instance_id`, and the agent's reports through
:meth:`InstanceStore.record_heartbeat`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, case, select, update

from spotd.store.base import StoreBase
from spotd.store.cas import SetTo, Subject, enum_value, fetch, set_fields
from spotd.store.errors import StoreError
from spotd.store.rows import InstanceRow
from spotd.store.tables import Instance, table_of
from spotd.types import InstanceState

__all__ = ["INSTANCES", "RESTARTING", "InstanceStore"]

# set by a node replacement (spotd.store.nodes) until the agent restarts its run: the phases
# its agent may report meanwhile; the stopped run's other reports (and exit code) do not count
RESTARTING = "restarting"
RESTART_PHASES = frozenset({RESTARTING, "waiting"})

INSTANCES = Subject(
    what="instance",
    table=table_of(Instance),
    key="key",
    row=InstanceRow.from_mapping,
    links=(("job_id", "job_id"), ("attempt_id", "attempt_id")),
)


@functools.cache
def _unless_restarting_sql(column: str) -> ColumnElement[Any]:
    it = INSTANCES.table
    value = bindparam(f"v_{column}", type_=it.c[column].type)
    return case((it.c.phase == RESTARTING, it.c[column]), else_=value)


def _unless_restarting(column: str, value: str | int) -> SetTo:
    """``value``, or the column as it is while the node is ``RESTARTING`` (one UPDATE: a
    report in flight when the replacement was decided cannot slip past it)."""
    return SetTo(_unless_restarting_sql(column), {f"v_{column}": value})


@functools.cache
def _instances_where(by_attempt: bool, by_job: bool, live_only: bool) -> Select[Any]:
    it = INSTANCES.table
    q = select(it).order_by(it.c.job_id, it.c.attempt_id, it.c.node_rank)
    if by_attempt:
        q = q.where(it.c.attempt_id == bindparam("k_attempt"))
    if by_job:
        q = q.where(it.c.job_id == bindparam("k_job"))
    if live_only:
        q = q.where(it.c.terminated.is_(False))
    return q


class InstanceStore(StoreBase):
    """The instances part of :class:`~spotd.store.Store`."""

    def set_instance_id(
        self, key: str, instance_id: str, *, state: str | None = None, now: float | None = None
    ) -> InstanceRow:
        """Record the provider's id for our key. Idempotent; a *different* id fails loudly.

        ``now``: when the provider answered, kept as ``launched_at`` (the first answer's time
        stands): a listing begun before it may rightly not show the instance yet, however
        long ago the intent was written (``spotd.control.attempts.node_evidence``)."""
        with self._write() as conn:
            row = fetch(conn, INSTANCES, key, for_update=True)
            if row.instance_id is not None and row.instance_id != instance_id:
                raise StoreError(
                    f"instance {key} already has provider id {row.instance_id}, got {instance_id}"
                )
            values: dict[str, Any] = {"instance_id": instance_id}
            if now is not None and row.launched_at is None:
                values["launched_at"] = now
            if state is not None:
                values["state"] = enum_value(state)
            return set_fields(conn, INSTANCES, key, values)

    def instances(
        self,
        *,
        attempt_id: str | None = None,
        job_id: int | None = None,
        live_only: bool = False,
    ) -> list[InstanceRow]:
        """Instance rows ordered by attempt and node rank; ``live_only``: not terminated."""
        q = _instances_where(attempt_id is not None, job_id is not None, live_only)
        with self._read() as conn:
            rows = conn.execute(q, {"k_attempt": attempt_id, "k_job": job_id}).mappings()
            return [InstanceRow.from_mapping(m) for m in rows]

    def get_instance(self, key: str) -> InstanceRow | None:
        return self._get(INSTANCES, key)

    def require_instance(self, key: str) -> InstanceRow:
        """The instance; :class:`NotFound` ("no instance j7-a2-n0") if there is none."""
        return self._require(INSTANCES, key)

    def instance_by_token(self, token: str) -> InstanceRow | None:
        if not token:
            return None
        it = INSTANCES.table
        with self._read() as conn:
            m = conn.execute(select(it).where(it.c.token == token)).mappings().first()
            return None if m is None else InstanceRow.from_mapping(m)

    def hold_agent_config(self, key: str, agent_json: str) -> InstanceRow:
        """Keep the agent's config (JSON) for the instance's bootstrap. Not once the bootstrap
        happened: a relaunch of the same node finds the instance, which has its config."""
        it = INSTANCES.table
        with self._write() as conn:
            conn.execute(
                update(it)
                .where(it.c.key == key, it.c.bootstrapped_at.is_(None))
                .values(agent_json=agent_json)
            )
            return fetch(conn, INSTANCES, key)

    def take_agent_config(self, key: str, *, now: float) -> str | None:
        """The held config, handed out once: the same transaction marks the bootstrap used and
        drops the copy (the secrets stay in the task's spec only). None: already taken."""
        it = INSTANCES.table
        with self._write() as conn:
            row = fetch(conn, INSTANCES, key, for_update=True)
            if row.bootstrapped_at is not None or row.agent_json is None:
                return None
            conn.execute(
                update(it).where(it.c.key == key).values(bootstrapped_at=now, agent_json=None)
            )
            return row.agent_json

    def record_heartbeat(
        self,
        key: str,
        *,
        now: float,
        phase: str | None,
        exit_code: int | None,
        notice_deadline: float | None,
        gpus_json: str | None = None,
        log_offset: int | None = None,
    ) -> InstanceRow:
        """An agent reported. None leaves a field as it was: an exit code or a notice, once
        reported, is not unreported by a later heartbeat that omits it. ``log_offset``: how
        much of its log the daemon now holds, in the same write."""
        values: dict[str, Any] = {"last_heartbeat_at": now}
        if log_offset is not None:
            values["log_offset"] = log_offset
        if gpus_json is not None:
            values.update(gpus_json=gpus_json, gpus_at=now)
        if phase is not None:
            restart_word = phase in RESTART_PHASES
            values["phase"] = phase if restart_word else _unless_restarting("phase", phase)
        if exit_code is not None:
            values["exit_code"] = _unless_restarting("exit_code", exit_code)
        if notice_deadline is not None:
            values["notice_deadline"] = notice_deadline
        with self._write() as conn:
            return set_fields(conn, INSTANCES, key, values)

    def record_keepalives(self, beats: Mapping[str, float]) -> None:
        """Many agents' keep-alives (nothing changed but the time) in one transaction: each
        instance's ``last_heartbeat_at`` moves forward to its time, never back."""
        if not beats:
            return
        it = INSTANCES.table
        stmt = (
            update(it)
            .where(
                it.c.key == bindparam("k"),
                (it.c.last_heartbeat_at.is_(None)) | (it.c.last_heartbeat_at < bindparam("t")),
            )
            .values(last_heartbeat_at=bindparam("t"))
        )
        with self._write() as conn:
            conn.execute(stmt, [{"k": k, "t": t} for k, t in sorted(beats.items())])

    def set_log_offset(self, key: str, offset: int) -> InstanceRow:
        with self._write() as conn:
            return set_fields(conn, INSTANCES, key, {"log_offset": offset})

    def mark_instance_terminated(self, key: str, *, now: float) -> InstanceRow:
        """Idempotent: the first call's time stands. A config held for a bootstrap that never
        came is dropped."""
        it = INSTANCES.table
        with self._write() as conn:
            row = fetch(conn, INSTANCES, key, for_update=True)
            if not row.terminated:
                conn.execute(
                    update(it)
                    .where(it.c.key == key)
                    .values(
                        terminated=True,
                        terminated_at=now,
                        state=InstanceState.TERMINATED.value,
                        agent_json=None,  # a config never fetched is not kept past the instance
                    )
                )
            return fetch(conn, INSTANCES, key)
