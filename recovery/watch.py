"""What to do about a running attempt, from the verdicts on its nodes.

``detection.classify`` gives one verdict per node; ``decide_watch`` turns the attempt's
verdicts into one action, first match wins:

1. ``AttemptLost`` — a node got a NOTICE or was PREEMPTED or LOST: the whole attempt is over
   (a gang job cannot continue on fewer nodes); the first such node is named.
2. ``SetupFailed`` — a node's setup exited (with any code): the job fails, no restart.
3. ``RunFailed`` — a node's run exited non-zero: the restart rules decide (``restarts``).
4. ``Succeeded`` — every node's run exited 0.
5. ``KeepWatching`` — otherwise, with what the executor still moves: whether every agent has
   reported (PROVISIONING → SETTING_UP), whether every node is running or done (STARTING →
   RUNNING), and the suspect nodes to log (never torn down).

Scenarios (rows in ``tests/recovery/test_watch.py``): node 0 exited 0 and node 1 LOST →
AttemptLost(node 1); node 0 setup exited 2, node 1 run exited 1 → SetupFailed(node 0); both
runs exited 0 → Succeeded; node 1 SUSPECT in phase run → KeepWatching, suspects (node 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from spotd.recovery.detection import Verdict, VerdictKind

__all__ = [
    "AttemptLost",
    "KeepWatching",
    "NodeReport",
    "RunFailed",
    "SetupFailed",
    "Succeeded",
    "WatchAction",
    "decide_watch",
]

V = VerdictKind
LOSS = frozenset({V.NOTICE, V.PREEMPTED, V.LOST})
RUNNING_PHASES = frozenset({"run", "exited"})


@dataclass(frozen=True, slots=True)
class NodeReport:
    """One node of the attempt: its verdict and what its agent last said."""

    key: str
    node_rank: int
    verdict: Verdict
    phase: str | None  # the agent's last phase (None: not reported yet)
    reported: bool  # the agent has sent at least one heartbeat


@dataclass(frozen=True, slots=True)
class AttemptLost:
    node: NodeReport


@dataclass(frozen=True, slots=True)
class SetupFailed:
    node: NodeReport
    exit_code: int | None


@dataclass(frozen=True, slots=True)
class RunFailed:
    node: NodeReport


@dataclass(frozen=True, slots=True)
class Succeeded:
    pass


@dataclass(frozen=True, slots=True)
class KeepWatching:
    suspects: tuple[str, ...]  # keys of the nodes with late heartbeats
    all_reported: bool  # every agent has sent a heartbeat
    all_running: bool  # every node's phase is run or exited


WatchAction = AttemptLost | SetupFailed | RunFailed | Succeeded | KeepWatching


def decide_watch(nodes: Sequence[NodeReport]) -> WatchAction:
    """The action for an attempt (rules in the module docstring)."""
    lost = [n for n in nodes if n.verdict.kind in LOSS]
    if lost:
        return AttemptLost(lost[0])
    exited = [n for n in nodes if n.verdict.kind == V.EXITED]
    setup = [n for n in exited if n.verdict.phase == "setup_failed"]
    if setup:
        return SetupFailed(setup[0], setup[0].verdict.exit_code)
    failed = [n for n in exited if n.verdict.exit_code not in (0, None)]
    if failed:
        return RunFailed(failed[0])
    if len(exited) == len(nodes):
        return Succeeded()
    return KeepWatching(
        suspects=tuple(n.key for n in nodes if n.verdict.kind == V.SUSPECT),
        all_reported=all(n.reported for n in nodes),
        all_running={n.phase for n in nodes} <= RUNNING_PHASES,
    )
