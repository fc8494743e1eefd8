"""Whether a listing "covers" an instance is timed from the launch's answer, not its intent.

The intent (the instance row) is written before the provider is asked; when the store's queue
is long the answer may come many seconds later. A listing taken between the two rightly lacks
the instance, and must not read as "the provider no longer lists it" (a loss the daemon made
up). ``node_evidence`` judges coverage from ``launched_at`` (set when the provider's id is
recorded); rows written before that column existed fall back to ``created_at``.
"""

from __future__ import annotations

import dataclasses

import pytest

from spotd.control.attempts import node_evidence
from spotd.control.observer import COVER_SLACK, Observation
from spotd.providers.base import ObservedInstance
from spotd.recovery import detection
from spotd.store import InstanceRow
from spotd.types import InstanceId, InstanceState

INTENT = 1000.0  # the row's created_at
ANSWER = 1090.0  # the provider answered the launch 90 s later (a long store queue)
GONE_REASON = "not listed by the provider"
TIMEOUTS = detection.DetectionTimeouts(listing_grace=30.0)


def row(*, instance_id: str | None = "i-1", launched_at: float | None = ANSWER) -> InstanceRow:
    return InstanceRow(
        key="j1-a1-n0",
        attempt_id="j1-a1",
        job_id=1,
        node_rank=0,
        provider="fleet",
        instance_id=instance_id,
        region="r",
        zone="z",
        state="PENDING",
        token="t",
        created_at=INTENT,
        last_heartbeat_at=None,
        phase=None,
        exit_code=None,
        notice_deadline=None,
        log_offset=0,
        terminated=False,
        terminated_at=None,
        launched_at=launched_at,
    )


def listing(started_at: float, state: InstanceState | None = None) -> Observation:
    if state is None:
        return Observation(started_at=started_at)
    obs = ObservedInstance(
        id=InstanceId("i-1"), key="j1-a1-n0", state=state, region="r", zone="z", tags={}
    )
    return Observation(started_at=started_at, instances={"j1-a1-n0": obs})


CASES = [
    # (what, row, listing, provider_state, provider_reason, verdict)
    (
        "listed between intent and answer: not there yet, still pending",
        row(),
        listing(INTENT + 60),
        InstanceState.PENDING,
        "",
        detection.VerdictKind.HEALTHY,
    ),
    (
        "listed just after the answer, inside the slack: still pending",
        row(),
        listing(ANSWER + COVER_SLACK / 2),
        InstanceState.PENDING,
        "",
        detection.VerdictKind.HEALTHY,
    ),
    (
        "listed after the answer and absent: gone",
        row(),
        listing(ANSWER + COVER_SLACK + 1),
        None,
        GONE_REASON,
        detection.VerdictKind.PREEMPTED,
    ),
    (
        "no answer yet: pending whatever the listing's age",
        row(instance_id=None, launched_at=None),
        listing(INTENT + 500),
        InstanceState.PENDING,
        "",
        detection.VerdictKind.HEALTHY,
    ),
    (
        "listed RUNNING before the answer was recorded: the listing's word",
        row(),
        listing(INTENT + 60, InstanceState.RUNNING),
        InstanceState.RUNNING,
        "",
        detection.VerdictKind.HEALTHY,
    ),
    (
        "listed PREEMPTED: gone, whenever the answer came",
        row(),
        listing(INTENT + 60, InstanceState.PREEMPTED),
        InstanceState.PREEMPTED,
        "",
        detection.VerdictKind.PREEMPTED,
    ),
    (
        "a row from before launched_at existed: judged from its intent",
        row(launched_at=None),
        listing(INTENT + 60),
        None,
        GONE_REASON,
        detection.VerdictKind.PREEMPTED,
    ),
]


@pytest.mark.parametrize(
    ("what", "node", "seen", "state", "reason", "verdict"), CASES, ids=[c[0] for c in CASES]
)
def test_coverage_is_timed_from_the_launch_answer(
    what: str,
    node: InstanceRow,
    seen: Observation,
    state: InstanceState | None,
    reason: str,
    verdict: detection.VerdictKind,
) -> None:
    now = seen.started_at + 0.1
    ev = node_evidence(node, seen, now)
    assert (ev.provider_state, ev.provider_reason) == (state, reason), what
    assert ev.started_at == INTENT  # boot and listing grace still count from the intent
    assert detection.classify(ev, now=now, timeouts=TIMEOUTS).kind == verdict, what


def test_the_race_no_longer_reads_as_a_loss() -> None:
    """The bench's case: 90 s of queue between intent and answer, past ``listing_grace``; a
    listing from 1 s before the answer said nothing of the instance. Timed from the intent it
    was a preemption; timed from the answer it is a node still booting."""
    seen = listing(ANSWER - 1)
    by_intent = dataclasses.replace(row(), launched_at=None)
    assert detection.classify(
        node_evidence(by_intent, seen, ANSWER), now=ANSWER, timeouts=TIMEOUTS
    ).kind == (detection.VerdictKind.PREEMPTED)
    assert detection.classify(
        node_evidence(row(), seen, ANSWER), now=ANSWER, timeouts=TIMEOUTS
    ).kind == (detection.VerdictKind.HEALTHY)
