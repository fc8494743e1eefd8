"""Which replica gets the next request: a pure function of (replicas, stats, request).

``pick`` reads nothing but its arguments. The only thing it changes is the ``PolicyState``
passed in (the round-robin cursor and the random generator), so a test builds a state, calls
``pick`` a few times and checks the sequence; the proxy keeps one state per LB process.

Rules, in order:

1. A replica is *eligible* when its state is READY, it is not ejected, and it is not in
   ``request.exclude`` (the replicas this request already failed on — a retry always goes to a
   different replica). DRAINING replicas are never eligible: their in-flight requests finish,
   nothing new arrives. No eligible replica -> ``None`` (the caller queues or answers 503).
2. A request with a session key (the ``X-Session-Id`` header) goes to the replica that
   rendezvous hashing (highest random weight) picks among the eligible ones: the same key lands
   on the same replica while that replica is eligible, and when one replica leaves only the
   keys it held move (R1, R2, R3 hold keys; R2 drains -> R2's keys spread over R1 and R3, the
   others stay put).
3. Otherwise the policy decides:

   - ``round_robin``: eligible replicas in the order given, one after the other;
   - ``least_load``: fewest in-flight requests; ties go to the first one found scanning from
     a rotating start (so an idle service is shared round-robin, not piled on the first);
   - ``power_of_two``: two distinct replicas drawn by ``state.rng``, fewer in-flight wins
     (the first drawn on a tie) — near least-load balance without a global scan, and no herd
     when several LB processes share replicas.
"""

from __future__ import annotations

import enum
import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class ReplicaState(enum.StrEnum):
    READY = "READY"  # receives new requests
    DRAINING = "DRAINING"  # receives no new requests; its in-flight requests finish


class Policy(enum.StrEnum):
    ROUND_ROBIN = "round_robin"  # one after the other
    LEAST_LOAD = "least_load"  # fewest in-flight requests
    POWER_OF_TWO = "power_of_two"  # two random choices, fewer in-flight wins


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """One replica as the control plane described it."""

    id: str
    url: str  # base URL, e.g. "http://127.0.0.1:8001" (no trailing slash)
    state: ReplicaState = ReplicaState.READY


@dataclass(slots=True)
class ReplicaStats:
    """What the LB knows about a replica at run time (mutated by the proxy, read by pick)."""

    in_flight: int = 0  # requests sent and not yet finished (exact: +1 before, -1 in finally)
    ejected: bool = False  # a connection to it failed; out of rotation until a probe succeeds
    requests: int = 0  # requests ever sent to it by this LB
    failures: int = 0  # connection-level failures (refused, reset before any response byte)


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """The parts of a request routing may look at."""

    session_key: str | None = None  # the affinity header's value, if any
    exclude: frozenset[str] = frozenset()  # replicas this request already failed on


@dataclass(slots=True)
class PolicyState:
    """Mutable routing memory: the round-robin cursor and the random source."""

    rng: random.Random = field(default_factory=random.Random)
    cursor: int = 0


_NO_STATS = ReplicaStats()


def eligible(
    replicas: Sequence[ReplicaView],
    stats: Mapping[str, ReplicaStats],
    exclude: frozenset[str] = frozenset(),
) -> list[ReplicaView]:
    """READY, not ejected, not excluded — in the order given."""
    return [
        r
        for r in replicas
        if r.state is ReplicaState.READY
        and not stats.get(r.id, _NO_STATS).ejected
        and r.id not in exclude
    ]


def _affinity_score(key: str, replica_id: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{replica_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def pick(
    replicas: Sequence[ReplicaView],
    stats: Mapping[str, ReplicaStats],
    request: RequestInfo,
    *,
    policy: Policy,
    state: PolicyState,
) -> str | None:
    """The id of the replica that should serve ``request``, or None when none is eligible."""
    cands = eligible(replicas, stats, request.exclude)
    n = len(cands)
    if n == 0:
        return None
    if request.session_key is not None:
        key = request.session_key
        return max(cands, key=lambda r: _affinity_score(key, r.id)).id
    if n == 1:
        return cands[0].id
    if policy is Policy.ROUND_ROBIN:
        choice = cands[state.cursor % n]
        state.cursor = (state.cursor + 1) % (1 << 30)
        return choice.id
    if policy is Policy.LEAST_LOAD:
        # scan from a rotating start so ties (an idle service) are shared round-robin
        start = state.cursor % n
        state.cursor = (state.cursor + 1) % (1 << 30)
        best = cands[start]
        best_load = stats.get(best.id, _NO_STATS).in_flight
        for k in range(1, n):
            r = cands[(start + k) % n]
            load = stats.get(r.id, _NO_STATS).in_flight
            if load < best_load:
                best, best_load = r, load
        return best.id
    if policy is Policy.POWER_OF_TWO:
        i = state.rng.randrange(n)
        j = state.rng.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = cands[i], cands[j]
        if stats.get(b.id, _NO_STATS).in_flight < stats.get(a.id, _NO_STATS).in_flight:
            return b.id
        return a.id
    raise ValueError(f"unknown policy {policy!r}")
