"""``restart_order``: what a gang node's heartbeat is answered with, as a table.

Nodes are ``key:phase:address`` (phase "-" for none yet, address "-" for not listed)."""

from __future__ import annotations

import pytest

from spotd.recovery.nodes import NodeView, RestartOrder, restart_order


def _nodes(spec: str) -> list[NodeView]:
    out = []
    for item in spec.split():
        key, phase, address = item.split(":")
        out.append(
            NodeView(key, None if phase == "-" else phase, None if address == "-" else address)
        )
    return out


@pytest.mark.parametrize(
    ("case", "asking", "generation", "phase", "current", "nodes", "drained", "order"),
    [
        # -- the first run: every node waits for every address ----------------------------
        (
            "a running first generation: nothing to say",
            "n0",
            0,
            "run",
            0,
            "n0:run:10.0.0.1 n1:run:10.0.0.2",
            True,
            None,
        ),
        (
            "the first node waits; the other is still setting up: no go",
            "n0",
            0,
            "waiting",
            0,
            "n0:waiting:10.0.0.1 n1:setup:10.0.0.2",
            True,
            RestartOrder(0, 2, "", False),
        ),
        (
            "every node waits but one has no address yet: no go",
            "n0",
            0,
            "waiting",
            0,
            "n0:waiting:10.0.0.1 n1:waiting:-",
            True,
            RestartOrder(0, 2, "", False),
        ),
        (
            "every node waits and is listed: go, with the real addresses in rank order",
            "n1",
            0,
            "waiting",
            0,
            "n0:waiting:10.0.0.1 n1:setup:10.0.0.2",
            True,
            RestartOrder(0, 2, "10.0.0.1\n10.0.0.2", True),
        ),
        (
            "a provider without addresses: go, and the agent keeps the launch's list",
            "n0",
            0,
            "waiting",
            0,
            "n0:waiting:127.0.0.1 n1:waiting:127.0.0.1",
            True,
            RestartOrder(0, 2, "", True),
        ),
        # -- a restart after a node was replaced ------------------------------------------
        (
            "an agent behind the newest generation is told it, not to go yet",
            "n0",
            0,
            "run",
            1,
            "n0:run:10.0.0.1 n1:-:10.0.0.9",
            True,
            RestartOrder(1, 2, "10.0.0.1\n10.0.0.9", False),
        ),
        (
            "at the generation and running: nothing to say",
            "n0",
            1,
            "run",
            1,
            "n0:run:10.0.0.1 n1:run:10.0.0.9",
            True,
            None,
        ),
        (
            "every current node waits, the replaced one still syncs: no go",
            "n0",
            1,
            "waiting",
            1,
            "n0:waiting:10.0.0.1 n1:waiting:10.0.0.9",
            False,
            RestartOrder(1, 2, "10.0.0.1\n10.0.0.9", False),
        ),
        (
            "every current node waits and the replaced one is done: go",
            "n1",
            1,
            "waiting",
            1,
            "n0:waiting:10.0.0.1 n1:setup:10.0.0.9",
            True,
            RestartOrder(1, 2, "10.0.0.1\n10.0.0.9", True),
        ),
        (
            "the replacement is not listed yet: the stand-in address, the go anyway",
            "n0",
            1,
            "waiting",
            1,
            "n0:waiting:10.0.0.1 n1:waiting:-",
            True,
            RestartOrder(1, 2, "10.0.0.1\n127.0.0.1", True),
        ),
        (
            "a replaced node draining asks: it restarts nothing",
            "old1",
            0,
            "run",
            1,
            "n0:waiting:10.0.0.1 n1:waiting:10.0.0.9",
            False,
            None,
        ),
    ],
)
def test_restart_order(
    case: str,
    asking: str,
    generation: int,
    phase: str,
    current: int,
    nodes: str,
    drained: bool,
    order: RestartOrder | None,
) -> None:
    got = restart_order(
        asking, generation, phase, current=current, nodes=_nodes(nodes), replaced_drained=drained
    )
    assert got == order, case
