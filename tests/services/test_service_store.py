"""Service and replica rows: compare-and-set transitions with their events, and migration 2
on a database written before services existed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from spotd.serve.replica_state import ReplicaStatus as S
from spotd.store import ServiceExists, ServiceStatus, StaleTransition, Store


def _service(store: Store, name: str = "svc") -> int:
    return store.create_service(
        name=name,
        spec_json="{}",
        spec_redacted_json="{}",
        lb_port=20001,
        lb_control_port=20002,
        lb_token="t",
        target=2,
        now=1.0,
    ).id


def test_replica_transitions_are_compare_and_set_with_events(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    sid = _service(store)
    with pytest.raises(ServiceExists):
        _service(store)
    r1 = store.create_replica(
        service_id=sid,
        version=1,
        provider="local",
        region="r",
        zone="z",
        instance_type="cpu-1",
        market="spot",
        price_per_hour=0.01,
        port=20010,
        token="a",
        now=2.0,
    )
    r2 = store.create_replica(
        service_id=sid,
        version=1,
        provider="local",
        region="r",
        zone="z",
        instance_type="cpu-1",
        market="spot",
        price_per_hour=0.01,
        port=20011,
        token="b",
        now=2.0,
    )
    assert (r1.key, r2.key) == (f"s{sid}-r1", f"s{sid}-r2")
    store.transition_replica(
        r1.key,
        from_=[S.PROVISIONING],
        to=S.STARTING,
        reason="up",
        now=3.0,
        started_at=3.0,
        url="http://127.0.0.1:20010",
    )
    with pytest.raises(StaleTransition, match="it is STARTING"):
        store.transition_replica(
            r1.key, from_=[S.PROVISIONING], to=S.STARTING, reason="again", now=3.1
        )
    ended = store.transition_replica(
        r1.key, from_=[S.STARTING], to=S.PREEMPTED, reason="gone", now=4.0
    )
    assert ended.ended_at == 4.0
    assert [r.key for r in store.replicas(service_id=sid, live_only=True)] == [r2.key]
    svc = store.add_service_version(
        sid, spec_json='{"v": 2}', spec_redacted_json="{}", mode="blue_green", now=5.0
    )
    assert (svc.version, svc.update_mode) == (2, "blue_green")
    assert store.service_version_spec(sid, 1) == "{}"
    store.transition_service(
        sid, from_=[ServiceStatus.STARTING], to=ServiceStatus.DOWN, reason="down", now=6.0
    )
    _service(store)  # the name is free again once the old service is DOWN
    kinds = [e.kind for e in store.service_events(sid)]
    assert kinds == [
        "service.status",
        "replica.status",
        "replica.status",
        "replica.status",
        "replica.status",
        "service.version",
        "service.status",
    ]
    store.close()


def test_migration_2_adds_services_to_a_version_1_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import spotd.store.migrations as store_mod

    two = [m for m in store_mod.MIGRATIONS if m[0] <= 2]
    monkeypatch.setattr(store_mod, "MIGRATIONS", two)  # later migrations are not ours to test
    monkeypatch.setattr(store_mod, "LATEST_VERSION", 2)
    db = tmp_path / "old.db"
    Store.open(f"sqlite:///{db}").close()
    with sqlite3.connect(db) as conn:  # make it look like a database from before services
        for t in ("replica", "service_version", "service"):
            conn.execute(f"drop table {t}")
        conn.execute("drop index ix_event_service_id")
        conn.execute("alter table event drop column service_id")
        conn.execute("update schema_version set version = 1")
    store = Store.open(f"sqlite:///{db}")
    assert store.schema_version() == 2
    sid = _service(store)
    assert store.service_events(sid)[0].service_id == sid
    store.close()
