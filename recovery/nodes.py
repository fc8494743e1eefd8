"""Partial recovery of a multi-node job: replace the lost node, or relaunch every node.

A gang job (``num_nodes > 1``) used to end its whole attempt when one node was lost and
relaunch every node somewhere else, though the other nodes were healthy and set up.
``decide_node_loss`` says when the healthy nodes are kept and only the lost ones are
launched again, in the attempt's own zone (nodes of one job share a zone: that is where the
network between them is), first match wins:

1. ``RelaunchAll`` — partial recovery is off (``max_rounds`` 0) or the job has one node;
2. ``RelaunchAll`` — the attempt has had ``max_rounds`` replacements already: a zone that keeps
   taking nodes back is left, as a preempted single-node job leaves it;
3. ``RelaunchAll`` — the zone refused a launch lately (``zone_refused``): a replacement there
   would fail too; move the whole job as before;
4. ``RelaunchAll`` — fewer than half of the nodes survive: little is kept, and so many losses
   at once say the zone is being drained;
5. ``RelaunchAll`` — a survivor's run or setup already ended: there is no run left on it to
   restart with the others (a survivor that is only SUSPECT — heartbeats late, the provider
   says it runs — is kept: suspicion never tears a node down, and if it is gone after all,
   its own loss is handled when it is seen);
6. ``ReplaceNodes`` — otherwise: the lost ranks, each launched again in the same zone, and the
   run restarted on every node together with the new node list.

A node under an interruption NOTICE counts as lost, by the same rules: it is replaced at once
(make-before-break: the replacement boots while the noticed node syncs its final checkpoint),
and ``ReplaceNodes.noticed`` names it, so the executor lets it drain instead of terminating
it and holds the restart until its final snapshot is in (``spotd.control.node_replace``).

Scenarios (rows in ``tests/recovery/test_partial_decision.py``): 4 nodes, node 2 PREEMPTED,
the others running → ReplaceNodes((2,)); the same with node 2 NOTICE → ReplaceNodes((2,)),
noticed (2,); 4 nodes, nodes 1, 2 and 3 LOST → RelaunchAll (one survivor of four); 2 nodes,
node 1 PREEMPTED while node 0 is SUSPECT → ReplaceNodes((1,)); node 1 PREEMPTED after node
0's run exited → RelaunchAll; node 1 PREEMPTED after a third replacement with ``max_rounds``
3 → RelaunchAll.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from spotd.recovery.detection import VerdictKind
from spotd.recovery.watch import NodeReport

__all__ = [
    "GONE",
    "READY_PHASES",
    "UNKNOWN_ADDRESS",
    "NodeLossAction",
    "NodeView",
    "RelaunchAll",
    "ReplaceNodes",
    "RestartOrder",
    "decide_node_loss",
    "restart_order",
]

V = VerdictKind
GONE = frozenset({V.PREEMPTED, V.LOST})  # the node is gone: replaceable
ENDED_PHASES = frozenset({"exited", "setup_failed", "preempted"})
READY_PHASES = frozenset({"waiting", "run", "exited"})  # ready for (or past) the go
UNKNOWN_ADDRESS = "127.0.0.1"  # a listing's address where its provider reports none


@dataclass(frozen=True, slots=True)
class ReplaceNodes:
    """Keep the survivors; launch the nodes of ``ranks`` again in the attempt's zone."""

    ranks: tuple[int, ...]
    lost: tuple[NodeReport, ...]  # the nodes replaced, with their verdicts (the why)
    reason: str
    noticed: tuple[int, ...] = ()  # ranks under a notice: they drain their final checkpoint


@dataclass(frozen=True, slots=True)
class RelaunchAll:
    """End the attempt and place the whole job again (what a single-node job always does)."""

    reason: str


NodeLossAction = ReplaceNodes | RelaunchAll


