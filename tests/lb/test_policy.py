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


def tokens(**load: tuple[int, int]) -> dict[str, ReplicaStats]:
    """replica=(in flight, outstanding tokens)"""
    return {k: ReplicaStats(in_flight=n, tokens=t) for k, (n, t) in load.items()}


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
        # least tokens: fewest outstanding tokens, whatever the request counts say
        (
            ABC,
            tokens(a=(1, 1000), b=(3, 90), c=(2, 400)),
            RequestInfo(),
            Policy.LEAST_TOKENS,
            ["b", "b", "b"],
        ),
        (
            ABC,
            tokens(a=(0, 0), b=(0, 0), c=(0, 0)),
            RequestInfo(),
            Policy.LEAST_TOKENS,
            list("abca"),
        ),
        (
            ABC,
            tokens(a=(1, 500), b=(1, 20), c=(1, 20)),
            RequestInfo(),
            Policy.LEAST_TOKENS,
            list("bbc"),
        ),
        (
            views(("a", R), ("b", D)),
            tokens(a=(5, 9000), b=(0, 0)),
            RequestInfo(),
            Policy.LEAST_TOKENS,
            ["a"],
        ),
        (
            ABC,
            tokens(a=(0, 0), b=(2, 50), c=(9, 900)),
            RequestInfo(exclude=frozenset({"a"})),
            Policy.LEAST_TOKENS,
            ["b", "b"],
        ),
        (
            ABC,
            {"a": ReplicaStats(ejected=True), "b": ReplicaStats(in_flight=1, tokens=300)},
            RequestInfo(),
            Policy.LEAST_TOKENS,
            ["c", "c"],
        ),
        # ... and least load, on the same counts, counts requests
        (ABC, tokens(a=(1, 1000), b=(3, 90), c=(2, 400)), RequestInfo(), Policy.LEAST_LOAD, ["a"]),
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


# -- prefix_aware: bounded-load consistent hashing over the prompt's start --------------------

P = Policy.PREFIX_AWARE


def prefix(key: str, exclude: frozenset[str] = frozenset()) -> RequestInfo:
    return RequestInfo(prefix_key=key, exclude=exclude)


def test_prefix_aware_same_prefix_same_replica() -> None:
    state = PolicyState()
    keys = [f"system prompt {i}" for i in range(40)]
    load = stats(a=0, b=0, c=0)
    homes = {k: pick(ABC, load, prefix(k), policy=P, state=state) for k in keys}
    for k in keys:
        assert [pick(ABC, load, prefix(k), policy=P, state=state) for _ in range(3)] == [
            homes[k]
        ] * 3
    assert set(homes.values()) == {"a", "b", "c"}  # different prefixes spread


@pytest.mark.parametrize(
    ("in_flight", "expected"),
    [
        # bound = ceil(1.25 * (total + 1) / 3)
        ({"home": 0, "x": 0, "y": 0}, "home"),  # bound 1 (floor 4): home has 0
        ({"home": 3, "x": 3, "y": 3}, "home"),  # bound 4: everyone under it
        ({"home": 4, "x": 2, "y": 2}, "second"),  # bound 4: home is full, its second choice
        ({"home": 9, "second": 9, "x": 0}, "third"),  # bound 8: both full
        ({"home": 3, "x": 0, "y": 0}, "home"),  # bound 2, but never under the floor of 4
    ],
)
def test_prefix_aware_spills_a_hot_prefix_to_its_next_choice(
    in_flight: dict[str, int], expected: str
) -> None:
    key = "hot system prompt"
    state = PolicyState()
    order = sorted("abc", key=lambda r: -_score(key, r))
    names = {"home": order[0], "second": order[1], "third": order[2]}
    loads: dict[str, int] = {}
    others = iter(r for r in order if r not in {names[k] for k in in_flight if k in names})
    for k, v in in_flight.items():
        loads[names[k] if k in names else next(others)] = v
    got = pick(ABC, stats(**loads), prefix(key), policy=P, state=state)
    assert got == names.get(expected, expected)


def _score(key: str, replica: str) -> int:
    from spotd.lb.policy import _affinity_score

    return _affinity_score(key, replica)


def test_prefix_aware_a_hot_prefix_takes_at_most_its_share() -> None:
    """One prefix, 60 requests arriving while none finishes: its home replica holds at most
    1.25x the mean, the rest go to the others (not all to one)."""
    state = PolicyState()
    load = stats(a=0, b=0, c=0)
    for _ in range(60):
        rid = pick(ABC, load, prefix("the hot one"), policy=P, state=state)
        assert rid is not None
        load[rid].in_flight += 1
    counts = {k: v.in_flight for k, v in load.items()}
    assert max(counts.values()) <= 25  # ceil(1.25 * 60 / 3)
    assert min(counts.values()) > 0


