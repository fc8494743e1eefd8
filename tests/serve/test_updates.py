"""Which replicas of an older version leave during rolling and blue-green updates."""

from __future__ import annotations

import pytest

from spotd.serve.replica_state import ReplicaId
from spotd.serve.replica_state import ReplicaStatus as S
from spotd.serve.updates import OldReplica, retire_old


def old(*spec: tuple[int, S]) -> list[OldReplica]:
    return [OldReplica(ReplicaId(i), status) for i, status in spec]


READY3 = old((1, S.READY), (2, S.READY), (3, S.READY))


@pytest.mark.parametrize(
    ("mode", "target", "ready_new", "replicas", "want"),
    [
        ("rolling", 3, 0, READY3, ()),
        ("rolling", 3, 1, READY3, (1,)),
        ("rolling", 3, 3, READY3, (1, 2, 3)),
        # the least useful leave first: PROVISIONING, STARTING, NOT_READY, then READY
        ("rolling", 3, 2, old((1, S.READY), (2, S.READY), (3, S.PROVISIONING)), (3, 1)),
        ("rolling", 2, 2, old((4, S.READY), (5, S.NOT_READY), (6, S.STARTING)), (6, 5, 4)),
        # more target than old replicas: none leaves before the new version is READY
        ("rolling", 5, 0, READY3, ()),
        ("rolling", 5, 3, READY3, (1,)),
        ("blue_green", 2, 1, READY3, ()),
        ("blue_green", 2, 2, READY3, (1, 2, 3)),
        ("blue_green", 5, 0, READY3, ()),
    ],
    ids=[
        "rolling-none-ready",
        "rolling-one-ready",
        "rolling-all-ready",
        "rolling-provisioning-first",
        "rolling-order",
        "rolling-scale-up-nothing-ready",
        "rolling-scale-up-some-ready",
        "blue-green-partial",
        "blue-green-complete",
        "blue-green-scale-up",
    ],
)
def test_retire_old(
    mode: str, target: int, ready_new: int, replicas: list[OldReplica], want: tuple[int, ...]
) -> None:
    assert retire_old(replicas, mode=mode, target=target, ready_new=ready_new) == want
