"""The LB's control protocol: what the daemon sends and reads, as the typed records both use."""

from __future__ import annotations

from typing import Any

import pytest

from spotd.lb.control import (
    Ejection,
    LbEvent,
    ReplicaEntry,
    ReplicaReport,
    ReplicasReport,
    StatsBucket,
    StatsReport,
    parse_replica_set,
    replica_set_json,
)


@pytest.mark.parametrize(
    ("body", "want"),
    [
        ([{"id": 1, "url": "http://h:1"}], [ReplicaEntry("1", "http://h:1", "READY")]),
        (
            {"replicas": [{"id": "a", "url": "https://h", "state": "draining"}]},
            [ReplicaEntry("a", "https://h", "DRAINING")],
        ),
        (
            [{"id": "2", "url": "http://h:2", "state": "NOT_READY"}],
            [ReplicaEntry("2", "http://h:2", "NOT_READY")],
        ),
        # a preemption notice: the deadline travels with the DRAINING replica
        (
            [{"id": "3", "url": "http://h:3", "state": "DRAINING", "deadline": 1700000000.5}],
            [ReplicaEntry("3", "http://h:3", "DRAINING", deadline=1700000000.5)],
        ),
    ],
)
def test_replica_set_parses(body: Any, want: list[ReplicaEntry]) -> None:
    assert parse_replica_set(body) == want
    assert parse_replica_set(replica_set_json(want)) == want


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("x", "expected a list"),
        (["x"], "each replica must be an object"),
        ([{"id": "1"}], "needs a string id and url"),
        ([{"id": "1", "url": "http://h"}, {"id": 1, "url": "http://h"}], "duplicate replica id 1"),
        ([{"id": "1", "url": "ftp://h"}], r"url must be http\(s\)"),
        ([{"id": "1", "url": "http://h", "deadline": "soon"}], "deadline must be a unix time"),
        ([{"id": "1", "url": "http://h", "deadline": True}], "deadline must be a unix time"),
        ([{"id": "1", "url": "http://h", "deadline": float("inf")}], "deadline must be"),
    ],
)
def test_malformed_replica_sets_are_refused(body: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_replica_set(body)


@pytest.mark.parametrize(
    "record",
    [
        ReplicasReport(
            version=3,
            replicas=(
                ReplicaReport(
                    "1", "http://h:1", "READY", in_flight=2, ejected=True, requests=9, failures=1
                ),
            ),
            ejections=(Ejection("1", "http://h:1", "reset", 5.0),),
            waiting=4,
        ),
        StatsReport(
            lb_id="svc-lb",
            now=10.0,
            buckets=(StatsBucket(8, 3, 1), StatsBucket(9, 5)),
            in_flight=1,
            waiting=2,
            replicas={"1": 1},
        ),
        LbEvent(lb_id="svc-lb", ejection=Ejection("2", "http://h:2", "refused", 7.5)),
    ],
    ids=["replicas", "stats", "lb-event"],
)
def test_records_round_trip_through_json(record: ReplicasReport | StatsReport | LbEvent) -> None:
    assert type(record).from_json(record.to_json()) == record


def test_stats_json_keeps_the_totals_the_daemon_and_tools_read() -> None:
    raw = StatsReport(
        lb_id="x", now=1.0, buckets=(StatsBucket(0, 3, 1), StatsBucket(1, 1))
    ).to_json()
    assert (raw["requests"], raw["errors_5xx"], raw["qps"], raw["window_seconds"]) == (4, 1, 2.0, 2)


def test_the_daemon_sends_a_noticed_replicas_deadline() -> None:
    """``lbkeeper.replica_set``: a DRAINING replica under a notice carries its deadline (its LLM
    streams move before it); one draining for another reason, or READY, carries none."""
    import dataclasses

    from spotd.control.lbkeeper import replica_set
    from spotd.serve.replica_state import ReplicaStatus as S
    from spotd.store import ReplicaRow
    from spotd.types import Market

    base = ReplicaRow(
        key="s1-r1", service_id=1, replica_id=1, version=1, status=S.READY, provider="local",
        region="r", zone="z", instance_type="t", market=Market.SPOT, price_per_hour=0.1,
        port=20001, instance_id="i-1", url="http://127.0.0.1:20001", token="t", created_at=0.0,
        started_at=None, ready_at=None, ended_at=None, message="", last_heartbeat_at=None,
        phase=None, exit_code=None, notice_deadline=None, log_offset=0,
    )  # fmt: skip
    rows = [
        dataclasses.replace(base, replica_id=1, status=S.DRAINING, notice_deadline=1234.5),
        dataclasses.replace(base, replica_id=2, status=S.DRAINING),
        dataclasses.replace(base, replica_id=3, status=S.READY, notice_deadline=99.0),
    ]
    assert [(e.id, e.state, e.deadline) for e in replica_set(rows)] == [
        ("1", "DRAINING", 1234.5),
        ("2", "DRAINING", None),
        ("3", "READY", None),
    ]
