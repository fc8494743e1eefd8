"""What the service worker does about a replica, from the provider's and the agent's evidence."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from spotd.control.replica_health import (
    End,
    Judgement,
    Notice,
    Running,
    Suspect,
    judge_replica,
    replica_evidence,
    replica_timeouts,
)
from spotd.providers.base import ObservedInstance
from spotd.recovery import detection
from spotd.serve.replica_state import ReplicaStatus as S
from spotd.store import ReplicaRow
from spotd.types import InstanceId, InstanceState, Market

NOW = 1000.0
TIMEOUTS = replica_timeouts(suspect_after=1.0, lost_after=30.0)


def replica(**kw: Any) -> ReplicaRow:
    base = ReplicaRow(
        key="s1-r2",
        service_id=1,
        replica_id=2,
        version=1,
        status=S.READY,
        provider="local",
        region="r",
        zone="z",
        instance_type="t",
        market=Market.SPOT,
        price_per_hour=0.1,
        port=20001,
        instance_id="i-2",
        url="http://127.0.0.1:20001",
        token="t",
        created_at=NOW - 100,
        started_at=NOW - 90,
        ready_at=NOW - 80,
        ended_at=None,
        message="",
        last_heartbeat_at=NOW - 0.2,
        phase="run",
        exit_code=None,
        notice_deadline=None,
        log_offset=0,
    )
    return dataclasses.replace(base, **kw)


def listed(state: InstanceState, **kw: Any) -> ObservedInstance:
    return ObservedInstance(
        id=InstanceId("i-2"), key="s1-r2", region="r", zone="z", state=state, **kw
    )


RUNNING = listed(InstanceState.RUNNING)


def judge(row: ReplicaRow, obs: ObservedInstance | None, covered: bool = True) -> Judgement:
    verdict = detection.classify(
        replica_evidence(row, obs, covered=covered), now=NOW, timeouts=TIMEOUTS
    )
    return judge_replica(row, obs, covered=covered, verdict=verdict)


@pytest.mark.parametrize(
    ("row", "obs", "covered", "want"),
    [
        (replica(), RUNNING, True, None),
        # gone: spot → PREEMPTED (zone remembered); on-demand → FAILED; shutting down → TERMINATED
        (
            replica(),
            None,
            True,
            End(S.PREEMPTED, "preempted: the provider no longer lists it", zone_preempted=True),
        ),
        (
            replica(market=Market.ON_DEMAND),
            None,
            True,
            End(S.FAILED, "instance ended: the provider no longer lists it"),
        ),
        (
            replica(status=S.SHUTTING_DOWN),
            listed(InstanceState.TERMINATED, reason="bye"),
            True,
            End(S.TERMINATED, "instance gone: bye"),
        ),
        (
            replica(market=Market.ON_DEMAND),
            listed(InstanceState.PREEMPTED, reason="spot"),
            True,
            End(S.PREEMPTED, "preempted: spot", zone_preempted=True),
        ),
        # not listed, but the listing began before the launch: not gone yet
        (replica(status=S.PROVISIONING, last_heartbeat_at=None), None, False, None),
        # a notice, from the agent or the listing
        (replica(notice_deadline=NOW + 30), RUNNING, True, Notice(NOW + 30)),
        (replica(), listed(InstanceState.NOTICE, notice_deadline=NOW + 8), True, Notice(NOW + 8)),
        # the program exited: FAILED, unless already leaving
        (
            replica(phase="exited", exit_code=-9),
            RUNNING,
            True,
            End(S.FAILED, "the replica's run exited with -9"),
        ),
        (
            replica(phase="setup_failed", exit_code=2),
            RUNNING,
            True,
            End(S.FAILED, "the replica's setup exited with 2"),
        ),
        (replica(status=S.DRAINING, phase="exited", exit_code=0), RUNNING, True, None),
        # silent: suspect, then lost
        (
            replica(last_heartbeat_at=NOW - 5),
            RUNNING,
            True,
            Suspect("no heartbeat for 5.0s (provider says RUNNING); not torn down"),
        ),
        (
            replica(last_heartbeat_at=NOW - 40),
            RUNNING,
            True,
            End(
                S.PREEMPTED,
                "lost: no heartbeat for 40s (provider says RUNNING)",
                zone_preempted=True,
            ),
        ),
        (
            replica(market=Market.ON_DEMAND, last_heartbeat_at=NOW - 40),
            RUNNING,
            True,
            End(S.FAILED, "lost: no heartbeat for 40s (provider says RUNNING)"),
        ),
        # its instance runs: start probing
        (
            replica(status=S.PROVISIONING, last_heartbeat_at=None, phase=None),
            RUNNING,
            True,
            Running(RUNNING),
        ),
    ],
    ids=[
        "healthy",
        "gone-spot",
        "gone-on-demand",
        "gone-shutting-down",
        "provider-preempted",
        "not-covered-yet",
        "agent-notice",
        "listed-notice",
        "exited",
        "setup-failed",
        "draining-exited",
        "suspect",
        "lost-spot",
        "lost-on-demand",
        "instance-running",
    ],
)
def test_judge_replica(
    row: ReplicaRow, obs: ObservedInstance | None, covered: bool, want: Judgement
) -> None:
    assert judge(row, obs, covered) == want
