"""Replica statuses, allowed transitions, and probe thresholds on timestamps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from spotd.serve.replica_state import (
    ALLOWED_TRANSITIONS,
    InvalidReplicaTransition,
    ProbeState,
    check_transition,
    probe_step,
)
from spotd.serve.replica_state import ReplicaStatus as S

# (label, probes [(t, ok)], expected status after each probe, transitions reported)
# initial_delay=120, failure_threshold=3, success_threshold=1, not_ready_timeout=180
SCENARIOS = [
    (
        "failures inside the initial delay are tolerated, then a pass makes it READY",
        [(10, False), (60, False), (110, False), (115, True)],
        [S.STARTING, S.STARTING, S.STARTING, S.READY],
    ),
    (
        "a failure once the initial delay is spent fails the replica",
        [(10, False), (110, False), (120, False)],
        [S.STARTING, S.STARTING, S.FAILED_PROBE],
    ),
    (
        "a pass right at boot makes it READY",
        [(1, True)],
        [S.READY],
    ),
    (
        "READY goes NOT_READY only after 3 failures in a row",
        [(1, True), (200, False), (210, False), (220, False)],
        [S.READY, S.READY, S.READY, S.NOT_READY],
    ),
    (
        "a pass between failures restarts the count",
        [(1, True), (200, False), (210, False), (215, True), (220, False), (230, False)],
        [S.READY, S.READY, S.READY, S.READY, S.READY, S.READY],
    ),
    (
        "NOT_READY comes back on one pass",
        [(1, True), (200, False), (210, False), (220, False), (230, True)],
        [S.READY, S.READY, S.READY, S.NOT_READY, S.READY],
    ),
    (
        "NOT_READY still failing 180 s after its first failure is given up",
        [(1, True), (200, False), (210, False), (220, False), (370, False), (380, False)],
        [S.READY, S.READY, S.READY, S.NOT_READY, S.NOT_READY, S.FAILED_PROBE],
    ),
    (
        "back to READY and down again: the failure clock restarts",
        [
            (1, True),
            (200, False),
            (210, False),
            (220, False),
            (230, True),
            (400, False),
            (410, False),
            (420, False),
            (570, False),
        ],
        [
            S.READY,
            S.READY,
            S.READY,
            S.NOT_READY,
            S.READY,
            S.READY,
            S.READY,
            S.NOT_READY,
            S.NOT_READY,
        ],
    ),
]


def run(probes: Sequence[tuple[float, bool]], **kw: Any) -> tuple[list[S], list[S | None]]:
    state = ProbeState.starting(now=0.0)
    statuses: list[S] = []
    moves: list[S | None] = []
    for t, ok in probes:
        state, move = probe_step(state, ok, now=t, initial_delay=120, **kw)
        statuses.append(state.status)
        moves.append(move)
    return statuses, moves


@pytest.mark.parametrize(("label", "probes", "expected"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_probe_scenarios(label: str, probes: list[tuple[float, bool]], expected: list[S]) -> None:
    statuses, moves = run(probes)
    assert statuses == expected
    # a transition is reported exactly when the status changes, and names the new status
    previous = [S.STARTING, *statuses[:-1]]
    assert moves == [
        new if new != old else None for old, new in zip(previous, statuses, strict=True)
    ]


@pytest.mark.parametrize(
    ("probes", "expected"),
    [
        ([(1, True), (2, True)], [S.STARTING, S.READY]),
        ([(1, True), (2, False), (3, True), (4, True)], [S.STARTING] * 3 + [S.READY]),
        (
            [(1, True), (2, True), (10, False), (11, False), (12, False), (13, True), (14, True)],
            [S.STARTING, S.READY, S.READY, S.READY, S.NOT_READY, S.NOT_READY, S.READY],
        ),
    ],
    ids=["two passes to READY", "a failure restarts the pass count", "NOT_READY needs two"],
)
def test_success_threshold_two(probes: list[tuple[float, bool]], expected: list[S]) -> None:
    assert run(probes, success_threshold=2)[0] == expected


def test_failure_threshold_one_flips_at_once() -> None:
    assert run([(1, True), (5, False)], failure_threshold=1)[0] == [S.READY, S.NOT_READY]


def test_not_ready_timeout_none_never_gives_up() -> None:
    probes = [(1, True), (2, False), (3, False), (4, False), (10_000, False)]
    assert run(probes, not_ready_timeout=None)[0][-1] is S.NOT_READY


@pytest.mark.parametrize("status", [S.DRAINING, S.SHUTTING_DOWN, S.PREEMPTED, S.PROVISIONING])
@pytest.mark.parametrize("ok", [True, False])
def test_probe_answer_for_unprobed_status_changes_nothing(status: S, ok: bool) -> None:
    state = ProbeState(status=status, started_at=0.0)
    assert probe_step(state, ok, now=1000, initial_delay=1) == (state, None)


def test_thresholds_below_one_are_refused() -> None:
    with pytest.raises(ValueError):
        probe_step(ProbeState.starting(0), True, now=1, initial_delay=1, success_threshold=0)


@pytest.mark.parametrize(
    ("frm", "to"),
    [
        (S.PROVISIONING, S.STARTING),
        (S.PROVISIONING, S.FAILED_PROVISION),
        (S.PROVISIONING, S.PREEMPTED),
        (S.STARTING, S.READY),
        (S.STARTING, S.FAILED_PROBE),
        (S.READY, S.NOT_READY),
        (S.NOT_READY, S.READY),
        (S.READY, S.DRAINING),
        (S.NOT_READY, S.DRAINING),
        (S.DRAINING, S.SHUTTING_DOWN),
        (S.DRAINING, S.PREEMPTED),
        (S.SHUTTING_DOWN, S.TERMINATED),
        (S.READY, S.PREEMPTED),
    ],
)
def test_allowed_transitions(frm: S, to: S) -> None:
    check_transition(frm, to)


@pytest.mark.parametrize(
    ("frm", "to"),
    [
        (S.PROVISIONING, S.READY),  # must boot first
        (S.STARTING, S.NOT_READY),  # never ready, cannot be "not ready again"
        (S.DRAINING, S.READY),  # leaving is final
        (S.SHUTTING_DOWN, S.DRAINING),
        (S.PREEMPTED, S.STARTING),  # a lost replica is replaced, never revived
        (S.FAILED_PROBE, S.READY),
        (S.TERMINATED, S.PROVISIONING),
        (S.READY, S.READY),  # not a transition
    ],
)
def test_refused_transitions(frm: S, to: S) -> None:
    with pytest.raises(InvalidReplicaTransition) as info:
        check_transition(frm, to)
    assert (info.value.frm, info.value.to) == (frm, to)
    assert str(frm) in str(info.value)


def test_table_covers_every_status_and_terminals_go_nowhere() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(S)
    for status in S:
        assert (ALLOWED_TRANSITIONS[status] == frozenset()) == status.is_terminal
        assert status not in ALLOWED_TRANSITIONS[status]


def test_every_non_terminal_status_can_reach_a_terminal_one() -> None:
    for status in S:
        seen, frontier = {status}, [status]
        while frontier:
            for nxt in ALLOWED_TRANSITIONS[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert any(s.is_terminal for s in seen)


def test_alive_statuses() -> None:
    assert {s for s in S if s.is_alive} == {S.PROVISIONING, S.STARTING, S.READY, S.NOT_READY}
