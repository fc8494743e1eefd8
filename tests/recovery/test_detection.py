"""Detection: one verdict per node from agent reports, provider listings and the clock."""

from __future__ import annotations

from typing import Any

import pytest

from spotd.recovery.detection import (
    DetectionTimeouts,
    NodeEvidence,
    VerdictKind,
    classify,
)
from spotd.types import InstanceState

NOW = 2_000.0
TIMEOUTS = DetectionTimeouts(
    suspect_after=3.0, lost_after=60.0, listing_grace=30.0, boot_timeout=600.0
)
RUNNING, PENDING, NOTICE = InstanceState.RUNNING, InstanceState.PENDING, InstanceState.NOTICE
PREEMPTED, TERMINATED = InstanceState.PREEMPTED, InstanceState.TERMINATED
V = VerdictKind


def evidence(**kw: Any) -> NodeEvidence:
    base: dict[str, Any] = {
        "provider_state": RUNNING,
        "provider_reason": "",
        "notice_deadline": None,
        "last_heartbeat_at": NOW - 1.0,
        "started_at": NOW - 500.0,
        "phase": "run",
        "exit_code": None,
        "agent_notice": False,
    }
    return NodeEvidence(**(base | kw))


@pytest.mark.parametrize(
    ("kw", "kind", "words"),
    [
        # the agent reported an exit code: EXITED, whatever the provider says afterwards
        ({"phase": "exited", "exit_code": 0}, V.EXITED, "run exited with 0"),
        (
            {
                "phase": "exited",
                "exit_code": 1,
                "provider_state": PREEMPTED,
                "provider_reason": "spot reclaimed",
            },
            V.EXITED,
            "run exited with 1; the provider now reports PREEMPTED (spot reclaimed)",
        ),
        (
            {"phase": "setup_failed", "exit_code": 2, "provider_state": None},
            V.EXITED,
            "setup exited with 2",
        ),
        ({"phase": "exited", "exit_code": 3, "agent_notice": True}, V.EXITED, "exited with 3"),
        # the provider says it is gone
        (
            {"provider_state": PREEMPTED, "provider_reason": "Server.SpotInstanceTermination"},
            V.PREEMPTED,
            "provider reports the instance preempted (Server.SpotInstanceTermination)",
        ),
        ({"provider_state": TERMINATED}, V.PREEMPTED, "provider reports the instance terminated"),
        (
            {"provider_state": None, "provider_reason": "not listed by the provider"},
            V.PREEMPTED,
            "no longer lists the instance",
        ),
        (
            {"provider_state": PREEMPTED, "agent_notice": True, "notice_deadline": NOW - 5},
            V.PREEMPTED,
            "after an interruption notice",
        ),
        # not listed yet, right after launch: still pending, not preempted
        (
            {"provider_state": None, "started_at": NOW - 5, "last_heartbeat_at": None},
            V.HEALTHY,
            "booting for 5s (not listed yet)",
        ),
        (
            {"provider_state": None, "started_at": NOW - 29, "last_heartbeat_at": NOW - 1},
            V.HEALTHY,
            "not listed yet",
        ),
        # an announced reclaim
        (
            {"provider_state": NOTICE, "notice_deadline": NOW + 120},
            V.NOTICE,
            "interruption notice from the provider, reclaim at 2120",
        ),
        (
            {"agent_notice": True, "notice_deadline": NOW + 30},
            V.NOTICE,
            "interruption notice from the agent",
        ),
        ({"phase": "preempted", "last_heartbeat_at": NOW - 10}, V.NOTICE, "interruption notice"),
        # heartbeats
        ({}, V.HEALTHY, "heartbeat 1.0s ago (provider says RUNNING)"),
        ({"last_heartbeat_at": NOW - 2.9}, V.HEALTHY, "heartbeat"),
        ({"last_heartbeat_at": NOW - 3.0}, V.SUSPECT, "no heartbeat for 3.0s"),
        ({"last_heartbeat_at": NOW - 59.9}, V.SUSPECT, "(provider says RUNNING); not torn down"),
        ({"last_heartbeat_at": NOW - 60.0}, V.LOST, "no heartbeat for 60s (provider says RUNNING)"),
        ({"last_heartbeat_at": NOW - 300, "provider_state": PENDING}, V.LOST, "no heartbeat"),
        # a node that never reported
        ({"last_heartbeat_at": None, "phase": None}, V.HEALTHY, "booting for 500s"),
        (
            {"last_heartbeat_at": None, "phase": None, "started_at": NOW - 600},
            V.LOST,
            "no heartbeat 600s after launch",
        ),
    ],
)
def test_classify(kw: dict[str, Any], kind: VerdictKind, words: str) -> None:
    v = classify(evidence(**kw), now=NOW, timeouts=TIMEOUTS)
    assert v.kind is kind, v
    assert words in v.evidence, v.evidence


def test_exited_carries_the_code_and_phase() -> None:
    v = classify(evidence(phase="setup_failed", exit_code=7), now=NOW, timeouts=TIMEOUTS)
    assert (v.exit_code, v.phase) == (7, "setup_failed")


def test_notice_carries_the_deadline() -> None:
    v = classify(
        evidence(provider_state=NOTICE, notice_deadline=NOW + 90), now=NOW, timeouts=TIMEOUTS
    )
    assert v.notice_deadline == NOW + 90


@pytest.mark.parametrize("state", [RUNNING, PENDING, None])
def test_unreachable_is_not_dead_before_lost_after(state: InstanceState | None) -> None:
    """Heartbeats stop; the provider says alive (or has not listed the new node yet): the node
    is never declared gone before lost_after."""
    for age in range(60):
        ev = evidence(provider_state=state, last_heartbeat_at=NOW - age, started_at=NOW - 10)
        v = classify(ev, now=NOW, timeouts=TIMEOUTS)
        assert v.kind in (V.HEALTHY, V.SUSPECT), (age, v)


def test_default_timeouts() -> None:
    assert DetectionTimeouts() == DetectionTimeouts(3.0, 60.0, 30.0, 600.0)
