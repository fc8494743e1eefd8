"""The idle-GPU rule: a pure decision the job controller applies.

A job's latest samples (one list per node), the policy, the rule's state and ``now`` in; a
verdict and the new state out (:func:`idle_gpu_step`). Example with ``minutes=10``,
``threshold_pct=5``:

- t=0: every GPU of every node at 0–4% → ``idle_since=0``, verdict ``IDLE``;
- t=300: one GPU at 60% → state reset, verdict ``BUSY``;
- t=400..1000: all at 2% again → idle since 400; at t=1000 (10 min) verdict ``FLAG``
  (or ``STOP`` with ``action="stop"``), once: later steps say ``IDLE`` until a GPU gets busy.
- a node that reports no GPU, or has not reported yet, never makes a job idle.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace

from spotd.telemetry.gpu import GpuSample

__all__ = [
    "IdleAction",
    "IdleGpuPolicy",
    "IdleState",
    "IdleVerdict",
    "idle_gpu_step",
]


class IdleAction(enum.StrEnum):
    FLAG = "flag"  # note it on the job (message and an event); the job keeps running
    STOP = "stop"  # also stop the job: its instances are terminated


class IdleVerdict(enum.StrEnum):
    NO_DATA = "NO_DATA"  # a node has not reported, or reports no GPU: the rule does not apply
    BUSY = "BUSY"  # some GPU is at or above the threshold
    IDLE = "IDLE"  # every GPU is below the threshold, not yet for long enough (or already acted)
    FLAG = "FLAG"  # idle for the whole window: flag the job now
    STOP = "STOP"  # idle for the whole window: stop the job now


@dataclass(frozen=True, slots=True)
class IdleGpuPolicy:
    """From the daemon's config (``idle_gpu_minutes`` etc.), not the task: it is not a
    SkyPilot key. ``minutes <= 0`` turns the rule off."""

    minutes: float
    threshold_pct: float = 10.0
    action: IdleAction = IdleAction.FLAG

    @property
    def window_seconds(self) -> float:
        return self.minutes * 60.0


@dataclass(frozen=True, slots=True)
class IdleState:
    idle_since: float | None = None  # since when every GPU has been below the threshold
    acted: bool = False  # the verdict for this idle stretch was given already


def idle_gpu_step(
    nodes: Sequence[Sequence[GpuSample] | None],
    policy: IdleGpuPolicy,
    state: IdleState,
    now: float,
) -> tuple[IdleVerdict, IdleState]:
    """Decide on a job's GPUs from every node's latest samples (None: not reported yet)."""
    if policy.minutes <= 0 or not nodes or any(not n for n in nodes):
        return IdleVerdict.NO_DATA, IdleState()
    if any(s.utilization_pct >= policy.threshold_pct for n in nodes for s in n or ()):
        return IdleVerdict.BUSY, IdleState()
    since = state.idle_since if state.idle_since is not None else now
    if state.acted or now - since < policy.window_seconds:
        return IdleVerdict.IDLE, replace(state, idle_since=since)
    verdict = IdleVerdict.STOP if policy.action == IdleAction.STOP else IdleVerdict.FLAG
    return verdict, IdleState(idle_since=since, acted=True)
