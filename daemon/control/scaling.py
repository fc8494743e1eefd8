"""The autoscaler's executor: reads the LB's request counts, runs ``serve.autoscale``, and
stores a changed target with its event.

The counts are read at most every ``stats_interval`` seconds (the window is cached in
between). When the LB cannot be read the target holds (never below ``min_replicas``): no
scaling decision is made on missing data. Requests the LB holds in its queue (no replica
ready) are counted as demand arriving now, so a service scaled to zero wakes at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import structlog

from spotd.control.lbkeeper import LB_ERRORS, LbKeeper
from spotd.control.serve_config import ServeSettings, autoscale_policy
from spotd.serve.autoscaler import AutoscaleState, RequestWindow, autoscale
from spotd.spec import ServiceSpec
from spotd.store import AsyncStore, ServiceRow

log = structlog.get_logger("spotd.control.scaling")


class Scaler:
    def __init__(
        self,
        *,
        serve: ServeSettings,
        store: AsyncStore,
        lbs: LbKeeper,
        on_ejection: Callable[[int], None],
    ) -> None:
        self._serve = serve
        self._store = store
        self._lbs = lbs
        self._on_ejection = on_ejection
        self._states: dict[int, AutoscaleState] = {}
        self._windows: dict[int, tuple[float, RequestWindow | None]] = {}

    def forget(self, service_id: int) -> None:
        self._states.pop(service_id, None)
        self._windows.pop(service_id, None)

    def size(self) -> int:
        return len(self._states) + len(self._windows)

    async def target(self, svc: ServiceRow, spec: ServiceSpec, now: float) -> int:
        """The autoscaler's target now; a changed target is stored with its event."""
        policy = autoscale_policy(spec)
        state = self._states.get(svc.id) or AutoscaleState(
            target=svc.target,
            upscale_since=svc.upscale_since,
            downscale_since=svc.downscale_since,
        )
        window = await self._window(svc, now)
        if window is None:
            target, new = max(state.target, policy.min_replicas), state
            new = dataclasses.replace(new, target=target)
        else:
            target, new = autoscale(window, policy, state, now)
        self._states[svc.id] = new
        if new.target != svc.target:
            qps = window.qps(now) if window is not None else 0.0
            await self._store.update_service_fields(
                svc.id,
                now=now,
                target=new.target,
                upscale_since=new.upscale_since,
                downscale_since=new.downscale_since,
                event=f"autoscaler: target {svc.target} → {new.target} at {qps:.2f} requests/s",
            )
        return target

    async def _window(self, svc: ServiceRow, now: float) -> RequestWindow | None:
        """The LB's request counts, read at most every ``stats_interval`` seconds."""
        cached = self._windows.get(svc.id)
        if cached is not None and now - cached[0] < self._serve.stats_interval:
            return cached[1]
        window: RequestWindow | None = None
        width = max(1, int(self._serve.qps_window))
        try:
            # whole seconds, oldest first, the filling one left out; each is stamped with its
            # end, and one more is asked for, so the last ``width`` whole seconds stay in
            # the window until the next read (``stats_interval`` later)
            stats = await self._lbs.stats(svc, width + 1)
            buckets = [(b.t + 1.0, b.requests) for b in stats.buckets]
            # requests held in the LB's queue (no replica ready: scaled to zero) have not been
            # answered, so no bucket counts them yet: they are demand arriving now, and at
            # zero replicas they must wake the service at once, not after the queue times out
            if stats.waiting > 0:
                buckets.append((now, stats.waiting))
            window = RequestWindow(tuple(buckets), window_seconds=float(width))
            if any(r.ejected for r in (await self._lbs.replicas(svc)).replicas):
                self._on_ejection(svc.id)
        except LB_ERRORS as exc:
            log.info("cannot read the load balancer's stats", service=svc.name, error=str(exc))
        self._windows[svc.id] = (now, window)
        return window
