"""The autoscaler's delays survive a daemon restart: a scale-up (or scale-down) waiting out its
delay goes on from when it started, not from the restart, and a delay that was called off is
not acted on later. The Scaler is the daemon's (real store); the LB is a fake at its seam."""

from __future__ import annotations

import json

from spotd.control.scaling import Scaler
from spotd.control.serve_config import ServeSettings
from spotd.lb.control import ReplicasReport, StatsBucket, StatsReport
from spotd.spec import Task
from spotd.store import AsyncStore, ServiceRow

SPEC = {
    "run": "x",
    "resources": {"cpus": "1+"},
    "service": {
        "readiness_probe": "/health",
        "replica_policy": {
            "min_replicas": 1,
            "max_replicas": 4,
            "target_qps_per_replica": 1,
            "upscale_delay_seconds": 300,
            "downscale_delay_seconds": 1200,
        },
    },
}
T0 = 1_700_000_000.0


class _Lbs:
    """The LB keeper's two reads; ``qps`` requests a second over the last seconds."""

    def __init__(self) -> None:
        self.qps = 0
        self.behind = 0.0  # how far the LB's host clock is behind the daemon's

    async def stats(self, svc: ServiceRow, window: int) -> StatsReport:
        now = self.now - self.behind
        buckets = tuple(StatsBucket(now - window + i, self.qps) for i in range(window))
        return StatsReport(lb_id="lb", now=now, buckets=buckets)

    async def replicas(self, svc: ServiceRow) -> ReplicasReport:
        return ReplicasReport(version=1, replicas=())

    now = T0


def _scaler(store: AsyncStore, lbs: _Lbs) -> Scaler:
    return Scaler(
        serve=ServeSettings(),
        store=store,
        lbs=lbs,  # type: ignore[arg-type]
        on_ejection=lambda _: None,
        source=None,  # type: ignore[arg-type]  # no replica-side target in this policy
    )


async def _service(store: AsyncStore) -> ServiceRow:
    spec = json.dumps(SPEC)
    return await store.create_service(
        name="s",
        spec_json=spec,
        spec_redacted_json=spec,
        lb_port=1,
        lb_control_port=2,
        lb_token="t",
        target=1,
        now=T0,
    )


async def _target(scaler: Scaler, store: AsyncStore, lbs: _Lbs, sid: int, now: float) -> int:
    lbs.now = now
    svc = await store.get_service(sid)
    assert svc is not None
    spec = Task.model_validate(SPEC).service
    assert spec is not None
    return await scaler.target(svc, spec, now)


async def test_a_pending_scale_up_survives_a_restart(store: AsyncStore) -> None:
    svc = await _service(store)
    lbs = _Lbs()
    first = _scaler(store, lbs)
    assert await _target(first, store, lbs, svc.id, T0) == 1
    lbs.qps = 3  # 3 replicas wanted from here: the 300-s delay starts
    assert await _target(first, store, lbs, svc.id, T0 + 100) == 1
    restarted = _scaler(store, lbs)  # the daemon restarts 150 s into the delay
    assert await _target(restarted, store, lbs, svc.id, T0 + 250) == 1
    # 300 s after the demand came, not 300 s after the restart
    assert await _target(restarted, store, lbs, svc.id, T0 + 410) == 3
    row = await store.get_service(svc.id)
    assert row is not None and row.target == 3
    # demand falls: the scale-down delay starts, and is called off when demand is back
    lbs.qps = 1
    assert await _target(restarted, store, lbs, svc.id, T0 + 500) == 3
    row = await store.get_service(svc.id)
    assert row is not None and row.downscale_since is not None
    lbs.qps = 3
    assert await _target(restarted, store, lbs, svc.id, T0 + 600) == 3
    row = await store.get_service(svc.id)
    assert row is not None and row.downscale_since is None
    # hours later, demand falls again: a restarted daemon waits the whole delay
    lbs.qps = 1
    again = _scaler(store, lbs)
    assert await _target(again, store, lbs, svc.id, T0 + 9_000) == 3
    assert await _target(again, store, lbs, svc.id, T0 + 9_100) == 3


async def test_the_demand_is_read_whatever_the_lbs_clock(store: AsyncStore) -> None:
    """The LB stamps its counts with its host's clock; the daemon's is the database's (with
    several daemons, ``spotd.clock``). 90 s apart, the demand must still be seen: read on one
    clock, the last 60 s of counts fell outside the window and a busy service scaled down."""
    svc = await _service(store)
    for behind in (90.0, -90.0):
        lbs = _Lbs()
        lbs.behind = behind
        lbs.qps = 3
        scaler = _scaler(store, lbs)
        assert await _target(scaler, store, lbs, svc.id, T0) == 1
        assert await _target(scaler, store, lbs, svc.id, T0 + 310) == 3, behind
        await store.update_service_fields(svc.id, now=T0, target=1, upscale_since=None)
