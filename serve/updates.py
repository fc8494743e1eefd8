"""Which replicas of older versions leave during an update, and in what order.

An update (``serve update``) starts replicas of the new version beside the old ones; the old
ones leave as the new become READY, so the service never has less READY capacity than it
needs:

- ``rolling``: one old replica leaves for each new READY one — old replicas kept =
  max(0, target − new READY);
- ``blue_green``: every old replica stays until the new version alone has ``target`` READY
  replicas, then all leave at once.

Those that leave go in order of how little they serve: PROVISIONING first, then STARTING,
NOT_READY, and READY last; the lower replica id first on a tie.

Scenarios (rows in ``tests/serve/test_updates.py``):

- rolling, target 3, old READY 1 2 3, new READY 1 → keep 2: retire 1;
- rolling, target 3, old READY 1 2 + PROVISIONING 3, new READY 2 → keep 1: retire 3, then 1;
- blue_green, target 2, new READY 1 → retire nothing; new READY 2 → retire every old one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

from spotd.serve.replica_state import ReplicaId, ReplicaStatus

S = ReplicaStatus
RETIRE_ORDER = MappingProxyType({S.PROVISIONING: 0, S.STARTING: 1, S.NOT_READY: 2, S.READY: 3})


@dataclass(frozen=True, slots=True)
class OldReplica:
    id: ReplicaId
    status: ReplicaStatus  # alive: PROVISIONING, STARTING, NOT_READY or READY


def kept_old(*, mode: str, target: int, ready_new: int, old: int) -> int:
    """How many old replicas stay for now."""
    if mode == "blue_green":
        return 0 if ready_new >= target else old
    return max(0, target - ready_new)


def retire_old(
    old: Sequence[OldReplica], *, mode: str, target: int, ready_new: int
) -> tuple[ReplicaId, ...]:
    """The old replicas to retire now, in the order they should go."""
    keep = min(len(old), kept_old(mode=mode, target=target, ready_new=ready_new, old=len(old)))
    ordered = sorted(old, key=lambda r: (RETIRE_ORDER[r.status], r.id))
    return tuple(r.id for r in ordered[: len(old) - keep])
