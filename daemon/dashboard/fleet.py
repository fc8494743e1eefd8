"""The Fleet page (what runs now, where, and whether its GPUs work) and the Cost page (what
was spent by project, job, service or region over time, against all-on-demand).

Fleet: every live job instance and service replica, grouped by provider, region and market,
with each node's latest GPU samples from its agent's heartbeat; a node whose every GPU is below
the daemon's ``idle_gpu_threshold`` is flagged idle (the same rule ``idle_gpu_minutes`` acts on
over time, ``spotd.telemetry.idle``).

Cost: the accounting of ``GET /v1/cost`` (``spotd.pricing.cost``) — the same usages, the same
report — once for the whole window (the table) and once per time step (the chart), so the
chart's steps add up to the table's total.
"""

from __future__ import annotations

import json
from collections import Counter
from types import MappingProxyType
from typing import Any

from spotd.control import usage
from spotd.dashboard.render import View, render_part
from spotd.dashboard.state import Dashboard, Viewer
from spotd.pricing import cost as costs
from spotd.telemetry import gpu

__all__ = ["COST_WINDOWS", "cost_page", "fleet_page"]

# the windows the Cost page offers: label -> (seconds, step seconds)
COST_WINDOWS = MappingProxyType(
    {
        "6h": (6 * 3600.0, 600.0),
        "24h": (86400.0, 3600.0),
        "7d": (7 * 86400.0, 6 * 3600.0),
        "30d": (30 * 86400.0, 86400.0),
    }
)
MAX_SERIES = 8  # the chart's groups; the rest are summed as "other"


async def fleet_page(d: Dashboard, viewer: Viewer) -> View:
    threshold = d.settings.idle_gpu_threshold
    nodes: list[dict[str, Any]] = []
    jobs = {j.id: j for j in await d.store.active_jobs()}
    for inst in await d.store.instances(live_only=True):
        job = jobs.get(inst.job_id)
        if job is None or not viewer.sees(job.project):
            continue
        attempt = await d.store.get_attempt(inst.attempt_id)
        samples = [] if inst.gpus_json is None else gpu.parse_samples(json.loads(inst.gpus_json))
        nodes.append(
            {
                "what": f"job {job.id} · {job.name}",
                "href": f"jobs/{job.id}",
                "node": inst.node_rank,
                "provider": inst.provider,
                "region": inst.region,
                "zone": inst.zone,
                "market": str(attempt.market) if attempt else "-",
                "instance_type": attempt.instance_type if attempt else "-",
                "instance_id": inst.instance_id or "-",
                "gpus": samples,
                "idle": bool(samples) and all(s.utilization_pct < threshold for s in samples),
                "heartbeat": inst.last_heartbeat_at,
            }
        )
    for svc in await d.store.list_services(live_only=True):
        if not viewer.sees(svc.project):
            continue
        for r in await d.store.replicas(service_id=svc.id, live_only=True):
            nodes.append(
                {
                    "what": f"service {svc.name} · replica {r.replica_id}",
                    "href": f"services/{svc.name}",
                    "node": 0,
                    "provider": r.provider,
                    "region": r.region,
                    "zone": r.zone,
                    "market": str(r.market),
                    "instance_type": r.instance_type,
                    "instance_id": r.instance_id or "-",
                    "gpus": [],
                    "idle": False,
                    "heartbeat": r.last_heartbeat_at,
                }
            )
    groups = Counter((n["provider"], n["region"], n["market"]) for n in nodes)
    context = {
        "nodes": sorted(nodes, key=lambda n: (n["provider"], n["region"], n["zone"], n["what"])),
        "groups": sorted(groups.items()),
        "idle": sum(1 for n in nodes if n["idle"]),
        "threshold": threshold,
        "now": d.clock(),
    }
    return View(
        title="Fleet",
        template="fleet.html",
        parts={"fleet": render_part(d.env, "fleet", **context)},
        context=context,
    )


async def _usages(d: Dashboard, viewer: Viewer) -> list[costs.Usage]:
    return await usage.usages(d.store, d.controller.catalog, project=viewer.who.project)


def spend_series(
    usages: list[costs.Usage], *, by: costs.CostBy, since: float, now: float, step: float
) -> dict[str, Any]:
    """Dollars per step and group (the top groups of the window, the rest as "other"), and
    the on-demand equivalent per step: uPlot's ``[xs, *ys]`` with the series' names."""
    top, _ = costs.cost_report(usages, by=by, since=since, now=now)
    names = [r.label for r in top[:MAX_SERIES]]
    keys = [r.key for r in top[:MAX_SERIES]]
    xs: list[float] = []
    ys: list[list[float]] = [[] for _ in names]
    other: list[float] = []
    ondemand: list[float] = []
    t = since
    while t < now:
        end = min(now, t + step)
        rows, total = costs.cost_report(usages, by=by, since=t, now=end)
        got = {r.key: r.dollars for r in rows}
        xs.append(t)
        for i, k in enumerate(keys):
            ys[i].append(round(got.pop(k, 0.0), 6))
        other.append(round(sum(got.values()), 6))
        ondemand.append(round(total.ondemand_equivalent_dollars, 6))
        t = end
    if any(other):
        names, ys = [*names, "other"], [*ys, other]
    return {"names": names, "data": [xs, *ys], "ondemand": ondemand}


async def cost_page(d: Dashboard, viewer: Viewer, *, by: str, window: str) -> View:
    group = costs.CostBy(by) if by in {str(b) for b in costs.CostBy} else costs.CostBy.PROJECT
    window = window if window in COST_WINDOWS else "24h"
    seconds, step = COST_WINDOWS[window]
    now = d.clock()
    since = now - seconds
    usages = await _usages(d, viewer)
    rows, total = costs.cost_report(usages, by=group, since=since, now=now)
    context = {
        "rows": rows,
        "total": total,
        "by": str(group),
        "window": window,
        "groups": [str(b) for b in costs.CostBy],
        "windows": list(COST_WINDOWS),
        "note": costs.simulated_note(total) or "",
    }
    return View(
        title="Cost",
        template="cost.html",
        parts={"cost": render_part(d.env, "cost", **context)},
        charts={"spend": spend_series(usages, by=group, since=since, now=now, step=step)},
        context=context,
    )
