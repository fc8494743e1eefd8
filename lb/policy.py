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
   - ``least_tokens``: fewest outstanding tokens (``ReplicaStats.tokens``: the estimated
     cost of the requests in flight, ``openai.estimate_tokens``), ties as ``least_load``. One
     long generation weighs as much as many short ones, where ``least_load`` counts each
     request once;
   - ``power_of_two``: two distinct replicas drawn by ``state.rng``, fewer in-flight wins
     (the first drawn on a tie) — near least-load balance without a global scan, and no herd
     when several LB processes share replicas;
   - ``prefix_aware``: requests whose prompts start the same (``request.prefix_key``, see
     ``openai.prefix_key``) go to the same replica, so its prefix cache serves them.
     Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018) on
     rendezvous hashing: each key ranks the eligible replicas by ``_affinity_score``; it lives
     on the first that holds no more than its share of the known prefixes, and a request goes
     there unless that replica has ``ceil(load_factor * (total + 1) / n)`` requests in flight
     (then to the key's next choice under that bound). A hot prefix therefore fills its home
     replica up to 1.25x the average (``state.load_factor``) and then spills to its second
     choice, not everywhere; prefixes spread evenly even when they are few; when a replica
     joins or leaves, about 1/n of the keys move (``_bounded_hash``). A request with no
     prefix (not an LLM request, or an unreadable body) is routed by least load.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import math
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
    PREFIX_AWARE = "prefix_aware"  # same prompt prefix, same replica, under a load bound
    LEAST_TOKENS = "least_tokens"  # fewest outstanding tokens (prompt + generation to come)


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """One replica as the control plane described it."""

    id: str
    url: str  # base URL, e.g. "http://127.0.0.1:8001" (no trailing slash)
    state: ReplicaState = ReplicaState.READY
    deadline: float | None = None  # a preemption notice: reclaimed at this unix time


@dataclass(slots=True)
class ReplicaStats:
    """What the LB knows about a replica at run time (mutated by the proxy, read by pick)."""

    in_flight: int = 0  # requests sent and not yet finished (exact: +1 before, -1 in finally)
    tokens: int = 0  # their estimated cost in tokens, added and removed with ``in_flight``
    ejected: bool = False  # a connection to it failed; out of rotation until a probe succeeds
    requests: int = 0  # requests ever sent to it by this LB
    failures: int = 0  # connection-level failures (refused, reset before any response byte)


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """The parts of a request routing may look at."""

    session_key: str | None = None  # the affinity header's value, if any
    prefix_key: str | None = None  # the prompt's normalised start (prefix_aware only)
    exclude: frozenset[str] = frozenset()  # replicas this request already failed on


@dataclass(slots=True)
class PolicyState:
    """Mutable routing memory: the round-robin cursor, the random source, and where each
    recent prompt prefix lives (``prefix_aware``)."""

    rng: random.Random = field(default_factory=random.Random)
    cursor: int = 0
    load_factor: float = 1.25  # prefix_aware: a replica takes at most this x the mean load
    load_floor: int = 4  # ... but is never passed over with fewer than this many in flight
    # prefix_aware: prefix key -> its replica (least recently seen first), and per replica
    # how many keys it holds; at most ``max_homes`` keys are remembered
    homes: collections.OrderedDict[str, str] = field(default_factory=collections.OrderedDict)
    home_counts: dict[str, int] = field(default_factory=dict)
    max_homes: int = 4096

    def set_home(self, key: str, replica_id: str) -> None:
        old = self.homes.get(key)
        if old is not None:
            self._uncount(old)
        self.homes[key] = replica_id
        self.homes.move_to_end(key)
        self.home_counts[replica_id] = self.home_counts.get(replica_id, 0) + 1
        if len(self.homes) > self.max_homes:
            _, gone = self.homes.popitem(last=False)
            self._uncount(gone)

    def _uncount(self, replica_id: str) -> None:
        left = self.home_counts[replica_id] - 1
        if left:
            self.home_counts[replica_id] = left
        else:  # no key for a replica with no home: one per replica ever, for the LB's life
            del self.home_counts[replica_id]


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
    if policy is Policy.PREFIX_AWARE and request.prefix_key is not None:
        return _bounded_hash(cands, stats, request.prefix_key, state)
    if policy is Policy.ROUND_ROBIN:
        choice = cands[state.cursor % n]
        state.cursor = (state.cursor + 1) % (1 << 30)
        return choice.id
    if policy is Policy.LEAST_LOAD or policy is Policy.PREFIX_AWARE:
        return _least(cands, stats, state, by_tokens=False)
    if policy is Policy.LEAST_TOKENS:
        return _least(cands, stats, state, by_tokens=True)
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


def _least(
    cands: Sequence[ReplicaView],
    stats: Mapping[str, ReplicaStats],
    state: PolicyState,
    *,
    by_tokens: bool,
) -> str:
    """The replica with the fewest requests (or tokens) in flight; the scan starts at a
    rotating position, so ties (an idle service) are shared round-robin."""
    n = len(cands)
    start = state.cursor % n
    state.cursor = (state.cursor + 1) % (1 << 30)
    best = cands[start]
    st = stats.get(best.id, _NO_STATS)
    best_load = st.tokens if by_tokens else st.in_flight
    for k in range(1, n):
        r = cands[(start + k) % n]
        st = stats.get(r.id, _NO_STATS)
        load = st.tokens if by_tokens else st.in_flight
        if load < best_load:
            best, best_load = r, load
    return best.id


def _bounded_hash(
    cands: Sequence[ReplicaView], stats: Mapping[str, ReplicaStats], key: str, state: PolicyState
) -> str:
    """The replica for prefix ``key``: consistent hashing with two bounds.

    - *Prefixes*: each key has a home, remembered in ``state.homes``; a new key (or one whose
      home left, or holds more than its share) takes the first replica in its rendezvous order
      that holds fewer than ``ceil(keys / n)`` keys. Pure hashing would put 6 of 8 system
      prompts on one of two replicas as often as not; this keeps them 4 and 4, and a replica
      that joins takes over about 1/n of the keys, the others stay.
    - *Load*: a home with ``ceil(load_factor * (in flight + 1) / n)`` requests in flight or more
      is passed over for this request (the key keeps its home): the first replica in the
      key's order under the bound serves it. The bound is at least ``load_floor`` (4):
      Mirrokni's bound treats every request alike, but an LLM server batches a few requests
      at little cost while a request sent away from its prefix pays a whole prefill (and
      evicts another prefix there), so a home is not "full" below a few requests.

    Example (load_factor 1.25, three replicas, 8 in flight: bound ceil(1.25 * 9 / 3) = 4):
    the key ranks b > a > c and lives on b; b has 4 in flight (full), a has 3 -> a."""
    n = len(cands)
    loads = {r.id: stats.get(r.id, _NO_STATS).in_flight for r in cands}
    bound = max(state.load_floor, math.ceil(state.load_factor * (sum(loads.values()) + 1) / n))
    ranked = sorted((r.id for r in cands), key=lambda rid: _affinity_score(key, rid), reverse=True)
    counts = state.home_counts
    home = state.homes.get(key)
    at_home = home is not None and home in loads
    keys = sum(counts.get(rid, 0) for rid in ranked) + (0 if at_home else 1)
    share = max(1, math.ceil(keys / n))
    if home is not None and at_home and counts.get(home, 0) <= share:
        state.homes.move_to_end(key)
        if loads[home] < bound:
            return home
    else:  # a new key, or its home left or holds more than its share: a new home
        for rid in ranked:
            if counts.get(rid, 0) < share and loads[rid] < bound:
                state.set_home(key, rid)
                return rid
    for rid in ranked:  # the home is busy: the first under the load bound serves this one
        if loads[rid] < bound:
            return rid
    return ranked[0]  # unreachable: some replica is at or under the mean
