"""The life of one service replica: its statuses, the moves allowed between them, and probes.

A replica is born PROVISIONING (instances being created), becomes STARTING once its instance
runs (the server is booting, probes may fail inside the initial delay), READY once its
readiness probe passes, and may flap READY ⇄ NOT_READY on probe thresholds. Going away on
purpose is DRAINING (no new requests, in-flight ones finish) then SHUTTING_DOWN (instances
being terminated) then TERMINATED. Losing it is PREEMPTED, FAILED_PROVISION, FAILED_PROBE or
FAILED; those end the replica's life: the hedge planner launches a new replica instead of
reviving an old one, so a replica id never serves twice. Names follow SkyServe's
``ReplicaStatus`` where they exist.

Everything here is pure: ``probe_step`` takes ``now`` and returns a new frozen state, so the
executor in ``daemon/`` can run probes asynchronously and apply the answer when it arrives.

Probe scenarios (each is a row in ``tests/serve/test_replica_state.py``), with
``initial_delay=120``, ``failure_threshold=3``, ``success_threshold=1``,
``not_ready_timeout=180`` and the replica STARTING at t=0:

- probes fail at t=10, 60, 110 → still STARTING (inside the initial delay); a pass at t=115
  → READY.
- probes fail at t=10 … t=110, fail again at t=120 → FAILED_PROBE (initial delay spent).
- READY, one failure at t=200 → still READY; failures at 210 and 220 → NOT_READY at t=220.
- NOT_READY, one pass → READY again (success_threshold=1); with success_threshold=2 it needs
  two passes in a row, and a failure in between restarts the count.
- NOT_READY since its first failure at t=200, still failing at t=380 → FAILED_PROBE.
- A probe answer for a replica that is DRAINING or gone changes nothing (it raced the
  status change).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import NewType

ReplicaId = NewType("ReplicaId", int)  # per service, increasing: a higher id is a newer replica


class ReplicaStatus(enum.StrEnum):
    PROVISIONING = "PROVISIONING"  # instances being created for the replica
    STARTING = "STARTING"  # instance up, server booting; probe failures tolerated (initial delay)
    READY = "READY"  # readiness probe passing; the load balancer sends it requests
    NOT_READY = "NOT_READY"  # was READY, failed failure_threshold probes in a row; no requests
    DRAINING = "DRAINING"  # leaving on purpose: no new requests, in-flight requests finish
    SHUTTING_DOWN = "SHUTTING_DOWN"  # its instances are being terminated
    TERMINATED = "TERMINATED"  # shut down on purpose and every instance is gone
    PREEMPTED = "PREEMPTED"  # the provider took the spot capacity back
    FAILED_PROVISION = "FAILED_PROVISION"  # the provider refused to create the instances
    FAILED_PROBE = "FAILED_PROBE"  # never became ready in the initial delay, or stayed not ready
    FAILED = "FAILED"  # the server process or its instance died for another reason

    @property
    def is_terminal(self) -> bool:
        """The replica will never serve again (its id is retired)."""
        return self in TERMINAL_REPLICA_STATUSES

    @property
    def is_alive(self) -> bool:
        """The replica counts toward capacity: it serves now or is expected to soon."""
        return self in ALIVE_REPLICA_STATUSES


TERMINAL_REPLICA_STATUSES = frozenset(
    {
        ReplicaStatus.TERMINATED,
        ReplicaStatus.PREEMPTED,
        ReplicaStatus.FAILED_PROVISION,
        ReplicaStatus.FAILED_PROBE,
        ReplicaStatus.FAILED,
    }
)

# Counted by the planner as present capacity; DRAINING/SHUTTING_DOWN are already leaving.
ALIVE_REPLICA_STATUSES = frozenset(
    {
        ReplicaStatus.PROVISIONING,
        ReplicaStatus.STARTING,
        ReplicaStatus.READY,
        ReplicaStatus.NOT_READY,
    }
)

# Statuses whose probe answers mean something; answers for any other status are ignored.
PROBED_STATUSES = frozenset({ReplicaStatus.STARTING, ReplicaStatus.READY, ReplicaStatus.NOT_READY})

_S = ReplicaStatus
_LOSSES = frozenset({_S.PREEMPTED, _S.FAILED})  # can happen to any replica that has instances

ALLOWED_TRANSITIONS: Mapping[ReplicaStatus, frozenset[ReplicaStatus]] = MappingProxyType(
    {
        # scale-down before boot skips draining: there is nothing in flight to finish
        _S.PROVISIONING: frozenset({_S.STARTING, _S.FAILED_PROVISION, _S.SHUTTING_DOWN}) | _LOSSES,
        _S.STARTING: frozenset({_S.READY, _S.FAILED_PROBE, _S.SHUTTING_DOWN}) | _LOSSES,
        # READY may skip DRAINING when the user forces `serve down` without a grace period
        _S.READY: frozenset({_S.NOT_READY, _S.DRAINING, _S.SHUTTING_DOWN}) | _LOSSES,
        _S.NOT_READY: frozenset({_S.READY, _S.FAILED_PROBE, _S.DRAINING, _S.SHUTTING_DOWN})
        | _LOSSES,
        _S.DRAINING: frozenset({_S.SHUTTING_DOWN}) | _LOSSES,
        # FAILED here is SkyServe's FAILED_CLEANUP: termination itself failed, a human must look
        _S.SHUTTING_DOWN: frozenset({_S.TERMINATED, _S.FAILED}),
        _S.TERMINATED: frozenset(),
        _S.PREEMPTED: frozenset(),
        _S.FAILED_PROVISION: frozenset(),
        _S.FAILED_PROBE: frozenset(),
        _S.FAILED: frozenset(),
    }
)


class InvalidReplicaTransition(ValueError):
    """A status change the replica state machine does not allow (a bug in the caller)."""

    def __init__(self, frm: ReplicaStatus, to: ReplicaStatus) -> None:
        self.frm = frm
        self.to = to
        if frm.is_terminal:
            why = f"{frm} is terminal"
        else:
            allowed = ", ".join(sorted(ALLOWED_TRANSITIONS[frm]))
            why = f"{frm} may only go to {allowed}"
        super().__init__(f"replica cannot go {frm} -> {to}: {why}")


def check_transition(frm: ReplicaStatus, to: ReplicaStatus) -> None:
    """Raise ``InvalidReplicaTransition`` unless ``frm -> to`` is in ``ALLOWED_TRANSITIONS``.

    Staying in the same status is not a transition and is refused too: the caller should not
    write an event row for it.
    """
    if to not in ALLOWED_TRANSITIONS[frm]:
        raise InvalidReplicaTransition(frm, to)


DEFAULT_NOT_READY_TIMEOUT = 180.0  # SkyServe's consecutive-failure timeout before giving up


@dataclass(frozen=True, slots=True)
class ProbeState:
    """What the probe loop remembers about one replica between probes.

    ``started_at`` is when the replica entered STARTING: the initial delay runs from there.
    ``failing_since`` is the time of the first failure of the current run of failures.
    """

    status: ReplicaStatus
    started_at: float
    failures: int = 0  # consecutive failed probes
    successes: int = 0  # consecutive passed probes
    failing_since: float | None = None

    @classmethod
    def starting(cls, now: float) -> ProbeState:
        return cls(status=ReplicaStatus.STARTING, started_at=now)


def probe_step(
    state: ProbeState,
    ok: bool,
    *,
    now: float,
    initial_delay: float,
    failure_threshold: int = 3,
    success_threshold: int = 1,
    not_ready_timeout: float | None = DEFAULT_NOT_READY_TIMEOUT,
) -> tuple[ProbeState, ReplicaStatus | None]:
    """Fold one probe answer into the state; return the new state and the new status, if any.

    STARTING: ``success_threshold`` passes in a row → READY; a failure once ``initial_delay``
    has elapsed since ``started_at`` → FAILED_PROBE (as SkyServe: the delay is the grace, so
    no threshold applies after it). READY: ``failure_threshold`` failures in a row →
    NOT_READY. NOT_READY: ``success_threshold`` passes in a row → READY; still failing
    ``not_ready_timeout`` seconds after the first failure → FAILED_PROBE (None: never).
    """
    if failure_threshold < 1 or success_threshold < 1:
        raise ValueError("probe thresholds must be at least 1")
    if state.status not in PROBED_STATUSES:
        return state, None

    if ok:
        new = replace(state, failures=0, successes=state.successes + 1, failing_since=None)
        if state.status is not ReplicaStatus.READY and new.successes >= success_threshold:
            return _move(new, ReplicaStatus.READY)
        return new, None

    failing_since = state.failing_since if state.failing_since is not None else now
    new = replace(state, failures=state.failures + 1, successes=0, failing_since=failing_since)
    match state.status:
        case ReplicaStatus.STARTING:
            if now - state.started_at >= initial_delay:
                return _move(new, ReplicaStatus.FAILED_PROBE)
        case ReplicaStatus.READY:
            if new.failures >= failure_threshold:
                return _move(new, ReplicaStatus.NOT_READY)
        case ReplicaStatus.NOT_READY:
            if not_ready_timeout is not None and now - failing_since >= not_ready_timeout:
                return _move(new, ReplicaStatus.FAILED_PROBE)
    return new, None


def _move(state: ProbeState, to: ReplicaStatus) -> tuple[ProbeState, ReplicaStatus]:
    check_transition(state.status, to)
    if to is ReplicaStatus.READY:
        # a fresh READY starts counting failures from zero
        return replace(state, status=to, failures=0, failing_since=None), to
    return replace(state, status=to, successes=0), to
