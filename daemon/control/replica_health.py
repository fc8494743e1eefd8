"""What the evidence says about one replica, and what the service worker does about it.

The same detection rules as a job's nodes (``recovery.detection``): the provider's listing
(state, reason, a notice), the agent's heartbeats (phase, exit code, its own notice) and the
clock give one verdict; ``judge_replica`` turns it into one thing to do, first match wins:

1. the instance is gone (PREEMPTED, or EXITED on an instance the provider no longer runs):
   a SHUTTING_DOWN replica is TERMINATED; one the provider says was preempted, a spot one that
   vanished, or one that had a notice is PREEMPTED (and its zone remembered); any other
   FAILED;
2. a notice (from the listing or the agent) with a deadline: ``Notice`` — drain and replace;
3. the program exited (EXITED, or the agent's final phase): FAILED, unless it is already
   leaving (DRAINING, SHUTTING_DOWN: the drain finishes it);
4. LOST — no heartbeat for ``lost_after`` (or none ``boot_timeout`` after launch): it is not
   serving, whatever the provider says: PREEMPTED if spot (the zone remembered), else FAILED;
5. SUSPECT — heartbeats late: logged and counted, never torn down;
6. a PROVISIONING replica whose instance runs: ``Running`` — start probing it.

The listing grace of detection is 0 here: ``covered`` already says whether the listing began
after the replica's instance was launched, so an instance missing from it is gone.

Scenarios (rows in ``tests/services/test_replica_health.py``): a spot replica not listed
after launch → PREEMPTED; on-demand → FAILED; READY with an agent notice at t+30 →
Notice(t+30); exited -9 → FAILED "the replica's run exited with -9"; READY silent 40 s with
lost_after 30 → PREEMPTED (spot); DRAINING whose server exited → nothing (the drain ends it).
"""

from __future__ import annotations

from dataclasses import dataclass

from spotd.providers.base import ObservedInstance
from spotd.recovery import detection
from spotd.serve.replica_state import ReplicaStatus
from spotd.store import ReplicaRow
from spotd.types import InstanceState, Market

S = ReplicaStatus
V = detection.VerdictKind
AGENT_FINAL = ("exited", "setup_failed")
GONE_STATES = (InstanceState.PREEMPTED, InstanceState.TERMINATED)


@dataclass(frozen=True, slots=True)
class End:
    status: ReplicaStatus
    reason: str
    zone_preempted: bool = False  # remember the zone as preempted


@dataclass(frozen=True, slots=True)
class Notice:
    deadline: float


@dataclass(frozen=True, slots=True)
class Running:
    instance: ObservedInstance


@dataclass(frozen=True, slots=True)
class Suspect:
    evidence: str


Judgement = End | Notice | Running | Suspect | None


def replica_timeouts(*, suspect_after: float, lost_after: float) -> detection.DetectionTimeouts:
    return detection.DetectionTimeouts(
        suspect_after=suspect_after, lost_after=lost_after, listing_grace=0.0
    )


def replica_evidence(
    row: ReplicaRow, obs: ObservedInstance | None, *, covered: bool
) -> detection.NodeEvidence:
    if obs is not None:
        state: InstanceState | None = obs.state
    elif covered:
        state = None  # listed after it was launched, and not there: gone
    else:
        state = InstanceState.PENDING
    return detection.NodeEvidence(
        provider_state=state,
        provider_reason=obs.reason
        if obs
        else ("the provider no longer lists it" if covered else ""),
        notice_deadline=(obs.notice_deadline if obs else None) or row.notice_deadline,
        last_heartbeat_at=row.last_heartbeat_at,
        started_at=row.created_at,
        phase=row.phase,
        exit_code=row.exit_code,
        agent_notice=row.notice_deadline is not None,
    )


def judge_replica(
    row: ReplicaRow, obs: ObservedInstance | None, *, covered: bool, verdict: detection.Verdict
) -> Judgement:
    """What to do about the replica (rules in the module docstring)."""
    gone = (obs is None and covered) or (obs is not None and obs.state in GONE_STATES)
    if verdict.kind == V.PREEMPTED or (verdict.kind == V.EXITED and gone):
        reason = obs.reason if obs is not None else "the provider no longer lists it"
        if row.status == S.SHUTTING_DOWN:
            return End(S.TERMINATED, f"instance gone: {reason}")
        if (
            (obs is not None and obs.state == InstanceState.PREEMPTED)
            or (obs is None and row.market == Market.SPOT)
            or row.notice_deadline is not None
        ):
            return End(S.PREEMPTED, f"preempted: {reason}", zone_preempted=True)
        return End(S.FAILED, f"instance ended: {reason}")
    listed = obs.notice_deadline if obs is not None and obs.state == InstanceState.NOTICE else None
    notice = listed or row.notice_deadline  # the listing's, or the agent's own report
    if notice is not None:
        return Notice(notice)
    leaving = row.status in (S.DRAINING, S.SHUTTING_DOWN)
    if verdict.kind == V.EXITED or row.phase in AGENT_FINAL:
        if leaving:
            return None
        what = "setup" if row.phase == "setup_failed" else "run"
        return End(S.FAILED, f"the replica's {what} exited with {row.exit_code}")
    if verdict.kind == V.LOST:
        if row.status == S.SHUTTING_DOWN:
            return End(S.TERMINATED, f"instance lost: {verdict.evidence}")
        spot = row.market == Market.SPOT
        return End(
            S.PREEMPTED if spot else S.FAILED, f"lost: {verdict.evidence}", zone_preempted=spot
        )
    if verdict.kind == V.SUSPECT:
        return Suspect(verdict.evidence)
    if row.status == S.PROVISIONING and obs is not None and obs.state == InstanceState.RUNNING:
        return Running(obs)
    return None
