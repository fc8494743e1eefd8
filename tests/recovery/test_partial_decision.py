"""Replace only the lost node of a multi-node job, or relaunch every node (``recovery.nodes``)."""

from __future__ import annotations

import pytest

from spotd.recovery.detection import Verdict, VerdictKind
from spotd.recovery.nodes import RelaunchAll, ReplaceNodes, decide_node_loss
from spotd.recovery.watch import NodeReport

V = VerdictKind


def gang(*kinds: VerdictKind, phases: dict[int, str] | None = None) -> list[NodeReport]:
    phases = phases or {}
    return [
        NodeReport(
            key=f"j1-a1-n{rank}",
            node_rank=rank,
            phase=phases.get(rank, "run"),
            reported=True,
            verdict=Verdict(kind, f"why {rank}"),
        )
        for rank, kind in enumerate(kinds)
    ]


H, P, L, N, S = V.HEALTHY, V.PREEMPTED, V.LOST, V.NOTICE, V.SUSPECT

# (nodes, rounds so far, max rounds, zone refused) -> replaced ranks, or the words of the refusal
CASES = [
    pytest.param(gang(H, H, P, H), 0, 3, False, (2,), id="4 nodes, node 2 preempted: replace it"),
    pytest.param(gang(L, H), 0, 3, False, (0,), id="2 nodes, node 0 lost: half survive"),
    pytest.param(gang(H, P, P, H), 1, 3, False, (1, 2), id="two of four lost: both replaced"),
    pytest.param(gang(H, H, P, H), 2, 3, False, (2,), id="third round still allowed"),
    pytest.param(
        gang(H, H, P, H, phases={0: "setup", 1: "waiting", 3: "restarting"}),
        1,
        3,
        False,
        (2,),
        id="survivors in setup or mid-restart are healthy",
    ),
    pytest.param(gang(H, H, P, H), 0, 0, False, "off", id="partial recovery off"),
    pytest.param(gang(P), 0, 3, False, "single-node", id="one node: nothing to keep"),
    pytest.param(gang(H, H, N, H), 0, 3, False, (2,), id="a notice: replaced at once"),
    pytest.param(gang(N, P, H, H), 0, 3, False, (0, 1), id="a notice and a loss: both replaced"),
    pytest.param(gang(H, N, N, N), 0, 3, False, "only 1 of 4", id="notices on three of four"),
    pytest.param(gang(H, N), 3, 3, False, "had 3 node replacements", id="notice, rounds used"),
    pytest.param(gang(H, N), 0, 3, True, "refused a launch", id="notice, zone refused"),
    pytest.param(
        gang(H, N, phases={0: "exited"}), 0, 3, False, "node 0's run has ended", id="notice, ended"
    ),
    pytest.param(gang(H, H, P, H), 3, 3, False, "had 3 node replacements", id="rounds used up"),
    pytest.param(gang(H, H, P, H), 0, 3, True, "refused a launch", id="zone refused lately"),
    pytest.param(gang(H, L, L, L), 0, 3, False, "only 1 of 4", id="one survivor of four"),
    pytest.param(gang(S, P), 0, 3, False, (1,), id="a suspect survivor is kept"),
    pytest.param(
        gang(H, P, phases={0: "exited"}), 0, 3, False, "node 0's run has ended", id="run ended"
    ),
    pytest.param(
        gang(V.EXITED, P, phases={0: "setup_failed"}),
        0,
        3,
        False,
        "node 0's run has ended",
        id="setup failed",
    ),
]


@pytest.mark.parametrize(("nodes", "rounds", "max_rounds", "refused", "expected"), CASES)
def test_decide_node_loss(
    nodes: list[NodeReport],
    rounds: int,
    max_rounds: int,
    refused: bool,
    expected: tuple[int, ...] | str,
) -> None:
    action = decide_node_loss(
        nodes, rounds_so_far=rounds, max_rounds=max_rounds, zone_refused=refused
    )
    if isinstance(expected, tuple):
        assert isinstance(action, ReplaceNodes), action
        assert action.ranks == expected
        assert [n.node_rank for n in action.lost] == list(expected)
        kept = [n.node_rank for n in nodes if n.node_rank not in expected]
        assert action.reason.endswith(", ".join(map(str, kept)))
    else:
        assert isinstance(action, RelaunchAll), action
        assert expected in action.reason


@pytest.mark.parametrize(
    ("nodes", "noticed"),
    [
        pytest.param(gang(H, H, N, H), (2,), id="the noticed node drains"),
        pytest.param(gang(N, P, H, H), (0,), id="only the noticed one drains"),
        pytest.param(gang(H, P), (), id="no notice: nothing drains"),
    ],
)
def test_noticed_nodes_are_named(nodes: list[NodeReport], noticed: tuple[int, ...]) -> None:
    action = decide_node_loss(nodes, rounds_so_far=0, max_rounds=3, zone_refused=False)
    assert isinstance(action, ReplaceNodes), action
    assert action.noticed == noticed
