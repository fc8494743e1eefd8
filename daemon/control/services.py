"""The services control plane: replica manager, prober, autoscaler executor and LB keeper.

One supervised worker per service handles that service's changes in order (different services
run in parallel), the way the job controller runs one worker per job. A step of the worker is

1. **observe** — the job controller's batched provider listing (one per provider, shared:
   no second listing), the replica agents' heartbeats (exit codes, notices), probe results
   (folded in by the prober as they arrive), and the load balancer's request counts;
2. **decide** — the pure functions of ``spotd.serve``: ``autoscale`` for the target,
   ``plan_replicas`` (SpotHedge spread + on-demand fallback) for launches and retirements,
   ``probe_step`` for readiness;
3. **act** — replica rows (the intent) are written before the provider is asked for an
   instance; every status change is a compare-and-set with its event; the replica set is
   pushed to the LB whenever it changes (never polled).

A service's data plane is one ``python -m spotd.lb`` process started in its own session, so it
and the replicas keep serving while the daemon restarts; a restarted daemon finds the LB by
its pid (and the pid's start time), adopts it and pushes the replica set again.

Leaving on purpose is make-before-break: a READY replica that must go (scale-down, a rolling
update, a preemption notice) becomes DRAINING — pushed to the LB, which stops picking it while
its in-flight requests finish — and its instance is terminated only once the LB counts no
request in flight on it. On a notice the replacement is planned in the same step, because a
DRAINING replica no longer counts as capacity.

Scenario (each piece is in ``tests/services/``): three READY spot replicas, replica 2 gets a
30 s notice at t=0 → t≈0.2 replica 2 DRAINING (LB stops picking it), replica 4 launched in
the cheapest good zone; t≈0.3 the agent SIGTERMs replica 2's server, which finishes its
streams; in-flight reaches 0 → replica 2 PREEMPTED, its instance terminated; t≈2 replica 4
READY and pushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import os
import random
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from spotd.aiokit import Supervisor, sleep
from spotd.config import Settings
from spotd.control.jobs import Controller
from spotd.metrics import DaemonMetrics
from spotd.providers.base import (
    TAG_HOME,
    TAG_KEY,
    TAG_REPLICA,
    InstanceSpec,
    ObservedInstance,
    Provider,
    ProviderError,
)
from spotd.recovery import placement
from spotd.ops.sdnotify import scrub_env
from spotd.serve import hedge
from spotd.serve.autoscaler import AutoscalePolicy, AutoscaleState, RequestWindow, autoscale
from spotd.serve.replica_state import (
    PROBED_STATUSES,
    ProbeState,
    ReplicaId,
    ReplicaStatus,
    probe_step,
)
from spotd.spec import ServiceSpec, Task
from spotd.store import AsyncStore, ReplicaRow, ServiceRow, ServiceStatus, StaleTransition
from spotd.types import AgentConfig, InstanceId, InstanceState, Market, ResourceRequest, ZoneKey

log = structlog.get_logger("spotd.control.services")

TAG_SERVICE = "spotd-service"
S = ReplicaStatus
LIVE_SERVICE = (ServiceStatus.STARTING, ServiceStatus.READY, ServiceStatus.NO_REPLICA)
# what the LB is told about each status; the others are not in its set at all
LB_STATE = {S.READY: "READY", S.NOT_READY: "NOT_READY", S.DRAINING: "DRAINING"}
AGENT_FINAL = ("exited", "setup_failed")
UPDATE_MODES = ("rolling", "blue_green")


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """Timings of the services control plane (``SPOTD_SERVE_*`` environment variables)."""

    tick: float = 0.5  # a worker's step period when nothing wakes it
    probe_interval: float = 2.0  # readiness probe period per replica
    failure_threshold: int = 3  # failed probes in a row: READY -> NOT_READY
    not_ready_timeout: float = 180.0  # NOT_READY this long: FAILED_PROBE (replaced)
    qps_window: float = 60.0  # the autoscaler's request-rate window
    stats_interval: float = 1.0  # how often the LB's counts are read
    drain_timeout: float = 120.0  # DRAINING longer than this: terminated anyway
    launch_backoff: float = 2.0  # after a failed launch, doubling up to 60 s
    lb_host: str = "127.0.0.1"  # where the LB listens (the endpoint's host)
    port_low: int = 20000  # local replicas and LBs get ports in [low, high): below the
    port_high: int = 32000  # ephemeral range, so an outgoing connection never takes one

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeSettings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"SPOTD_SERVE_{f.name.upper()}")
            if raw is None:
                continue
            kind: Any = type(f.default)
            values[f.name] = kind(raw)
        return cls(**values)


# -- small helpers -----------------------------------------------------------------------


def _start_ticks(pid: int) -> int | None:
    """The pid's start time in clock ticks (None if no such live process)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    if rest[0] in ("Z", "X"):
        return None
    return int(rest[19])


