"""Which attempt a job's status describes (``spotd.store.current_attempt_of``): the API's
market and zone, the listing's nodes, the dashboard's log tail and the placement's "last
attempt" all read it. Not simply the highest number: a DEADLINE job on on-demand that tried
spot beside it (make before break) has refused spot attempts numbered after the one it runs
on."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from spotd.store import AttemptRow, JobRow, current_attempt_of
from tests.factories import attempt_row as _a


@dataclass(frozen=True)
class _Job:
    current_attempt: int


SPOT_LOST = _a(1, "spot", 100.0, "PREEMPTED")
ON_DEMAND = _a(2, "on-demand", None)
REFUSED = [_a(3, "spot", 200.0, "LAUNCH_FAILED"), _a(4, "spot", 200.0, "LAUNCH_FAILED")]
ON_DEMAND_ENDED = _a(2, "on-demand", 300.0, "LOST")


@pytest.mark.parametrize(
    ("current", "attempts", "expected"),
    [
        (0, [], None),
        (1, [_a(1, "spot", None)], 1),
        # on on-demand after two refused returns: the job runs on attempt 2
        (2, [SPOT_LOST, ON_DEMAND, *REFUSED], 2),
        # a return written and never handed over (a restart came between): still attempt 2
        (2, [SPOT_LOST, ON_DEMAND, _a(3, "spot", None)], 2),
        # the on-demand attempt ended after the refusals: it is the last placement
        (2, [SPOT_LOST, ON_DEMAND_ENDED, *REFUSED], 2),
        # ... also once the placement stepped the job's number past the refused ones
        (4, [SPOT_LOST, ON_DEMAND_ENDED, *REFUSED], 2),
        # an ordinary refused launch is the last placement (the next one avoids its zone)
        (1, [SPOT_LOST, _a(2, "spot", 150.0, "LAUNCH_FAILED")], 2),
        # the same end time: the later attempt
        (2, [_a(1, "spot", 100.0, "PREEMPTED"), _a(2, "spot", 100.0, "LAUNCH_FAILED")], 2),
    ],
)
def test_current_attempt(current: int, attempts: list[AttemptRow], expected: int | None) -> None:
    job: JobRow = _Job(current)  # type: ignore[assignment]
    got = current_attempt_of(job, attempts)
    assert (got.attempt if got else None) == expected
