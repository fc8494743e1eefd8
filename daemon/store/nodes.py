"""A node replacement inside a live attempt (``spotd.control.node_replace``), in one transaction.

The replacements' instance rows are the intent — written before any provider call, with no
instance id, so the job worker launches them as it finishes any interrupted launch — and go
in with the survivors' phase set to ``restarting`` (their run restarts with the new node
list; see ``InstanceStore.record_heartbeat``), the attempt back to PROVISIONING and one
``node.replaced`` event naming the lost nodes and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import update

from spotd.store.base import StoreBase
from spotd.store.cas import compare_and_set, fetch, write_event
from spotd.store.instances import INSTANCES, RESTARTING
from spotd.store.jobs import ATTEMPTS
from spotd.store.rows import AttemptRow
from spotd.types import AttemptStatus, InstanceState

__all__ = ["NodeStore"]

LIVE = (AttemptStatus.PROVISIONING, AttemptStatus.SETTING_UP, AttemptStatus.RUNNING)


class NodeStore(StoreBase):
    """The node-replacement part of :class:`~spotd.store.Store`."""

    def replace_nodes(
        self,
        attempt_id: str,
        *,
        lost: Sequence[str],
        replacements: Sequence[Mapping[str, Any]],
        restart: Sequence[str],
        reason: str,
        now: float,
    ) -> AttemptRow:
        """Replace the ``lost`` nodes of a live attempt by ``replacements`` (one
        ``{"key", "node_rank", "token"}`` each) and mark the ``restart`` keys ``restarting``."""
        it = INSTANCES.table
        with self._write() as conn:
            attempt = fetch(conn, ATTEMPTS, attempt_id)
            if replacements:
                conn.execute(
                    it.insert(),
                    [
                        {
                            "key": r["key"],
                            "attempt_id": attempt_id,
                            "job_id": attempt.job_id,
                            "node_rank": int(r["node_rank"]),
                            "provider": attempt.provider,
                            "instance_id": None,
                            "region": attempt.region,
                            "zone": attempt.zone,
                            "state": InstanceState.PENDING.value,
                            "token": r["token"],
                            "created_at": now,
                            "log_offset": 0,
                            "terminated": False,
                        }
                        for r in replacements
                    ],
                )
            if restart:
                conn.execute(
                    update(it)
                    .where(it.c.key.in_(list(restart)), it.c.attempt_id == attempt_id)
                    .values(phase=RESTARTING)
                )
            write_event(
                conn,
                kind="node.replaced",
                message=reason,
                now=now,
                job_id=attempt.job_id,
                attempt_id=attempt_id,
                data={
                    "lost": list(lost),
                    "replacements": [r["key"] for r in replacements],
                    "restart": list(restart),
                },
            )
            return compare_and_set(
                conn,
                ATTEMPTS,
                attempt_id,
                from_=LIVE,
                to=AttemptStatus.PROVISIONING,
                reason=reason,
                now=now,
                values={},
            )