def decide_node_loss(
    nodes: Sequence[NodeReport], *, rounds_so_far: int, max_rounds: int, zone_refused: bool
) -> NodeLossAction:
    """What to do about an attempt some of whose nodes are lost (rules in the docstring)."""
    lost = [n for n in nodes if n.verdict.kind in GONE | {V.NOTICE}]
    survivors = [n for n in nodes if n not in lost]
    if max_rounds <= 0:
        return RelaunchAll("partial recovery is off")
    if len(nodes) < 2:
        return RelaunchAll("a single-node job has no healthy node to keep")
    if rounds_so_far >= max_rounds:
        return RelaunchAll(
            f"the attempt had {rounds_so_far} node replacements already (at most {max_rounds})"
        )
    if zone_refused:
        return RelaunchAll("the zone refused a launch lately: no replacement there")
    if 2 * len(survivors) < len(nodes):
        return RelaunchAll(f"only {len(survivors)} of {len(nodes)} nodes survive")
    ended = [n for n in survivors if n.verdict.kind == V.EXITED or n.phase in ENDED_PHASES]
    if ended:
        n = ended[0]
        return RelaunchAll(f"node {n.node_rank}'s run has ended (phase {n.phase})")
    ranks = tuple(sorted(n.node_rank for n in lost))
    kept = ", ".join(str(n.node_rank) for n in survivors)
    return ReplaceNodes(
        ranks=ranks,
        lost=tuple(sorted(lost, key=lambda n: n.node_rank)),
        reason=f"keeping node{'s' if len(survivors) > 1 else ''} {kept}",
        noticed=tuple(sorted(n.node_rank for n in lost if n.verdict.kind == V.NOTICE)),
    )


# -- the restart order a node's heartbeat is answered with -----------------------------------


@dataclass(frozen=True, slots=True)
class NodeView:
    """A current node of an attempt as the order sees it: its agent's last phase, and its
    address in the provider's latest listing (None: not listed there)."""

    key: str
    phase: str | None
    address: str | None


@dataclass(frozen=True, slots=True)
class RestartOrder:
    """The agent's order: restart into ``generation`` with ``node_ips`` (empty: keep the
    launch's list), and ``go`` once every node is ready."""

    generation: int
    num_nodes: int
    node_ips: str
    go: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "num_nodes": self.num_nodes,
            "node_ips": self.node_ips,
            "go": self.go,
        }


def restart_order(
    asking: str,
    generation: int,
    phase: str | None,
    *,
    current: int,
    nodes: Sequence[NodeView],
    replaced_drained: bool,
) -> RestartOrder | None:
    """What the heartbeat of node ``asking`` (at ``generation``, in ``phase``) is answered
    with when its attempt is at generation ``current`` (None: nothing to say).

    - **The first run** (``current`` 0): a gang's agents report ``waiting`` at generation 0
      and are told to go once every node waits and every node is listed with an address, so
      ``SPOTD_NODE_IPS`` names the real nodes from the first run on; ``node_ips`` stays empty
      where the provider reports no addresses (every one is ``UNKNOWN_ADDRESS``), and the agent
      keeps its launch's list (Slurm's node list, say).
    - **A restart** (``current`` > 0): an agent behind is told the newest generation; one at
      it and ``waiting`` is told to go once every current node is ready and every replaced
      node is done (``replaced_drained``: its final checkpoint synced, or its notice run out).
      A node that is no longer current (a replaced one draining) restarts nothing.
    """
    phases = {n.key: (phase if n.key == asking else n.phase) for n in nodes}
    every_ready = all(p in READY_PHASES for p in phases.values())
    if current == 0:
        if phase != "waiting" or generation != 0:
            return None
        seen = [n.address or "" for n in nodes]
        go = every_ready and all(seen)
        known = any(a != UNKNOWN_ADDRESS for a in seen)
        return RestartOrder(0, len(nodes), "\n".join(seen) if go and known else "", go)
    if generation >= current and phase != "waiting":
        return None
    if asking not in phases:
        return None
    go = generation >= current and every_ready and replaced_drained
    ips = "\n".join(n.address or UNKNOWN_ADDRESS for n in nodes)
    return RestartOrder(current, len(nodes), ips, go)
