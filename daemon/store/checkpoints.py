"""The newest checkpoint an agent reported for a job, recorded by whichever daemon heard it.

DEADLINE paces a job by the progress its checkpoints hold and moves it back to spot at a
fresh checkpoint (``spotd.control.deadline``). An agent reports to the daemon its
``daemon_url`` reaches, which with several daemons on one database need not be the one that
runs the job, and a restarted daemon has heard nothing yet: so the newest report is kept on
the job's row, where every daemon reads it.

Two daemons, or two heartbeats of one job (the nodes of a gang), may record at the same
moment; one conditional ``UPDATE`` records a report only if it is newer than the row's (by
attempt, then sync time), so the row never moves back to an older checkpoint and its work
done with it.
"""

from __future__ import annotations

from sqlalchemy import and_, case, or_, update

from spotd.store.base import StoreBase
from spotd.store.tables import Job, table_of
from spotd.types import TERMINAL_JOB_STATUSES

__all__ = ["ReportedCheckpointStore"]

_JOB = table_of(Job)
_ENDED = tuple(sorted(s.value for s in TERMINAL_JOB_STATUSES))


class ReportedCheckpointStore(StoreBase):
    """Jobs' newest reported checkpoints (not the checkpoints themselves:
    ``spotd.agent.checkpoints``)."""

    def record_checkpoint(
        self,
        job_id: int,
        *,
        attempt: int,
        synced_at: float,
        received_at: float,
        work_done: float,
    ) -> bool:
        """Record that ``attempt`` of job ``job_id`` synced a checkpoint at ``synced_at`` (the
        agent's clock) holding ``work_done`` seconds of work, received at ``received_at`` (this
        daemon's clock), if it is newer than the checkpoint on the row and the job has not
        ended. The work done is set when ``attempt`` is the job's current one (or later), or
        when it says more (an older attempt's last snapshot). True when recorded."""
        j = _JOB.c
        newer = or_(
            j.checkpoint_attempt.is_(None),
            j.checkpoint_attempt < attempt,
            and_(
                j.checkpoint_attempt == attempt,
                or_(j.checkpoint_synced_at.is_(None), j.checkpoint_synced_at < synced_at),
            ),
        )
        work = case(
            (or_(j.current_attempt <= attempt, j.work_done_seconds < work_done), work_done),
            else_=j.work_done_seconds,
        )
        stmt = (
            update(_JOB)
            .where(j.id == job_id, j.status.not_in(_ENDED), newer)
            .values(
                checkpoint_attempt=attempt,
                checkpoint_synced_at=synced_at,
                checkpoint_received_at=received_at,
                work_done_seconds=work,
            )
        )
        with self._write() as conn:
            return conn.execute(stmt).rowcount == 1
