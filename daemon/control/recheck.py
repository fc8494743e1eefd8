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

The soonest node decides; the result is never below ``floor`` nor above ``ceiling``. A DEADLINE
job is also looked at when its move to another market could first be due
(``spotd.control.deadline.next_look``): on spot, when a lower bound of its slack reaches the
margin; on on-demand, at its next checkpoint (news). Until #16's eighth round every job with a
deadline was looked at every ``floor``: 10,000 DEADLINE jobs did not all reach RUNNING in
10 minutes (``bench/fleet.py --deadline``).
"""

from __future__ import annotations

from collections.abc import Sequence

from spotd.control.observer import Observation
from spotd.recovery.detection import DetectionTimeouts
from spotd.store import InstanceRow

__all__ = ["WATCH_CEILING", "recheck_in"]

# a healthy attempt is looked at at least this often (the idle-GPU rule counts in minutes)
WATCH_CEILING = 60.0
PAST = 0.01  # wake just after a threshold, not on it


def recheck_in(
    rows: Sequence[InstanceRow],
    listing: Observation,
    *,
    now: float,
    timeouts: DetectionTimeouts,
    floor: float,
    ceiling: float = WATCH_CEILING,
    market_due: float | None = None,
) -> float:
    """Seconds until an attempt (its nodes: ``rows``) could change verdict without news,
    or a DEADLINE job's market move could be due (``market_due``, from
    ``spotd.control.deadline.next_look``; None: no such rule)."""
    due = ceiling if market_due is None else min(ceiling, market_due + PAST)
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
