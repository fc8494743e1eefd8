"""Is this node healthy, about to go, gone, or finished? One verdict from three signals.

``classify(evidence, now=..., timeouts=...)`` weighs, per node of an attempt, what the agent
reported (phase, exit code, heartbeats, a notice it saw) against what the provider's batched
listing says (state and reason, or nothing at all). The rules, first match wins:

1. EXITED — the agent reported an exit code. It wins over everything else, including a
   provider that lists the instance as gone afterwards: the program ended on a live machine
   and then the machine went away, which is a user result, never a preemption.
2. PREEMPTED — the provider lists the instance as PREEMPTED or TERMINATED (we did not
   terminate a node that is still being watched), or does not list an instance that was
   created more than ``listing_grace`` seconds ago (listings are eventually consistent right
   after a launch; inside the grace period an unlisted node counts as still pending).
3. NOTICE — the provider or the agent announced the reclaim (a deadline is carried when
   known). The replacement starts now; the node is left alone to checkpoint until it goes.
4. LOST — no heartbeat for ``lost_after`` seconds (or, for a node that never sent one, for
   ``boot_timeout`` since it was created), whatever the provider says: an agent that silent
   is not doing the job, and the provider either has no answer or a stale one.
5. SUSPECT — no heartbeat for ``suspect_after`` seconds but not yet ``lost_after``, with the
   provider saying the instance is alive (or not having answered). Unreachable is not dead:
   a suspect node is logged and watched, never torn down.
6. HEALTHY — otherwise (including a node still booting).

The provider's word is trusted for *gone* (rule 2) but not for *alive*: a RUNNING instance
whose agent is silent past ``lost_after`` is lost (rule 4), not healthy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from spotd.types import InstanceState

__all__ = ["DetectionTimeouts", "NodeEvidence", "Verdict", "VerdictKind", "classify"]


class VerdictKind(enum.StrEnum):
    HEALTHY = "HEALTHY"  # heartbeats on time (or still booting); nothing to do
    SUSPECT = "SUSPECT"  # heartbeats late, no evidence the node is gone: watch, never tear down
    NOTICE = "NOTICE"  # a reclaim was announced: start the replacement now
    PREEMPTED = "PREEMPTED"  # the provider took the node back (or no longer lists it)
    LOST = "LOST"  # silent past lost_after: treat as gone
    EXITED = "EXITED"  # the agent reported the program's exit code


@dataclass(frozen=True, slots=True)
class DetectionTimeouts:
    suspect_after: float = 3.0  # heartbeat age that makes a node suspect
    lost_after: float = 60.0  # heartbeat age that makes a node lost
    listing_grace: float = 30.0  # how long a new instance may be missing from listings
    boot_timeout: float = 600.0  # how long a node may take to send its first heartbeat


@dataclass(frozen=True, slots=True)
class NodeEvidence:
    provider_state: InstanceState | None  # None: the provider's listing does not include it
    provider_reason: str  # the provider's words, e.g. "Server.SpotInstanceTermination"
    notice_deadline: float | None  # when the provider will reclaim it, if announced
    last_heartbeat_at: float | None  # None: no heartbeat yet
    started_at: float  # when the instance was created (requested)
    phase: str | None  # agent phase: 'setup', 'run', 'exited', 'setup_failed', 'preempted'...
    exit_code: int | None  # reported by the agent with 'exited' / 'setup_failed'
    agent_notice: bool  # the agent saw an interruption notice itself


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    evidence: str  # why, in words, for events and logs
    exit_code: int | None = None  # EXITED
    phase: str | None = None  # EXITED: the phase the code came from ('exited', 'setup_failed')
    notice_deadline: float | None = None  # NOTICE


def classify(evidence: NodeEvidence, *, now: float, timeouts: DetectionTimeouts) -> Verdict:
    """The verdict for one node (rules in the module docstring)."""
    ev = evidence
    said = f" ({ev.provider_reason})" if ev.provider_reason else ""
    if ev.exit_code is not None:
        where = "setup" if ev.phase == "setup_failed" else "run"
        gone = (
            f"; the provider now reports {ev.provider_state.value}{said}"
            if ev.provider_state in (InstanceState.PREEMPTED, InstanceState.TERMINATED)
            else ""
        )
        return Verdict(
            VerdictKind.EXITED,
            f"{where} exited with {ev.exit_code}{gone}",
            exit_code=ev.exit_code,
            phase=ev.phase,
        )
    noticed = _notice_words(ev)
    if ev.provider_state in (InstanceState.PREEMPTED, InstanceState.TERMINATED):
        state = ev.provider_state.value.lower()
        return Verdict(
            VerdictKind.PREEMPTED, f"provider reports the instance {state}{said}{noticed}"
        )
    age = now - ev.started_at
    if ev.provider_state is None and age >= timeouts.listing_grace:
        return Verdict(
            VerdictKind.PREEMPTED,
            f"the provider no longer lists the instance{said}{noticed}",
        )
    if (
        ev.provider_state is InstanceState.NOTICE
        or ev.notice_deadline is not None
        or ev.agent_notice
        or ev.phase == "preempted"
    ):
        source = "provider" if ev.provider_state is InstanceState.NOTICE else "agent"
        at = f", reclaim at {ev.notice_deadline:.0f}" if ev.notice_deadline is not None else ""
        return Verdict(
            VerdictKind.NOTICE,
            f"interruption notice from the {source}{at}{said}",
            notice_deadline=ev.notice_deadline,
        )
    alive = (
        f"provider says {ev.provider_state.value}"
        if ev.provider_state is not None
        else "not listed yet"
    )
    if ev.last_heartbeat_at is None:
        if age >= timeouts.boot_timeout:
            return Verdict(
                VerdictKind.LOST, f"no heartbeat {age:.0f}s after launch ({alive}){said}"
            )
        return Verdict(VerdictKind.HEALTHY, f"booting for {age:.0f}s ({alive})")
    silent = now - ev.last_heartbeat_at
    if silent >= timeouts.lost_after:
        return Verdict(VerdictKind.LOST, f"no heartbeat for {silent:.0f}s ({alive}){said}")
    if silent >= timeouts.suspect_after:
        return Verdict(
            VerdictKind.SUSPECT, f"no heartbeat for {silent:.1f}s ({alive}); not torn down"
        )
    return Verdict(VerdictKind.HEALTHY, f"heartbeat {silent:.1f}s ago ({alive})")


def _notice_words(ev: NodeEvidence) -> str:
    if (
        ev.provider_state is InstanceState.NOTICE
        or ev.notice_deadline is not None
        or ev.agent_notice
    ):
        return " after an interruption notice"
    return ""
