"""What the job controller does about a running attempt, from its nodes' verdicts."""

from __future__ import annotations

import pytest

from spotd.recovery.detection import Verdict, VerdictKind
from spotd.recovery.watch import (
    AttemptLost,
    KeepWatching,
    NodeReport,
    RunFailed,
    SetupFailed,
    Succeeded,
    WatchAction,
    decide_watch,
)

V = VerdictKind


def node(
    rank: int,
    kind: VerdictKind,
    *,
    code: int | None = None,
    phase: str | None = "run",
    reported: bool = True,
) -> NodeReport:
    verdict_phase = phase if kind == V.EXITED else None
    return NodeReport(
        key=f"j1-a1-n{rank}",
        node_rank=rank,
        phase=phase,
        reported=reported,
        verdict=Verdict(kind, "why", exit_code=code, phase=verdict_phase),
    )


HEALTHY = node(0, V.HEALTHY)
RUN_OK = node(0, V.EXITED, code=0, phase="exited")


@pytest.mark.parametrize(
    ("nodes", "want"),
    [
        # a loss wins over everything, even another node's clean exit
        ([RUN_OK, node(1, V.LOST)], AttemptLost(node(1, V.LOST))),
        ([node(0, V.NOTICE), node(1, V.PREEMPTED)], AttemptLost(node(0, V.NOTICE))),
        # setup failing wins over a run failing
        (
            [
                node(0, V.EXITED, code=2, phase="setup_failed"),
                node(1, V.EXITED, code=1, phase="exited"),
            ],
            SetupFailed(node(0, V.EXITED, code=2, phase="setup_failed"), 2),
        ),
        (
            [RUN_OK, node(1, V.EXITED, code=3, phase="exited")],
            RunFailed(node(1, V.EXITED, code=3, phase="exited")),
        ),
        ([RUN_OK, node(1, V.EXITED, code=0, phase="exited")], Succeeded()),
        # one node still running: keep watching, it is running
        (
            [RUN_OK, node(1, V.HEALTHY)],
            KeepWatching(suspects=(), all_reported=True, all_running=True),
        ),
        (
            [HEALTHY, node(1, V.SUSPECT)],
            KeepWatching(suspects=("j1-a1-n1",), all_reported=True, all_running=True),
        ),
        # still booting: not every agent reported, not running yet
        (
            [node(0, V.HEALTHY, phase=None, reported=False), node(1, V.HEALTHY, phase="setup")],
            KeepWatching(suspects=(), all_reported=False, all_running=False),
        ),
        (
            [node(0, V.HEALTHY, phase="setup")],
            KeepWatching(suspects=(), all_reported=True, all_running=False),
        ),
    ],
    ids=[
        "lost-beats-exit",
        "first-loss-named",
        "setup-beats-run",
        "run-failed",
        "all-exited-0",
        "one-still-running",
        "suspect-is-watched",
        "booting",
        "setting-up",
    ],
)
def test_decide_watch(nodes: list[NodeReport], want: WatchAction) -> None:
    assert decide_watch(nodes) == want