def test_prefix_aware_a_replica_leaving_moves_only_its_keys() -> None:
    state = PolicyState()
    four = views(("a", R), ("b", R), ("c", R), ("d", R))
    keys = [f"prefix-{i}" for i in range(400)]
    before = {k: pick(four, {}, prefix(k), policy=P, state=state) for k in keys}
    three = views(("a", R), ("b", R), ("c", D), ("d", R))
    after = {k: pick(three, {}, prefix(k), policy=P, state=state) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == "c" for k in moved)
    assert 0.15 < len(moved) / len(keys) < 0.35  # about 1/4


def test_prefix_aware_without_a_prefix_is_least_load() -> None:
    state = PolicyState()
    assert pick(ABC, stats(a=3, b=0, c=2), RequestInfo(), policy=P, state=state) == "b"


def test_prefix_aware_retry_goes_elsewhere_and_session_wins() -> None:
    state = PolicyState()
    home = pick(ABC, {}, prefix("k"), policy=P, state=state)
    assert home is not None
    assert pick(ABC, {}, prefix("k", frozenset({home})), policy=P, state=state) not in (None, home)
    by_session = pick(ABC, {}, RequestInfo(session_key="s"), policy=P, state=state)
    both = RequestInfo(session_key="s", prefix_key="k")
    assert pick(ABC, {}, both, policy=P, state=state) == by_session


@pytest.mark.parametrize(
    ("deadline", "now", "margin", "delay"),
    [
        (1120.0, 1000.0, 10.0, 110.0),  # a 2-minute notice: the replica works 110 s more
        (1005.0, 1000.0, 10.0, 0.0),  # shorter than the margin: at once
        (990.0, 1000.0, 10.0, 0.0),  # already past
        (1030.0, 1000.0, 0.0, 30.0),  # no margin: at the deadline
    ],
)
def test_handoff_delay(deadline: float, now: float, margin: float, delay: float) -> None:
    from spotd.lb.llmstream import handoff_delay

    assert handoff_delay(deadline, now, margin) == delay


@pytest.mark.parametrize("seed", range(5))
def test_prefix_aware_few_prefixes_spread_evenly(seed: int) -> None:
    """8 system prompts on 2 replicas: 4 and 4, whatever the hash says (pure hashing often
    gives 6 and 2: one replica's cache thrashes while the other's idles)."""
    state = PolicyState()
    two = views(("a", R), ("b", R))
    keys = [f"system prompt {seed}-{i}" for i in range(8)]
    homes = {k: pick(two, {}, prefix(k), policy=P, state=state) for k in keys}
    assert Counter(homes.values()) == {"a": 4, "b": 4}
    again = {k: pick(two, {}, prefix(k), policy=P, state=state) for k in keys}
    assert again == homes


def test_prefix_aware_a_replica_joining_takes_its_share_and_no_more_moves() -> None:
    state = PolicyState()
    keys = [f"prefix-{i}" for i in range(300)]
    before = {k: pick(ABC, {}, prefix(k), policy=P, state=state) for k in keys}
    four = views(("a", R), ("b", R), ("c", R), ("d", R))
    after = {k: pick(four, {}, prefix(k), policy=P, state=state) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "d" for k in moved)  # keys move only to the newcomer
    assert 60 <= len(moved) <= 80  # about 1/4 of them
    assert {k: pick(four, {}, prefix(k), policy=P, state=state) for k in keys} == after


def test_prefix_aware_remembers_a_bounded_number_of_prefixes() -> None:
    state = PolicyState(max_homes=10)
    for i in range(50):
        pick(ABC, {}, prefix(f"k{i}"), policy=P, state=state)
    assert len(state.homes) == 10
    assert sum(state.home_counts.values()) == 10
    # replicas that come and go leave no count behind once they hold no prefix
    for i in range(50):
        pick([ABC[i % 3]], {}, prefix(f"solo{i}"), policy=P, state=state)
    state.set_home("x", "gone-replica")
    for i in range(10):
        state.set_home(f"y{i}", "a")
    assert "gone-replica" not in state.home_counts and 0 not in state.home_counts.values()


def test_every_lb_policy_is_a_service_yaml_name() -> None:
    """``load_balancing_policy`` in the service YAML accepts exactly the LB's policies (the
    daemon passes the name to ``python -m spotd.lb --policy``)."""
    from spotd.spec import LoadBalancingPolicy

    assert {p.value for p in LoadBalancingPolicy} == {p.value for p in Policy}
