"""Returns to spot that every zone refused: when a DEADLINE job on on-demand tries again.

A DEADLINE job on on-demand that is on the uniform-progress line tries spot beside it at a
checkpoint (``strategies.should_return_to_spot``, make before break). Through a stockout
every zone refuses, and each round is up to ``strategies.RETURN_TRIES`` launch calls and as
many LAUNCH_FAILED attempt rows; a zone's 30-s hold does not outlast a checkpoint interval.
So, after ``k >= 2`` rounds in a row whose tries were all refused, beside one on-demand
attempt, the next round waits for the first checkpoint at least ``backoff(k)`` after the
checkpoint of the last one: 10 min, doubling to 1 h. A return that is accepted, or a new
on-demand attempt, starts the count over.

Times are the checkpoints' (when the agent synced them), not the moments the controller
looks: a heartbeat lands some seconds after its sync, and comparing look times would push a
try a whole checkpoint later whenever one heartbeat was quicker than the last. A checkpoint
up to ``EARLY_SECONDS`` before its due time still counts (a sync's length varies), or up to
half the wait if that is shorter (a back-off the daemon set short is not lost in it). One
exception: a restarted daemon reads the count back from the attempt rows, which hold when each
round was decided on the daemon's clock, and moves those times onto the agent's by a fresh
checkpoint's delay (``spotd.control.deadline.refused_of``).

With 10-minute checkpoints through a day's stockout the rounds are at 0, 10, 20, 40, 80 and
140 min, then every hour: 27 rounds instead of 144. The controller (``spotd.control.deadline``)
and the simulator (``spotd.sim.jobs``) both decide with these functions.

The controller tries a return at a fresh checkpoint (the first look that sees it) at which
the rule holds. A return decided at another look (the first after a restart: its checkpoint
may be long old) waits for a later checkpoint (``step``): it remembers the newest checkpoint
when it decided (the mark) and tries at the first one after it. A decision the rule stops
backing is called off, unless the rule would still hold but for the zone history (every spot
zone held by a refusal, other jobs' too): then it stands, its mark following the checkpoints
seen meanwhile, so it moves at a checkpoint looked at after the hold and is not decided, and
announced, again each time a hold comes and goes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from spotd.recovery.strategies import backoff_seconds

__all__ = [
    "BASE_SECONDS",
    "CAP_SECONDS",
    "EARLY_SECONDS",
    "Refused",
    "Step",
    "after_refusal",
    "backoff",
    "beside",
    "due",
    "step",
]

BASE_SECONDS = 600.0  # the wait after two refused rounds in a row
CAP_SECONDS = 3600.0  # a stuck job still asks once an hour
EARLY_SECONDS = 30.0  # a checkpoint this much before its due time still counts


@dataclass(frozen=True, slots=True)
class Refused:
    """Rounds in a row whose every try was refused, beside one on-demand attempt."""

    attempt: int  # the on-demand attempt the tries were made beside
    rounds: int
    checkpoint: float  # when the checkpoint of the last round was synced (epoch seconds)


def backoff(rounds: int, *, base: float | None = None, cap: float | None = None) -> float:
    """Seconds from the last of ``rounds`` refused rounds in a row to the next round: ``base``
    (``BASE_SECONDS``) after two, doubling to ``cap`` (``CAP_SECONDS``); the daemon's
    ``return_backoff_seconds`` and ``return_backoff_cap_seconds`` set them."""
    if rounds < 2:
        return 0.0
    base = BASE_SECONDS if base is None else base
    cap = CAP_SECONDS if cap is None else cap
    return backoff_seconds(rounds - 2, 1.0, base=base, cap=cap)


def beside(refused: Refused | None, attempt: int) -> Refused | None:
    """The count that holds beside on-demand ``attempt``: none if it was another attempt's."""
    return refused if refused is not None and refused.attempt == attempt else None


def due(
    refused: Refused | None,
    attempt: int,
    checkpoint: float,
    *,
    base: float | None = None,
    cap: float | None = None,
) -> bool:
    """May a return beside on-demand ``attempt`` be tried at the checkpoint synced at
    ``checkpoint``? (``base`` and ``cap`` as for ``backoff``.)"""
    held = beside(refused, attempt)
    if held is None:
        return True
    wait = backoff(held.rounds, base=base, cap=cap)
    return checkpoint >= held.checkpoint + wait - min(EARLY_SECONDS, wait / 2)


def after_refusal(refused: Refused | None, attempt: int, checkpoint: float) -> Refused:
    """The count once every try of the round at ``checkpoint`` beside ``attempt`` was refused."""
    held = beside(refused, attempt)
    return Refused(attempt, 1 if held is None else held.rounds + 1, checkpoint)


class Step(enum.Enum):
    """What a look at a DEADLINE job on on-demand does about a return to spot."""

    NONE = "none"  # nothing decided, and the rule does not send it back
    DECIDE = "decide"  # decide it: the mark is the newest checkpoint, a newer one moves it
    WAIT = "wait"  # decided, no checkpoint newer than the mark yet
    HOLD = "hold"  # decided, every spot zone held: it stands, the mark follows checkpoints
    CALL_OFF = "call-off"  # decided, and the rule no longer holds even without the zones
    TRY = "try"  # decided, and a fresh checkpoint: try spot beside (back-off permitting)


def step(*, holds: bool, holds_but_zones: bool, mark: float | None, at: float | None) -> Step:
    """The return's next step (module docstring): ``holds``, the rule now; ``holds_but_zones``,
    the rule with no zone history (read only when ``holds`` is false and a return is decided);
    ``mark``, the decided return's mark (None: none decided); ``at``, the newest checkpoint of
    the on-demand attempt (None: none)."""
    if not holds:
        if mark is None:
            return Step.NONE
        return Step.HOLD if holds_but_zones else Step.CALL_OFF
    if mark is None:
        return Step.DECIDE
    return Step.TRY if at is not None and at > mark else Step.WAIT
