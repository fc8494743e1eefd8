"""The Services pages: every service at a glance, and one service over the last hours —
replicas by zone and market, QPS / latency p50 and p99 / queue with the autoscaler's decisions
overlaid, spot against on-demand, ejections and drains — with its two actions:

- scale: set the autoscaler's target now, within the service's ``min_replicas`` and
  ``max_replicas`` (the autoscaler moves it again when the load says so, after its delays; a
  service with a fixed ``replicas: N`` cannot be scaled here, only updated);
- drain: a replica leaves on purpose (make before break, ``spotd.control.draining``): the LB
  stops picking it, its requests in flight finish, a replacement is planned in the same step.

The traffic charts read the LB keeper's bounded history (``spotd.control.lb_history``); the
replica chart is computed from the replica rows (each one's creation and end).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from spotd.control.serve_config import autoscale_policy
from spotd.dashboard.render import View, render_part
from spotd.dashboard.state import Dashboard, Viewer
from spotd.serve.replica_state import ReplicaStatus
from spotd.spec import Task
from spotd.store import EventRow, ReplicaRow, ServiceRow

__all__ = ["HOURS", "drain_replica", "replica_series", "scale_service", "service_page"]

HOURS = 6.0  # how far back the service page looks
DECISION = re.compile(r"autoscaler: target (\d+) → (\d+)")


def _task(svc: ServiceRow) -> Task:
    return Task.model_validate(json.loads(svc.spec_json))


def _bounds(svc: ServiceRow) -> tuple[int, int]:
    spec = _task(svc).service
    assert spec is not None  # a service's task always has its service section
    policy = autoscale_policy(spec)
    return policy.min_replicas, policy.max_replicas


def replica_series(rows: list[ReplicaRow], *, since: float, now: float) -> dict[str, Any]:
    """Live replicas per ``zone · market`` as step series on shared x (every creation and end
    inside the window, plus its two ends): uPlot's ``[xs, *ys]`` with the series' names.

    Example: r1 in a/spot from 0 to 50, r2 in b/on-demand from 20 on, window 0–100:
    xs 0, 20, 50, 100; ``a · spot`` 1, 1, 0, 0; ``b · on-demand`` 0, 1, 1, 1.
    """
    seen = [r for r in rows if r.created_at <= now and (r.ended_at or now) >= since]
    names = sorted({f"{r.zone} · {r.market}" for r in seen})
    xs = sorted(
        {since, now}
        | {r.created_at for r in seen if r.created_at > since}
        | {r.ended_at for r in seen if r.ended_at is not None and since < r.ended_at <= now}
    )
    ys: list[list[int]] = []
    for name in names:
        mine = [r for r in seen if f"{r.zone} · {r.market}" == name]
        ys.append(
            [
                sum(1 for r in mine if r.created_at <= x and (r.ended_at is None or r.ended_at > x))
                for x in xs
            ]
        )
    return {"names": names, "data": [xs, *ys]}


def decisions(events: list[EventRow]) -> list[dict[str, Any]]:
    """The autoscaler's target changes, from the service's events."""
    out = []
    for e in events:
        m = DECISION.search(e.message)
        if m:
            out.append({"at": e.at, "label": f"{m.group(1)}→{m.group(2)}"})
    return out


def _notable(e: EventRow) -> bool:
    text = e.message.lower()
    return any(w in text for w in ("eject", "drain", "preempt", "target", "version"))


async def services_page(d: Dashboard, viewer: Viewer) -> View:
    rows = []
    for svc in await d.store.list_services():
        if not viewer.sees(svc.project):
            continue
        live = await d.store.replicas(service_id=svc.id, live_only=True)
        markets = Counter(str(r.market) for r in live)
        recent = d.services.lbs.history.samples(svc.id) if d.services else []
        rows.append(
            {
                "svc": svc,
                "ready": sum(1 for r in live if r.status == ReplicaStatus.READY),
                "live": len(live),
                "spot": markets.get("spot", 0),
                "ondemand": markets.get("on-demand", 0),
                "qps": recent[-1].qps if recent else None,
            }
        )
    context = {"rows": rows}
    return View(
        title="Services",
        template="services.html",
        parts={"services": render_part(d.env, "services", **context)},
        context=context,
    )


async def service_page(d: Dashboard, viewer: Viewer, name: str) -> View | None:
    svc = await d.store.service_by_name(name)
    if svc is None or not viewer.sees(svc.project):
        return None
    now = d.clock()
    since = now - HOURS * 3600.0
    rows = await d.store.replicas(service_id=svc.id)
    events = await d.store.service_events(svc.id)
    live = [r for r in rows if not r.status.is_terminal]
    markets = Counter(str(r.market) for r in live)
    history = d.services.lbs.history.samples(svc.id, since=since) if d.services else []
    lo, hi = _bounds(svc)
    traffic = {
        "data": [
            [s.at for s in history],
            [s.qps for s in history],
            [s.errors_per_s for s in history],
        ],
        "decisions": [x for x in decisions(events) if x["at"] >= since],
    }
    latency = {
        "data": [
            [s.at for s in history],
            [None if s.p50 is None else s.p50 * 1000 for s in history],
            [None if s.p99 is None else s.p99 * 1000 for s in history],
        ]
    }
    queue = {
        "data": [
            [s.at for s in history],
            [s.waiting for s in history],
            [s.in_flight for s in history],
        ]
    }
    context: dict[str, Any] = {
        "svc": svc,
        "live": live,
        "spot": markets.get("spot", 0),
        "ondemand": markets.get("on-demand", 0),
        "ready": sum(1 for r in live if r.status == ReplicaStatus.READY),
        "min_replicas": lo,
        "max_replicas": hi,
        "endpoint": d.services.endpoint(svc) if d.services else "",
        "qps": history[-1].qps if history else None,
        "events": [e for e in events if _notable(e)][-100:],
        "csrf": viewer.csrf,
        "terminal": svc.status.is_terminal,
    }
    return View(
        title=f"Service {svc.name}",
        template="service.html",
        parts={
            name: render_part(d.env, name, **context)
            for name in ("service_summary", "replicas", "service_events")
        },
        charts={
            "traffic": traffic,
            "latency": latency,
            "queue": queue,
            "replicas": replica_series(rows, since=max(since, svc.created_at), now=now),
        },
        context=context,
    )


async def scale_service(d: Dashboard, viewer: Viewer, name: str, target: int) -> str:
    svc = await d.store.service_by_name(name)
    if svc is None or not viewer.sees(svc.project) or d.services is None:
        return f"no service {name}"
    if svc.status.is_terminal:
        return f"service {name} is {svc.status}"
    lo, hi = _bounds(svc)
    if lo == hi:
        return f"service {name} has a fixed {lo} replicas: change it with `spotctl serve update`"
    if not lo <= target <= hi:
        return f"the target must be between {lo} and {hi} (the service's replica policy)"
    await d.store.update_service_fields(
        svc.id,
        now=d.clock(),
        target=target,
        event=f"target {svc.target} → {target} set from the dashboard ({viewer.who.label})",
    )
    d.services.scaler.forget(svc.id)  # the autoscaler starts again from the stored target
    d.services.wake(svc.id)
    return f"service {name}: target {svc.target} → {target}"


async def drain_replica(d: Dashboard, viewer: Viewer, name: str, replica_id: int) -> str:
    svc = await d.store.service_by_name(name)
    if svc is None or not viewer.sees(svc.project) or d.services is None:
        return f"no service {name}"
    row = next(
        (
            r
            for r in await d.store.replicas(service_id=svc.id, live_only=True)
            if r.replica_id == replica_id
        ),
        None,
    )
    if row is None:
        return f"service {name} has no live replica {replica_id}"
    if row.status in (ReplicaStatus.DRAINING, ReplicaStatus.SHUTTING_DOWN):
        return f"replica {replica_id} is already {row.status}"
    await d.services.drainer.retire(
        row, f"drained from the dashboard ({viewer.who.label})", d.clock()
    )
    d.services.wake(svc.id)
    return f"draining replica {replica_id} of {name}"
