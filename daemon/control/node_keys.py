"""The keys of a multi-node attempt's nodes, replacements included (``control.node_replace``).

An attempt's first nodes are ``j<job>-a<n>-n<rank>`` (generation 0); the replacement of rank
``r`` in the attempt's ``g``-th replacement round is ``j<job>-a<n>-n<r>-g<g>``. The attempt's
current nodes are each rank's row of the highest generation; the others are history.
"""

from __future__ import annotations

from collections.abc import Sequence

from spotd.store import InstanceRow

__all__ = [
    "GENERATION_ENV",
    "current_nodes",
    "generation_of",
    "node_envs",
    "node_log_name",
    "replacement_key",
]

GENERATION_ENV = "SPOTD_GENERATION"  # the job sees how often its nodes restarted together


def generation_of(key: str) -> int:
    """``j3-a1-n2-g2`` -> 2; an attempt's first nodes (``j3-a1-n2``) are generation 0."""
    head, sep, tail = key.rpartition("-g")
    return int(tail) if sep and tail.isdigit() and "-n" in head else 0


def replacement_key(attempt_id: str, rank: int, generation: int) -> str:
    return f"{attempt_id}-n{rank}-g{generation}"


def node_log_name(key: str, rank: int) -> str:
    """A node's log file in the attempt's log folder; a replacement's is its own."""
    g = generation_of(key)
    return f"node-{rank}.log" if g == 0 else f"node-{rank}-g{g}.log"


def node_envs(key: str) -> dict[str, str]:
    """What a replacement's agent is told at launch: the generation it joins."""
    g = generation_of(key)
    return {GENERATION_ENV: str(g)} if g else {}


def current_nodes(rows: Sequence[InstanceRow]) -> list[InstanceRow]:
    """The attempt's nodes now, by rank: each rank's row of the highest generation."""
    best: dict[int, InstanceRow] = {}
    for r in rows:
        held = best.get(r.node_rank)
        if held is None or generation_of(r.key) > generation_of(held.key):
            best[r.node_rank] = r
    return [best[rank] for rank in sorted(best)]