def _alive(pid: int | None, ticks: int | None) -> bool:
    return pid is not None and ticks is not None and _start_ticks(pid) == ticks


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _append_log(path: Path, offset: int, data: bytes) -> int:
    """Write ``data`` that starts at byte ``offset``; returns the new acknowledged size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = path.stat().st_size if path.exists() else 0
    if offset > size:
        return size
    skip = size - offset
    if skip < len(data):
        with open(path, "ab") as f:
            f.write(data[skip:])
        size += len(data) - skip
    return size


def service_id_of_key(key: str) -> int | None:
    """``s3-r7`` -> 3; None for keys that are not replica keys."""
    head = key.split("-", 1)[0]
    return int(head[1:]) if head.startswith("s") and head[1:].isdigit() else None


def autoscale_policy(spec: ServiceSpec) -> AutoscalePolicy:
    p = spec.policy()
    return AutoscalePolicy(
        min_replicas=p.min_replicas,
        max_replicas=p.upper,
        target_qps_per_replica=p.target_qps_per_replica,
        upscale_delay_seconds=p.upscale_delay_seconds,
        downscale_delay_seconds=p.downscale_delay_seconds,
        base_ondemand_fallback_replicas=p.base_ondemand_fallback_replicas,
        dynamic_ondemand_fallback=p.dynamic_ondemand_fallback,
        num_overprovision=p.num_overprovision,
    )


@dataclass(frozen=True, slots=True)
class Placement:
    instance_type: str
    price_per_hour: float


@dataclass(frozen=True, slots=True)
class ZonePlan:
    """Where a service's replicas fit: the planner's zone options and, per (zone, market),
    the cheapest instance type that satisfies the resources."""

    zones: tuple[hedge.ZoneOption, ...]
    places: Mapping[tuple[ZoneKey, Market], Placement]
    use_spot: bool


def zone_plan(request: ResourceRequest, catalog: Any) -> ZonePlan:
    """Both markets for every zone the request fits (on-demand is the fallback even for a
    ``use_spot`` service)."""
    use_spot = any(o.use_spot for o in request.options)
    ondemand = ResourceRequest(
        options=tuple(dataclasses.replace(o, use_spot=False) for o in request.options),
        ordered=request.ordered,
    )
    spot = placement.candidates(request, catalog) if use_spot else []
    places: dict[tuple[ZoneKey, Market], Placement] = {}
    for c in [*spot, *placement.candidates(ondemand, catalog)]:
        k = (c.zone_key, c.market)
        if k not in places or c.price_per_hour < places[k].price_per_hour:
            places[k] = Placement(c.instance_type, c.price_per_hour)
    zones = sorted({z for z, _ in places}, key=str)
    options = tuple(
        hedge.ZoneOption(
            zone=z,
            spot_price=places[(z, Market.SPOT)].price_per_hour
            if (z, Market.SPOT) in places else None,
            ondemand_price=places[(z, Market.ON_DEMAND)].price_per_hour
            if (z, Market.ON_DEMAND) in places else float("inf"),
        )
        for z in zones
    )
    return ZonePlan(zones=options, places=places, use_spot=use_spot)


# zone history is shared with the job controller's table; these are the kinds both read
_TO_STORE = {
    hedge.ZoneEventKind.PREEMPTED: "PREEMPTED",
    hedge.ZoneEventKind.LAUNCH_FAILED: "STOCKOUT",
    hedge.ZoneEventKind.READY: "LAUNCHED",
}
_FROM_STORE = {v: k for k, v in _TO_STORE.items()}


class ServiceController:
    """Runs every service of this daemon. Constructed by the composition root next to the
    job ``Controller``, whose providers and listings it shares."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: AsyncStore,
        controller: Controller,
        metrics: DaemonMetrics,
        serve: ServeSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.controller = controller
        self.metrics = metrics
        self.serve = serve or ServeSettings.from_env()
        self.clock = clock
        self.stop = asyncio.Event()
        self.sup = Supervisor(self.stop)
        self.wakeups: dict[int, asyncio.Event] = {}
        self.probe_wakeups: dict[int, asyncio.Event] = {}
        self._session: aiohttp.ClientSession | None = None
        self._probes: dict[str, ProbeState] = {}
        self._probing: set[str] = set()
        self._probe_tasks: set[asyncio.Task[None]] = set()
        self._pushed: dict[int, list[dict[str, str]]] = {}
        self._lb_children: dict[int, asyncio.subprocess.Process] = {}
        self._scalers: dict[int, AutoscaleState] = {}
        self._windows: dict[int, tuple[float, RequestWindow | None, dict[str, Any]]] = {}
        self._drain_started: dict[str, float] = {}
        # (sid, market) -> (until, backoff): a market's refusals hold back that market only
        self._launch_blocked: dict[tuple[int, Market], tuple[float, float]] = {}
        self._zone_history: list[hedge.ZoneEvent] = []
        self._tasks: dict[tuple[int, int], Task] = {}
        self._seen: dict[str, InstanceState] = {}
        self._obs_at: dict[str, float] = {}
        self._rng = random.Random()

    @property
    def providers(self) -> dict[str, Provider]:
        return self.controller.providers

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=5), trust_env=False
            )
        return self._session

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load zone history, then start a worker and a prober per live service. Called after
        the job controller's first listing, so replicas are adopted from a real observation."""
        now = self.clock()
        for row in await self.store.zone_events(since=now - hedge.DEFAULT_BAD_ZONE_SECONDS):
            kind = _FROM_STORE.get(row.kind)
            if kind is not None:
                self._zone_history.append(self._zone_event_from(row, kind))
        for svc in await self.store.list_services(live_only=True):
            self.spawn(svc.id)
        self.sup.spawn("serve:observe", self._observe_loop)

    async def shutdown(self) -> None:
        """Stop our tasks; the LBs and replicas keep serving (the next daemon adopts them)."""
        await self.sup.stop()
        for t in list(self._probe_tasks):
            t.cancel()
        if self._session is not None:
            await self._session.close()

    def spawn(self, service_id: int) -> None:
        self.wakeups.setdefault(service_id, asyncio.Event())
        self.probe_wakeups.setdefault(service_id, asyncio.Event())
        self.sup.spawn(
            f"service:{service_id}",
            lambda: self._worker(service_id),
            forever=False,
            on_exit=lambda: self.wakeups.pop(service_id, None),
        )
        self.sup.spawn(
            f"probe:{service_id}",
            lambda: self._prober(service_id),
            forever=False,
            on_exit=lambda: self.probe_wakeups.pop(service_id, None),
        )

    def wake(self, service_id: int) -> None:
        ev = self.wakeups.get(service_id)
        if ev is not None:
            ev.set()

    # -- entry points for the API ----------------------------------------------------------

    def task_of(self, svc: ServiceRow, version: int | None = None) -> Task:
        v = svc.version if version is None else version
        task = self._tasks.get((svc.id, v))
        if task is None and v == svc.version:
            task = Task.model_validate(json.loads(svc.spec_json))
            self._tasks[(svc.id, v)] = task
        if task is None:
            raise KeyError(f"version {v} of service {svc.id} is not loaded")
        return task

    async def _task_version(self, svc: ServiceRow, version: int) -> Task:
        try:
            return self.task_of(svc, version)
        except KeyError:
            raw = await self.store.service_version_spec(svc.id, version)
            task = Task.model_validate(json.loads(raw or svc.spec_json))
            self._tasks[(svc.id, version)] = task
            return task

    def plan_for(self, task: Task) -> ZonePlan:
        return zone_plan(task.resource_request(), self.controller.catalog)

    async def allocate_lb_ports(self) -> tuple[int, int]:
        used = await self._used_ports()
        a = self._free_port(used)
        return a, self._free_port(used | {a})

    def endpoint(self, svc: ServiceRow) -> str:
        host = "127.0.0.1" if self.serve.lb_host in ("0.0.0.0", "::", "") else self.serve.lb_host
        return f"http://{host}:{svc.lb_port}"

    def replica_log(self, svc: ServiceRow, replica_id: int) -> Path:
        return self.settings.logs_dir / f"s{svc.id}" / f"r{replica_id}.log"

    def lb_log(self, svc: ServiceRow) -> Path:
        return self.settings.logs_dir / f"s{svc.id}" / "lb.log"

    async def replica_heartbeat(
        self,
        *,
        key: str,
        token: str,
        phase: str | None,
        exit_code: int | None,
        notice_deadline: float | None,
        log_offset: int,
        log_data: bytes,
    ) -> int | None:
        """An agent of a replica reported; returns the acknowledged log size, None when the
        key or token is wrong. Keeps the replica's log, and wakes the worker on news."""
        row = await self.store.get_replica(key)
        if row is None or not token or not hmac.compare_digest(row.token.encode(), token.encode()):
            return None
        path = self.settings.logs_dir / f"s{row.service_id}" / f"r{row.replica_id}.log"
        offset = await asyncio.to_thread(_append_log, path, log_offset, log_data)
        await self.store.record_replica_heartbeat(
            key, now=self.clock(), phase=phase, exit_code=exit_code,
            notice_deadline=notice_deadline, log_offset=offset,
        )
        self.metrics.heartbeats.inc()
        if phase != row.phase or exit_code != row.exit_code or (
            notice_deadline is not None and row.notice_deadline is None
        ):
            self.wake(row.service_id)
        return offset

    def note_ejection(self, service_id: int) -> None:
        """The LB ejected a replica: probe now rather than at the next period."""
        ev = self.probe_wakeups.get(service_id)
        if ev is not None:
            ev.set()

    # -- observe: the job controller's listings --------------------------------------------

    def _observed(self, row: ReplicaRow) -> tuple[ObservedInstance | None, bool]:
        """(what the latest listing says, whether that listing covers the replica)."""
        obs_all = self.controller.observations.get(row.provider)
        if obs_all is None:
            return None, False
        obs = obs_all.instances.get(row.key)
        covered = row.instance_id is not None and obs_all.started_at > row.created_at + 0.5
        launched_at = self._obs_at.get(row.key)
        if launched_at is not None:
            covered = covered and obs_all.started_at > launched_at + 0.5
        return obs, covered

    async def _observe_loop(self) -> None:
        """Wake a service's worker when one of its instances changes in a new listing, and
        reap tagged replica instances that no live replica owns."""
        last: dict[str, float] = {}
        while not self.stop.is_set():
            for name, obs in list(self.controller.observations.items()):
                if last.get(name) == obs.started_at:
                    continue
                last[name] = obs.started_at
                await self._on_listing(name, obs.instances)
            await sleep(0.05, self.stop)

    async def _on_listing(self, provider: str, instances: Mapping[str, ObservedInstance]) -> None:
        mine = {
            k: o for k, o in instances.items()
            if TAG_REPLICA in o.tags and o.tags.get(TAG_HOME) == self.settings.home_tag
        }
        for key, o in mine.items():
            if self._seen.get(key) != o.state:
                self._seen[key] = o.state
                sid = service_id_of_key(key)
                if sid is not None:
                    self.wake(sid)
        for key in [k for k in self._seen if k not in mine]:
            del self._seen[key]
            sid = service_id_of_key(key)
            if sid is not None:
                self.wake(sid)
        for key, o in mine.items():
            row = await self.store.get_replica(key)
            alive = o.state in (InstanceState.RUNNING, InstanceState.NOTICE, InstanceState.PENDING)
            if (row is None or row.status.is_terminal) and alive:
                log.warning("reaping replica instance no live replica owns", key=key)
                await self._terminate(provider, o.id)

    # -- the per-service worker ------------------------------------------------------------

    async def _worker(self, sid: int) -> None:
        wake = self.wakeups.setdefault(sid, asyncio.Event())
        while not self.stop.is_set():
            wake.clear()
            svc = await self.store.get_service(sid)
            if svc is None or svc.status == ServiceStatus.DOWN:
                return
            try:
                delay = await self._step(svc)
            except StaleTransition as exc:
                # the API or the prober moved a row under us: look again at once
                log.info("stale transition; re-reading", service=sid, error=str(exc))
                delay = 0.05
            await sleep(delay, wake, self.stop)

    async def _step(self, svc: ServiceRow) -> float:
        now = self.clock()
        if svc.status in (ServiceStatus.SHUTTING_DOWN, ServiceStatus.FAILED):
            await self._down(svc, now)
            return 0.0
        await self._ensure_lb(svc)
        rows = await self.store.replicas(service_id=svc.id, live_only=True)
        for row in rows:
            await self._observe_replica(svc, row, now)
        rows = await self.store.replicas(service_id=svc.id, live_only=True)
        target = await self._autoscale(svc, now)
        await self._reconcile(svc, rows, target, now)
        await self._push(svc)
        await self._drain(svc, now)
        await self._service_status(svc, now)
        return self.serve.tick

    async def _observe_replica(self, svc: ServiceRow, row: ReplicaRow, now: float) -> None:
        """Fold the provider's and the agent's evidence into the replica's status."""
        if row.status == S.PROVISIONING and row.instance_id is None:
            await self._launch_instance(svc, row)  # an interrupted launch: finish it
            return
        obs, covered = self._observed(row)
        gone = obs is None and covered
        if gone or (obs is not None and obs.state in (InstanceState.PREEMPTED,
                                                      InstanceState.TERMINATED)):
            reason = obs.reason if obs is not None else "the provider no longer lists it"
            if row.status == S.SHUTTING_DOWN:
                await self._end(row, S.TERMINATED, f"instance gone: {reason}", now)
            elif (obs is not None and obs.state == InstanceState.PREEMPTED) or (
                gone and row.market == Market.SPOT
            ) or row.notice_deadline is not None:
                await self._end(row, S.PREEMPTED, f"preempted: {reason}", now,
                                zone_kind=hedge.ZoneEventKind.PREEMPTED)
            else:
                await self._end(row, S.FAILED, f"instance ended: {reason}", now)
            return
        listed = obs.notice_deadline if obs is not None and obs.state == InstanceState.NOTICE \
            else None
        notice = listed or row.notice_deadline  # the listing's, or the agent's own report
        if notice is not None:
            await self._on_notice(row, notice, now)
            return
        if row.phase in AGENT_FINAL and row.status not in (S.DRAINING, S.SHUTTING_DOWN):
            code = row.exit_code
            await self._end(row, S.FAILED, f"the replica's {'run' if row.phase == 'exited' else 'setup'} "
                            f"exited with {code}", now)
            return
        if row.status == S.PROVISIONING and obs is not None and obs.state == InstanceState.RUNNING:
            url = f"http://{obs.address}:{row.port}"
            await self.store.transition_replica(
                row.key, from_=[S.PROVISIONING], to=S.STARTING,
                reason=f"instance {obs.id} running; probing {url}", now=now, started_at=now,
                url=url,
            )
            self._probes[row.key] = ProbeState.starting(now)
            self.probe_wakeups.get(svc.id, asyncio.Event()).set()

    async def _on_notice(self, row: ReplicaRow, deadline: float, now: float) -> None:
        """A preemption notice: stop sending it requests, let in-flight ones finish, and let
        the planner replace it in this very step (a DRAINING replica is not capacity)."""
        if row.status in (S.DRAINING, S.SHUTTING_DOWN):
            return
        if row.notice_deadline is None:
            await self.store.update_replica_fields(row.key, notice_deadline=deadline)
        await self._zone_event(row, hedge.ZoneEventKind.PREEMPTED, now)
        left = max(0.0, deadline - now)
        if row.status in (S.READY, S.NOT_READY):
            await self.store.transition_replica(
                row.key, from_=[row.status], to=S.DRAINING,
                reason=f"preemption notice: reclaimed in {left:.0f}s; draining, replacement "
                f"starting", now=now,
            )
            self._drain_started[row.key] = now
        else:
            await self._end(row, S.PREEMPTED, f"preemption notice before it was ready "
                            f"(reclaimed in {left:.0f}s)", now)

    async def _end(
        self,
        row: ReplicaRow,
        to: ReplicaStatus,
        reason: str,
        now: float,
        *,
        zone_kind: hedge.ZoneEventKind | None = None,
    ) -> None:
        """Move a replica to a terminal status and terminate its instance (if any)."""
        await self.store.transition_replica(row.key, from_=[row.status], to=to, reason=reason,
                                            now=now)
        self._probes.pop(row.key, None)
        self._drain_started.pop(row.key, None)
        if zone_kind is not None:
            await self._zone_event(row, zone_kind, now)
        if row.instance_id is not None:
            await self._terminate(row.provider, InstanceId(row.instance_id))
        log.info("replica ended", replica=row.key, status=str(to), reason=reason)

    async def _terminate(self, provider: str, instance_id: InstanceId) -> None:
        p = self.providers.get(provider)
        if p is None:
            return
        try:
            await p.terminate(instance_id)
        except ProviderError as exc:
            log.warning("terminate failed; the reaper retries", instance=instance_id,
                        error=str(exc))

    # -- decide and act --------------------------------------------------------------------

    async def _autoscale(self, svc: ServiceRow, now: float) -> int:
        spec = self.task_of(svc).service
        assert spec is not None  # the API accepts only tasks with a service section
        policy = autoscale_policy(spec)
        state = self._scalers.get(svc.id) or AutoscaleState(
            target=svc.target, upscale_since=svc.upscale_since,
            downscale_since=svc.downscale_since,
        )
        window = await self._window(svc, now)
        if window is None:
            target, new = max(state.target, policy.min_replicas), state
            new = dataclasses.replace(new, target=target)
        else:
            target, new = autoscale(window, policy, state, now)
        self._scalers[svc.id] = new
        if new.target != svc.target:
            qps = window.qps(now) if window is not None else 0.0
            await self.store.update_service_fields(
                svc.id, now=now, target=new.target, upscale_since=new.upscale_since,
                downscale_since=new.downscale_since,
                event=f"autoscaler: target {svc.target} → {new.target} at {qps:.2f} requests/s",
            )
        return target

    async def _window(self, svc: ServiceRow, now: float) -> RequestWindow | None:
        """The LB's request counts, read at most every ``stats_interval`` seconds."""
        cached = self._windows.get(svc.id)
        if cached is not None and now - cached[0] < self.serve.stats_interval:
            return cached[1]
        window: RequestWindow | None = None
        width = max(1, int(self.serve.qps_window))
        replicas: dict[str, Any] = {}
        try:
            # whole seconds, oldest first, the filling one left out; each is stamped with its
            # end, and one more is asked for, so the last ``width`` whole seconds stay in
            # the window until the next read (``stats_interval`` later)
            stats = await self._lb_get(svc, f"/-/stats?window={width + 1}")
            buckets = [(float(b["t"]) + 1.0, int(b["requests"])) for b in stats["buckets"]]
            # requests held in the LB's queue (no replica ready: scaled to zero) have not been
            # answered, so no bucket counts them yet: they are demand arriving now, and at
            # zero replicas they must wake the service at once, not after the queue times out
            if int(stats.get("waiting", 0)) > 0:
                buckets.append((now, int(stats["waiting"])))
            window = RequestWindow(tuple(buckets), window_seconds=float(width))
            state = await self._lb_get(svc, "/-/replicas")
            replicas = {r["id"]: r for r in state.get("replicas", [])}
            if any(r.get("ejected") for r in replicas.values()):
                self.note_ejection(svc.id)
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError, TypeError) as exc:
            log.info("cannot read the load balancer's stats", service=svc.name, error=str(exc))
        self._windows[svc.id] = (now, window, replicas)
        return window

    async def _reconcile(
        self, svc: ServiceRow, rows: list[ReplicaRow], target: int, now: float
    ) -> None:
        task = self.task_of(svc)
        spec = task.service
        assert spec is not None
        policy = autoscale_policy(spec)
        newest = [r for r in rows if r.version == svc.version]
        views = [
            hedge.ReplicaView(
                id=ReplicaId(r.replica_id), zone=ZoneKey(r.provider, r.region, r.zone),
                market=r.market, status=r.status, launched_at=r.created_at,
            )
            for r in newest if r.status.is_alive
        ]
        zp = self.plan_for(task)
        plan = hedge.plan_replicas(
            target, zones=zp.zones, current=views, zone_history=self._zone_history,
            policy=policy, now=now, use_spot=zp.use_spot,
        )
        by_id = {r.replica_id: r for r in rows}
        for rid in plan.terminate:
            await self._retire(by_id[rid], f"planner: {plan.reason}", now)
        # a refused launch stops (and backs off) launches of its own market only: a spot
        # stockout says nothing of on-demand capacity, which is what the fallback needs then
        refused: set[Market] = set()
        for launch in plan.launch:
            blocked_until, _ = self._launch_blocked.get((svc.id, launch.market), (0.0, 0.0))
            place = zp.places.get((launch.zone, launch.market))
            if launch.market in refused or now < blocked_until or place is None:
                continue
            if not await self._launch_new(svc, launch, place, plan.reason, now):
                refused.add(launch.market)
        # older versions leave as the newest becomes READY (rolling), or all at once when
        # the newest is fully READY (blue_green)
        old = [r for r in rows if r.version < svc.version and r.status.is_alive]
        if old:
            ready_new = sum(1 for r in newest if r.status == S.READY)
            if svc.update_mode == "blue_green":
                keep = 0 if ready_new >= target else len(old)
            else:
                keep = max(0, target - ready_new)
            order = {S.PROVISIONING: 0, S.STARTING: 1, S.NOT_READY: 2, S.READY: 3}
            for r in sorted(old, key=lambda r: (order[r.status], r.replica_id))[: len(old) - keep]:
                await self._retire(r, f"replaced by version {svc.version} ({svc.update_mode})",
                                   now)

    async def _retire(self, row: ReplicaRow, reason: str, now: float) -> None:
        """Leave on purpose: READY ones drain first; the others have nothing in flight."""
        if row.status in (S.READY, S.NOT_READY):
            await self.store.transition_replica(row.key, from_=[row.status], to=S.DRAINING,
                                                reason=f"draining: {reason}", now=now)
            self._drain_started[row.key] = now
        elif row.status in (S.PROVISIONING, S.STARTING):
            await self.store.transition_replica(row.key, from_=[row.status], to=S.SHUTTING_DOWN,
                                                reason=reason, now=now)
            fresh = await self.store.get_replica(row.key)
            assert fresh is not None
            await self._end(fresh, S.TERMINATED, "shut down before it served", now)

    async def _launch_new(
        self, svc: ServiceRow, launch: hedge.LaunchSpec, place: Placement, why: str, now: float
    ) -> bool:
        """Write the replica's intent, then launch its instance. False if the launch failed."""
        provider = launch.zone.provider
        port = await self._replica_port(provider, self.task_of(svc))
        row = await self.store.create_replica(
            service_id=svc.id, version=svc.version, provider=provider,
            region=launch.zone.region, zone=launch.zone.zone,
            instance_type=place.instance_type, market=launch.market,
            price_per_hour=place.price_per_hour, port=port,
            token=secrets.token_urlsafe(24), now=now,
        )
        log.info("launching replica", replica=row.key, zone=str(launch.zone),
                 market=str(launch.market), why=why)
        return await self._launch_instance(svc, row)

    async def _launch_instance(self, svc: ServiceRow, row: ReplicaRow) -> bool:
        task = await self._task_version(svc, row.version)
        provider = self.providers.get(row.provider)
        now = self.clock()
        if provider is None:
            await self._end(row, S.FAILED_PROVISION, f"provider {row.provider} is not enabled",
                            now)
            return False
        env = dict(task.envs) | dict(task.secrets)
        env.update(
            SPOTD_REPLICA_PORT=str(row.port),
            SPOTD_REPLICA_ID=str(row.replica_id),
            SPOTD_SERVICE_NAME=svc.name,
            SPOTD_SERVICE_VERSION=str(row.version),
            SPOTD_NODE_IPS="127.0.0.1",
        )
        if row.provider == "local":
            # a local "machine" is this one: its python (and spotd) is the daemon's
            bindir = str(Path(sys.executable).parent)
            env.setdefault("PATH", f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        gpus = max((o.accelerator_count for o in task.resource_request().options), default=0)
        agent = AgentConfig(
            instance_key=row.key,
            attempt_id=row.key,
            job_id=0,
            task_id=f"spotd-{self.settings.home_tag}-s{svc.id}-r{row.replica_id}",
            attempt=1,
            node_rank=0,
            num_nodes=1,
            setup=task.setup,
            run=task.run,
            envs=env,
            secret_names=tuple(task.secrets),
            num_gpus_per_node=gpus,
            daemon_url=getattr(provider, "daemon_url", None)
            or f"unix:{self.settings.socket_path}",
            notice_url=getattr(provider, "notice_url", "") or "",
            token=row.token,
            checkpoint_store=str(self.settings.checkpoints_dir / f"s{svc.id}-r{row.replica_id}"),
            checkpoint_sync_seconds=self.settings.checkpoint_sync_seconds,
            heartbeat_seconds=self.settings.heartbeat_seconds,
            term_grace_seconds=self.settings.term_grace_seconds,
            workdir=str(Path(task.workdir).expanduser()) if task.workdir else None,
        )
        spec = InstanceSpec(
            key=row.key,
            region=row.region,
            zone=row.zone,
            instance_type=row.instance_type,
            market=row.market,
            tags={
                TAG_HOME: self.settings.home_tag,
                TAG_REPLICA: row.key,
                TAG_KEY: row.key,
                TAG_SERVICE: str(svc.id),
            },
            agent=agent,
        )
        self.metrics.provider_calls.labels(provider.name, "launch").inc()
        try:
            iid = await provider.launch(spec)
        except ProviderError as exc:
            self.metrics.provider_errors.labels(provider.name, "launch").inc()
            _, backoff = self._launch_blocked.get((svc.id, row.market), (0.0, 0.0))
            backoff = min(60.0, backoff * 2 if backoff else self.serve.launch_backoff)
            self._launch_blocked[(svc.id, row.market)] = (self.clock() + backoff, backoff)
            await self._end(row, S.FAILED_PROVISION, f"{type(exc).__name__}: {exc}",
                            self.clock(), zone_kind=hedge.ZoneEventKind.LAUNCH_FAILED)
            return False
        self._launch_blocked.pop((svc.id, row.market), None)
        self._obs_at[row.key] = self.clock()
        await self.store.update_replica_fields(row.key, instance_id=str(iid))
        return True

    # -- draining --------------------------------------------------------------------------

    async def _drain(self, svc: ServiceRow, now: float) -> None:
        """Finish DRAINING replicas whose in-flight requests are done (or out of time)."""
        rows = [r for r in await self.store.replicas(service_id=svc.id, live_only=True)
                if r.status == S.DRAINING]
        if not rows:
            return
        try:
            state = await self._lb_get(svc, "/-/replicas")
            in_flight = {r["id"]: int(r["in_flight"]) for r in state.get("replicas", [])}
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError, TypeError):
            in_flight = None  # the LB is away: wait for it, up to the drain timeout
        changed = False
        for row in rows:
            started = self._drain_started.setdefault(row.key, now)
            busy = None if in_flight is None else in_flight.get(str(row.replica_id), 0)
            deadline = row.notice_deadline
            overdue = now - started >= self.serve.drain_timeout or (
                deadline is not None and now >= deadline
            )
            if busy != 0 and not overdue:
                continue
            why = "drained: no request in flight" if busy == 0 else "drain timed out"
            if row.notice_deadline is not None:
                await self._end(row, S.PREEMPTED, f"{why}; terminated before its notice ran out",
                                now)
            else:
                fresh = await self.store.transition_replica(
                    row.key, from_=[S.DRAINING], to=S.SHUTTING_DOWN, reason=why, now=now)
                changed = True
                await self._push(svc)
                await self._end(fresh, S.TERMINATED, "shut down after draining", now)
            changed = True
        if changed:
            await self._push(svc)

    # -- the load balancer -----------------------------------------------------------------

    async def _lb_get(self, svc: ServiceRow, path: str) -> Any:
        async with self.session.get(
            f"http://127.0.0.1:{svc.lb_control_port}{path}",
            headers={"Authorization": f"Bearer {svc.lb_token}"},
            timeout=aiohttp.ClientTimeout(total=2),
        ) as r:
            r.raise_for_status()
            return await r.json()

    async def _ensure_lb(self, svc: ServiceRow) -> None:
        """Adopt the service's LB if it runs, else start it (on the same ports)."""
        if _alive(svc.lb_pid, svc.lb_start_ticks):
            return
        task = self.task_of(svc)
        spec = task.service
        assert spec is not None
        probe = spec.readiness_probe
        path = self.lb_log(svc)
        path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "spotd.lb",
            "--host", self.serve.lb_host,
            "--port", str(svc.lb_port),
            "--control-port", str(svc.lb_control_port),
            "--policy", str(spec.load_balancing_policy),
            "--lb-id", f"{svc.name}-lb",
            "--probe-path", probe.path if probe.post_data is None else "/",
            "--shutdown-timeout", "10",
            # ejections are pushed to the daemon at once, through its unix API socket
            "--report-url", f"http://spotd/v1/services/{svc.name}/lb-events",
            "--report-unix", str(self.settings.socket_path),
        ]
        env = scrub_env(os.environ)
        env["SPOTD_LB_TOKEN"] = svc.lb_token
        out = open(path, "ab")  # noqa: SIM115, ASYNC230 - handed to the child; a local append
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True, env=env,
            )
        finally:
            out.close()
        self._lb_children[svc.id] = proc
        ticks = _start_ticks(proc.pid)
        now = self.clock()
        await self.store.update_service_fields(
            svc.id, now=now, lb_pid=proc.pid, lb_start_ticks=ticks,
            event=f"load balancer started (pid {proc.pid}) on port {svc.lb_port}",
        )
        self._pushed.pop(svc.id, None)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not self.stop.is_set():
            if proc.returncode is not None:
                log.error("the load balancer exited at start", service=svc.name,
                          code=proc.returncode)
                return
            try:
                await self._lb_get(svc, "/-/health")
                return
            except (aiohttp.ClientError, TimeoutError):
                await sleep(0.05, self.stop)

    def _lb_set(self, rows: list[ReplicaRow]) -> list[dict[str, str]]:
        return [
            {"id": str(r.replica_id), "url": r.url, "state": LB_STATE[r.status]}
            for r in rows if r.status in LB_STATE and r.url
        ]

    async def _push(self, svc: ServiceRow) -> None:
        """Send the LB the replica set if it changed since the last push it acknowledged."""
        rows = await self.store.replicas(service_id=svc.id, live_only=True)
        want = self._lb_set(rows)
        if self._pushed.get(svc.id) == want:
            return
        try:
            async with self.session.put(
                f"http://127.0.0.1:{svc.lb_control_port}/-/replicas", json=want,
                headers={"Authorization": f"Bearer {svc.lb_token}"},
                timeout=aiohttp.ClientTimeout(total=2),
            ) as r:
                r.raise_for_status()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("cannot push the replica set", service=svc.name, error=str(exc))
            self._pushed.pop(svc.id, None)
            return
        self._pushed[svc.id] = want
        log.info("replica set pushed", service=svc.name,
                 replicas=", ".join(f"{x['id']}={x['state']}" for x in want) or "(none)")

    async def _stop_lb(self, svc: ServiceRow) -> None:
        pid, ticks = svc.lb_pid, svc.lb_start_ticks
        if not _alive(pid, ticks):
            return
        assert pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and _alive(pid, ticks):
            await asyncio.sleep(0.05)
        if _alive(pid, ticks):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        child = self._lb_children.pop(svc.id, None)
        if child is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(child.wait(), 2.0)

    # -- status and shutdown ---------------------------------------------------------------

    async def _service_status(self, svc: ServiceRow, now: float) -> None:
        rows = await self.store.replicas(service_id=svc.id)
        ready = sum(1 for r in rows if r.status == S.READY)
        if ready:
            want, why = ServiceStatus.READY, f"{ready} replica{'s' if ready > 1 else ''} READY"
        elif any(r.ready_at for r in rows) or svc.status == ServiceStatus.NO_REPLICA:
            want, why = ServiceStatus.NO_REPLICA, "no replica READY; the LB holds requests"
        else:
            want, why = ServiceStatus.STARTING, ""
        fresh = await self.store.get_service(svc.id)
        if fresh is None or fresh.status == want or fresh.status not in LIVE_SERVICE:
            return
        await self.store.transition_service(svc.id, from_=[fresh.status], to=want, reason=why,
                                            now=now)

    async def _down(self, svc: ServiceRow, now: float) -> None:
        """`serve down`: every replica terminated, the LB stopped, the service DOWN."""
        for row in await self.store.replicas(service_id=svc.id, live_only=True):
            if row.status != S.SHUTTING_DOWN:
                row = await self.store.transition_replica(
                    row.key, from_=[row.status], to=S.SHUTTING_DOWN, reason="serve down",
                    now=now)
            await self._end(row, S.TERMINATED, "serve down: instance terminated", now)
        await self._stop_lb(svc)
        await self.store.transition_service(
            svc.id, from_=[ServiceStatus.SHUTTING_DOWN, ServiceStatus.FAILED],
            to=ServiceStatus.DOWN, reason="every replica and the load balancer are gone",
            now=self.clock(),
        )
        self._pushed.pop(svc.id, None)
        self._scalers.pop(svc.id, None)
        self._windows.pop(svc.id, None)

    # -- probes ----------------------------------------------------------------------------

    async def _prober(self, sid: int) -> None:
        """Probe every probed replica of the service each ``probe_interval``; each probe runs
        as its own task, so a slow replica never delays the others or the worker."""
        wake = self.probe_wakeups.setdefault(sid, asyncio.Event())
        while not self.stop.is_set():
            wake.clear()
            svc = await self.store.get_service(sid)
            if svc is None or svc.status not in LIVE_SERVICE:
                return
            for row in await self.store.replicas(service_id=sid, live_only=True):
                if row.status not in PROBED_STATUSES or not row.url or row.key in self._probing:
                    continue
                spec = (await self._task_version(svc, row.version)).service
                assert spec is not None
                self._probing.add(row.key)
                t = asyncio.create_task(self._probe_one(svc, row, spec), name=f"probe:{row.key}")
                self._probe_tasks.add(t)
                t.add_done_callback(self._probe_tasks.discard)
            await sleep(self.serve.probe_interval, wake, self.stop)

    async def _probe_one(self, svc: ServiceRow, row: ReplicaRow, spec: ServiceSpec) -> None:
        probe = spec.readiness_probe
        ok = False
        detail = ""
        try:
            kw: dict[str, Any] = {
                "headers": probe.headers,
                "timeout": aiohttp.ClientTimeout(total=probe.timeout_seconds),
            }
            if probe.post_data is None:
                method = "GET"
            else:
                method = "POST"
                kw["json" if isinstance(probe.post_data, dict) else "data"] = probe.post_data
            async with self.session.request(method, row.url + probe.path, **kw) as r:
                await r.read()
                ok = r.status == 200
                detail = f"HTTP {r.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            detail = type(exc).__name__
        finally:
            self._probing.discard(row.key)
        try:
            await self._apply_probe(svc, row.key, ok, detail, spec)
        except StaleTransition:
            pass  # the worker moved the replica meanwhile: this answer is stale

    async def _apply_probe(
        self, svc: ServiceRow, key: str, ok: bool, detail: str, spec: ServiceSpec
    ) -> None:
        row = await self.store.get_replica(key)
        if row is None or row.status not in PROBED_STATUSES:
            return
        now = self.clock()
        state = self._probes.get(key)
        if state is None or state.status != row.status:
            state = ProbeState(status=row.status, started_at=row.started_at or now)
        new, moved = probe_step(
            state, ok, now=now, initial_delay=spec.readiness_probe.initial_delay_seconds,
            failure_threshold=self.serve.failure_threshold,
            not_ready_timeout=self.serve.not_ready_timeout,
        )
        self._probes[key] = new
        if moved is None:
            return
        if moved == S.FAILED_PROBE:
            await self._end(row, S.FAILED_PROBE, f"readiness probe failing ({detail})", now)
        else:
            fields: dict[str, Any] = {}
            if moved == S.READY and row.ready_at is None:
                fields["ready_at"] = now
            await self.store.transition_replica(
                key, from_=[row.status], to=moved, now=now,
                reason=f"readiness probe {'passed' if ok else 'failed'} ({detail})", **fields,
            )
            if moved == S.READY:
                await self._zone_event(row, hedge.ZoneEventKind.READY, now)
        self.wake(svc.id)

    # -- zone history and ports ------------------------------------------------------------

    @staticmethod
    def _zone_event_from(row: Any, kind: hedge.ZoneEventKind) -> hedge.ZoneEvent:
        market = Market.ON_DEMAND if str(row.detail).startswith("on-demand") else Market.SPOT
        return hedge.ZoneEvent(zone=ZoneKey(row.provider, row.region, row.zone), kind=kind,
                               at=row.at, market=market)

    async def _zone_event(self, row: ReplicaRow, kind: hedge.ZoneEventKind, now: float) -> None:
        ev = hedge.ZoneEvent(zone=ZoneKey(row.provider, row.region, row.zone), kind=kind, at=now,
                             market=row.market)
        self._zone_history.append(ev)
        horizon = now - hedge.DEFAULT_BAD_ZONE_SECONDS
        self._zone_history = [e for e in self._zone_history if e.at >= horizon]
        await self.store.add_zone_event(
            provider=row.provider, region=row.region, zone=row.zone, kind=_TO_STORE[kind],
            at=now, detail=f"{row.market} replica {row.key}",
        )

    async def _used_ports(self) -> set[int]:
        used: set[int] = set()
        for s in await self.store.list_services(live_only=True):
            used |= {s.lb_port, s.lb_control_port}
        used |= {r.port for r in await self.store.replicas(live_only=True)}
        return used

    def _free_port(self, used: set[int]) -> int:
        for _ in range(200):
            port = self._rng.randrange(self.serve.port_low, self.serve.port_high)
            if port not in used and _port_free(port):
                return port
        raise RuntimeError("no free port for a replica or load balancer")

    async def _replica_port(self, provider: str, task: Task) -> int:
        """Local replicas share one machine: each gets its own port. Elsewhere a replica has
        its machine to itself and serves on the task's port."""
        if provider != "local":
            return task.service_port() or 8080
        return self._free_port(await self._used_ports())
