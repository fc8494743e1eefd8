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
