"""``pick`` as tables: replicas, stats and a request in; the chosen replica out."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from spotd.lb.policy import (
    Policy,
    PolicyState,
    ReplicaState,
    ReplicaStats,
    ReplicaView,
    RequestInfo,
    pick,
)

R, D = ReplicaState.READY, ReplicaState.DRAINING


def views(*specs: tuple[str, ReplicaState]) -> list[ReplicaView]:
    return [
        ReplicaView(id=i, url=f"http://127.0.0.1:{9000 + n}", state=s)
        for n, (i, s) in enumerate(specs)
    ]


def stats(**in_flight: int) -> dict[str, ReplicaStats]:
    return {k: ReplicaStats(in_flight=v) for k, v in in_flight.items()}


ABC = views(("a", R), ("b", R), ("c", R))


@pytest.mark.parametrize(
    ("replicas", "st", "request_", "policy", "expected"),
    [
        # nothing to pick
        ([], {}, RequestInfo(), Policy.ROUND_ROBIN, [None]),
        (views(("a", D)), {}, RequestInfo(), Policy.LEAST_LOAD, [None]),
        (
            ABC,
            {k: ReplicaStats(ejected=True) for k in "abc"},
            RequestInfo(),
            Policy.POWER_OF_TWO,
            [None],
        ),
        (ABC, {}, RequestInfo(exclude=frozenset("abc")), Policy.ROUND_ROBIN, [None]),
        # round robin: in order, skipping draining, ejected and excluded replicas
        (ABC, {}, RequestInfo(), Policy.ROUND_ROBIN, ["a", "b", "c", "a"]),
        (
            views(("a", R), ("b", D), ("c", R)),
            {},
            RequestInfo(),
            Policy.ROUND_ROBIN,
            ["a", "c", "a", "c"],
        ),
        (
            ABC,
            {"b": ReplicaStats(ejected=True)},
            RequestInfo(),
            Policy.ROUND_ROBIN,
            ["a", "c", "a"],
        ),
        (ABC, {}, RequestInfo(exclude=frozenset({"a"})), Policy.ROUND_ROBIN, ["b", "c", "b"]),
        # least load: fewest in flight; ties shared from a rotating start
        (ABC, stats(a=3, b=1, c=2), RequestInfo(), Policy.LEAST_LOAD, ["b", "b", "b"]),
        (ABC, stats(a=0, b=0, c=0), RequestInfo(), Policy.LEAST_LOAD, ["a", "b", "c", "a"]),
        (ABC, stats(a=5, b=0, c=0), RequestInfo(), Policy.LEAST_LOAD, ["b", "b", "c"]),
        (views(("a", R), ("b", D)), stats(a=9, b=0), RequestInfo(), Policy.LEAST_LOAD, ["a"]),
        (
            ABC,
            stats(a=0, b=1, c=1),
            RequestInfo(exclude=frozenset({"a"})),
            Policy.LEAST_LOAD,
            ["b", "c"],
        ),
        # one eligible replica: every policy picks it
        (views(("a", D), ("b", R)), {}, RequestInfo(), Policy.POWER_OF_TWO, ["b", "b"]),
    ],
)
def test_pick_sequence(
    replicas: list[ReplicaView],
    st: dict[str, ReplicaStats],
    request_: RequestInfo,
    policy: Policy,
    expected: list[str | None],
) -> None:
    state = PolicyState(rng=random.Random(0))
    got = [pick(replicas, st, request_, policy=policy, state=state) for _ in expected]
    assert got == expected


def test_power_of_two_picks_the_less_loaded_of_two_distinct_draws() -> None:
    # With two replicas the two draws are always both: the less loaded one always wins.
    two = views(("a", R), ("b", R))
    state = PolicyState(rng=random.Random(7))
    assert {
        pick(two, stats(a=4, b=1), RequestInfo(), policy=Policy.POWER_OF_TWO, state=state)
        for _ in range(50)
    } == {"b"}
    # With three, the most loaded replica can never win a draw.
    counts = Counter(
        pick(ABC, stats(a=0, b=5, c=9), RequestInfo(), policy=Policy.POWER_OF_TWO, state=state)
        for _ in range(300)
    )
    assert counts["c"] == 0
    assert counts["a"] > counts["b"] > 0


def test_power_of_two_is_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[str | None]:
        state = PolicyState(rng=random.Random(seed))
        return [
            pick(ABC, stats(a=0, b=0, c=0), RequestInfo(), policy=Policy.POWER_OF_TWO, state=state)
            for _ in range(20)
        ]

    assert run(3) == run(3)


@pytest.mark.parametrize("policy", list(Policy))
def test_session_affinity_sticks_whatever_the_policy(policy: Policy) -> None:
    state = PolicyState(rng=random.Random(0))
    load = stats(a=0, b=0, c=0)
    for key in ("alice", "bob", "carol", "dave"):
        first = pick(ABC, load, RequestInfo(session_key=key), policy=policy, state=state)
        again = [
            pick(ABC, load, RequestInfo(session_key=key), policy=policy, state=state)
            for _ in range(5)
        ]
        assert again == [first] * 5


def test_affinity_moves_only_the_keys_of_a_replica_that_leaves() -> None:
    """R1, R2, R3 hold keys; R2 drains -> only R2's keys move, and they move to R1 or R3."""
    state = PolicyState()
    keys = [f"session-{i}" for i in range(300)]
    before = {
        k: pick(ABC, {}, RequestInfo(session_key=k), policy=Policy.ROUND_ROBIN, state=state)
        for k in keys
    }
    assert set(Counter(before.values())) == {"a", "b", "c"}  # spread over all three
    drained = views(("a", R), ("b", D), ("c", R))
    after = {
        k: pick(drained, {}, RequestInfo(session_key=k), policy=Policy.ROUND_ROBIN, state=state)
        for k in keys
    }
    for k in keys:
        if before[k] == "b":
            assert after[k] in {"a", "c"}
        else:
            assert after[k] == before[k]


def test_affinity_retry_goes_elsewhere() -> None:
    state = PolicyState()
    home = pick(ABC, {}, RequestInfo(session_key="s"), policy=Policy.LEAST_LOAD, state=state)
    assert home is not None
    other = pick(
        ABC,
        {},
        RequestInfo(session_key="s", exclude=frozenset({home})),
        policy=Policy.LEAST_LOAD,
        state=state,
    )
    assert other not in (None, home)
