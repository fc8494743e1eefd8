"""When a running attempt's worker must look again, if no news wakes it first.

A job's worker is woken by news: a listing in which one of its instances appeared, changed
state or vanished (``spotd.control.observer``), or a heartbeat that changed its phase, exit code
or notice (``spotd.api.agents``). What no news announces is silence: a node whose heartbeats
stop becomes SUSPECT at ``suspect_after`` and LOST at ``lost_after``; one that never reported is
LOST at ``boot_timeout``; one a covering listing never showed is gone after ``listing_grace``
(``spotd.recovery.detection.classify``). So a healthy attempt sleeps until the first of those
moments, not one observe interval: at 10,000 running jobs, polling each every 0.5 s was 20,000
store round trips a second for nothing.

=========================================  ===============================================
a node                                     looked at again in
=========================================  ===============================================
not launched, or no covering listing yet   ``floor`` (the observe interval)
heartbeat 2 s ago, suspect_after 30        28 s
heartbeat 40 s ago (suspect), lost 120     60 s (the ceiling; lost at 80 s)
never reported, 5 s old, grace 30          25 s (listing grace), then the boot timeout
=========================================  ===============================================

The soonest node decides; the result is never below ``floor`` nor above ``ceiling``; a job with a
deadline is looked at every ``floor``.
"""

from __future__ import annotations

from collections.abc import Sequence

from spotd.control.observer import Observation
from spotd.recovery.detection import DetectionTimeouts
from spotd.store import InstanceRow, JobRow

__all__ = ["WATCH_CEILING", "recheck_in"]

# a healthy attempt is looked at at least this often (the idle-GPU rule counts in minutes)
WATCH_CEILING = 60.0
PAST = 0.01  # wake just after a threshold, not on it


def recheck_in(
    job: JobRow,
    rows: Sequence[InstanceRow],
    listing: Observation,
    *,
    now: float,
    timeouts: DetectionTimeouts,
    floor: float,
    ceiling: float = WATCH_CEILING,
) -> float:
    """Seconds until ``job``'s attempt (its nodes: ``rows``) could change verdict without news.
    A job with a deadline is looked at every ``floor``, as before: its slack shrinks by the
    second (``spotd.recovery.strategies.should_switch_to_ondemand``)."""
    if job.deadline is not None:
        return floor
    due = ceiling
    for r in rows:
        if r.instance_id is None or not listing.covers(r.created_at):
            return floor
        if r.last_heartbeat_at is None:
            marks = (r.created_at + timeouts.listing_grace, r.created_at + timeouts.boot_timeout)
        else:
            marks = (
                r.last_heartbeat_at + timeouts.suspect_after,
                r.last_heartbeat_at + timeouts.lost_after,
            )
        upcoming = [m - now for m in marks if m > now]
        if upcoming:
            due = min(due, min(upcoming) + PAST)
    return max(floor, due)
