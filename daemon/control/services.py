"""The services control plane: the replica executor, one worker per service.

The parts it drives each have their module: ``lbkeeper`` (the LB process and its control
protocol), ``prober`` (readiness), ``scaling`` (the autoscaler's executor), ``draining``
(make before break), ``replica_health`` (what the evidence says about a replica),
``launcher`` (a replica's intent row, its code shipped, the provider call),
``replica_launch`` (instance spec, ports, launch back-off), ``zone_history``.

One supervised worker per service handles that service's changes in order (different services
run in parallel), the way the job controller runs one worker per job. A step of the worker is

1. **observe** — the fleet observer's batched provider listing (``observer``: one per
   provider, shared with the job controller), the replica agents' heartbeats (exit codes,
   notices), probe results (folded in by the prober as they arrive), and the load
   balancer's request counts;
2. **decide** — the pure functions: ``recovery.detection`` for each replica's health,
   ``serve.autoscale`` for the target, ``serve.plan_replicas`` (SpotHedge spread + on-demand
   fallback) for launches and retirements, ``serve.updates.retire_old`` for the order old
   versions leave in, ``probe_step`` for readiness;
3. **act** — replica rows (the intent) are written before the provider is asked for an
   instance; every status change is a compare-and-set with its event; the replica set is
   pushed to the LB whenever it changes (never polled).

A service's data plane is one ``python -m spotd.lb`` process in its own session: it and the
replicas keep serving while the daemon restarts, which adopts it (``lbkeeper``).

Leaving on purpose is make-before-break: a READY replica that must go (scale-down, a rolling
update) becomes DRAINING — pushed to the LB, which stops picking it while its in-flight
requests finish — and its instance is terminated only once the LB counts no request in flight
on it. A replica under a preemption notice no longer counts as capacity, so its replacement is
planned in the step that reads the notice, but it keeps serving until the others READY make
the target or until ``hedge.NOTICE_HANDOFF_SECONDS`` before its deadline, and only then
becomes DRAINING (``control/draining.py``).

Scenario (each piece is in ``tests/services/``): three READY spot replicas, replica 2 gets a
60 s notice at t=0 → t≈0.2 its zone's preemption recorded, replica 4 launched in the cheapest
good zone, replica 2 still READY and picked by the LB; replica 4 READY → replica 2 DRAINING
(or at t=45 if replica 4 is not READY by then); the LB moves its streams 10 s before the
deadline at the latest; in-flight reaches 0 → replica 2 PREEMPTED, its instance terminated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp
import structlog

from spotd.aiokit import Supervisor, sleep
from spotd.clock import wall
from spotd.config import Settings
from spotd.control.draining import Drainer
from spotd.control.launcher import ReplicaLauncher
from spotd.control.lbkeeper import LbKeeper
from spotd.control.logs import append_log
from spotd.control.memory import ServiceMemory
from spotd.control.observer import FleetObserver, Observation, changed_keys
from spotd.control.ports import PortAllocator
from spotd.control.prober import Prober
from spotd.control.replica_health import (
    End,
    Notice,
    Running,
    Suspect,
    judge_replica,
    replica_evidence,
    replica_timeouts,
)
from spotd.control.replica_launch import LaunchBackoff
from spotd.control.replica_metrics import HttpMetricsSource
from spotd.control.scaling import Scaler
from spotd.control.serve_config import (
    LIVE_SERVICE,
    UPDATE_MODES,
    ServeSettings,
    autoscale_policy,
)
from spotd.control.workers import Workers
from spotd.control.zone_history import ReplicaZoneHistory
from spotd.metrics import DaemonMetrics
from spotd.pricing.catalog import real_capacity
from spotd.providers.allowlist import barred_providers, without_barred
from spotd.providers.base import (
    TAG_REPLICA,
    ObservedInstance,
    Provider,
    ProviderError,
)
from spotd.recovery import detection, placement
from spotd.serve import hedge, updates, zones
from spotd.serve.replica_state import ReplicaId, ReplicaStatus
from spotd.spec import Task
from spotd.store import (
    AsyncStore,
    ReplicaRow,
    ServiceRow,
    ServiceStatus,
    StaleTransition,
)
from spotd.telemetry.gpu import GpuSample
from spotd.types import CatalogEntry, InstanceId, InstanceState, Market, ZoneEventKind, ZoneKey

__all__ = ["UPDATE_MODES", "ServeSettings", "ServiceController", "autoscale_policy"]

log = structlog.get_logger("spotd.control.services")

S = ReplicaStatus


def service_id_of_key(key: str) -> int | None:
    """``s3-r7`` -> 3; None for keys that are not replica keys."""
    head = key.split("-", 1)[0]
    return int(head[1:]) if head.startswith("s") and head[1:].isdigit() else None


class ServiceController:
    """Runs every service of this daemon. Constructed by the composition root next to the
    job ``Controller``, whose fleet observer (the providers and their listings) it shares."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: AsyncStore,
        observer: FleetObserver,
        metrics: DaemonMetrics,
        serve: ServeSettings | None = None,
        clock: Callable[[], float] = wall,
    ) -> None:
        self.settings = settings
        self.store = store
        self.observer = observer
        self.metrics = metrics
        self.serve = serve or ServeSettings.from_env()
        self.clock = clock
        self.stop = asyncio.Event()
        self.sup = Supervisor(self.stop)
        self.owner = settings.daemon_id if settings.ha else None  # as Controller.owner
        self.elsewhere: Callable[[str, int], None] | None = None
        self.workers = Workers(self.sup, "service")
        self.probers = Workers(self.sup, "probe")
        self._session: aiohttp.ClientSession | None = None
        self.lbs = LbKeeper(
            settings=settings,
            serve=self.serve,
            store=store,
            session=lambda: self.session,
            stop=self.stop,
            clock=clock,
        )
        self.drainer = Drainer(serve=self.serve, store=store, lbs=self.lbs, owner=self)
        self.prober = Prober(
            serve=self.serve,
            store=store,
            owner=self,
            session=lambda: self.session,
            stop=self.stop,
            clock=clock,
        )
        self.ports = PortAllocator(store, low=self.serve.port_low, high=self.serve.port_high)
        self.scaler = Scaler(
            serve=self.serve,
            store=store,
            lbs=self.lbs,
            on_ejection=self.note_ejection,
            source=HttpMetricsSource(lambda: self.session),  # replicas' /metrics
            metrics=metrics,
        )
        self.backoff = LaunchBackoff(self.serve.launch_backoff)
        self.zones = ReplicaZoneHistory(store)
        self.timeouts = replica_timeouts(
            suspect_after=settings.suspect_after, lost_after=settings.lost_after
        )
        self.memory = ServiceMemory()  # per live service and replica; see control.memory
        self.launcher = ReplicaLauncher(
            settings=settings,
            store=store,
            metrics=metrics,
            ports=self.ports,
            backoff=self.backoff,
            memory=self.memory,
            owner=self,
            clock=clock,
        )

    @property
    def providers(self) -> dict[str, Provider]:
        return self.observer.providers

    @property
    def catalog(self) -> list[CatalogEntry]:
        return [e for p in self.providers.values() for e in p.catalog()]

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
        await self.zones.load(self.clock())
        await self.lbs.reap_leftovers()  # before any LB of this daemon starts
        self.sup.spawn("lb-reap", self.lbs.reap_loop)
        for svc in await self.store.list_services(live_only=True, owner=self.owner):
            self.spawn(svc.id)

        async def owned() -> list[int]:
            return [s.id for s in await self.store.list_services(live_only=True, owner=self.owner)]

        self.sup.spawn("sweep", lambda: self.workers.sweep(owned, self.spawn, self.stop))
        # the listings so far (the job controller adopted them at its start), then every new one
        for name in self.providers:
            await self._on_listing(name, Observation(), self.observer.latest(name) or Observation())
        self.observer.listen(self._on_listing)

    async def shutdown(self, *, handing_over: bool = False) -> None:
        """Stop our tasks; the LBs and replicas keep serving (the next daemon adopts them),
        but for the LBs of a clean stop with several daemons (``LbKeeper.hand_over``)."""
        await self.sup.stop()
        if handing_over:
            await self.lbs.hand_over(self.owner)
        self.prober.cancel()
        if self._session is not None:
            await self._session.close()

    def spawn(self, service_id: int) -> None:
        self.workers.spawn(service_id, lambda wake: self._worker(service_id, wake))
        self.probers.spawn(service_id, lambda wake: self.prober.run(service_id, wake))

    def wake(self, service_id: int) -> None:
        """Look at the service now: here, or through the daemon that runs it."""
        if not self.workers.wake(service_id) and self.elsewhere is not None:
            self.elsewhere("s", service_id)

    def resume(self, svc: ServiceRow) -> None:
        """Make sure a worker runs ``svc`` (one that had ended: a no-op while it runs), if this
        daemon runs it; with several daemons, another's is woken instead."""
        if self.owner is None or svc.owner in (None, self.owner):
            self.spawn(svc.id)
        self.wake(svc.id)

    # -- entry points for the API ----------------------------------------------------------

    def task_of(self, svc: ServiceRow, version: int | None = None) -> Task:
        return self.memory.task(svc, version)

    async def task_version(self, svc: ServiceRow, version: int) -> Task:
        try:
            return self.memory.task(svc, version)
        except KeyError:
            raw = await self.store.service_version_spec(svc.id, version)
            task = Task.model_validate(json.loads(raw or svc.spec_json))
            return self.memory.keep(svc.id, version, task)

    def barred(self, project: str) -> dict[str, str]:
        """The providers ``project`` may not run on, and why (``spotd.providers.allowlist``)."""
        return barred_providers(project, self.settings.providers)

    def plan_for(self, task: Task, project: str) -> zones.ZonePlan:
        """Where ``project``'s replicas fit, in both markets (on-demand is the fallback)."""
        request = task.resource_request()
        use_spot = zones.wants_spot(request)
        catalog = without_barred(
            real_capacity(self.catalog, request=request, enabled_providers=self.providers.keys()),
            self.barred(project),
        )
        spot = placement.candidates(request, catalog) if use_spot else []
        ondemand = placement.candidates(zones.ondemand_request(request), catalog)
        return zones.zone_plan([*spot, *ondemand], use_spot=use_spot)

    async def allocate_lb_ports(self) -> tuple[int, int]:
        return await self.ports.two()

    def endpoint(self, svc: ServiceRow) -> str:
        return self.lbs.endpoint(svc)

    def replica_log(self, svc: ServiceRow, replica_id: int) -> Path:
        return self.settings.logs_dir / f"s{svc.id}" / f"r{replica_id}.log"

    def lb_log(self, svc: ServiceRow) -> Path:
        return self.lbs.log_path(svc)

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
        gpus: Sequence[GpuSample] | None = None,
    ) -> int | None:
        """An agent of a replica reported; returns the acknowledged log size, None when the
        key or token is wrong. Keeps the replica's log (and its GPU samples for the
        autoscaler), and wakes the worker on news."""
        row = await self.store.get_replica(key)
        if row is None or not token or not hmac.compare_digest(row.token.encode(), token.encode()):
            return None
        path = self.settings.logs_dir / f"s{row.service_id}" / f"r{row.replica_id}.log"
        offset = await asyncio.to_thread(append_log, path, log_offset, log_data)
        await self.store.record_replica_heartbeat(
            key,
            now=self.clock(),
            phase=phase,
            exit_code=exit_code,
            notice_deadline=notice_deadline,
            log_offset=offset,
        )
        self.metrics.heartbeats.inc()
        # kept only for a live replica of a service this daemon scales: the others' samples
        # were kept for ever (the scaler drops those of its own live services)
        if gpus is not None and not row.status.is_terminal and self.workers.runs(row.service_id):
            self.scaler.note_gpus(key, gpus, self.clock())
        if (
            phase != row.phase
            or exit_code != row.exit_code
            or (notice_deadline is not None and row.notice_deadline is None)
        ):
            self.wake(row.service_id)
        return offset

    def note_ejection(self, service_id: int) -> None:
        """The LB ejected a replica: probe now rather than at the next period."""
        self.probers.wake(service_id)

    # -- observe: the job controller's listings --------------------------------------------

    def _observed(self, row: ReplicaRow) -> tuple[ObservedInstance | None, bool]:
        """(what the latest listing says, whether that listing covers the replica)."""
        listing = self.observer.latest(row.provider)
        if listing is None:
            return None, False
        obs = listing.instances.get(row.key)
        covered = row.instance_id is not None and listing.covers(row.created_at)
        launched_at = self.memory.launched_at(row.key)
        if launched_at is not None:
            covered = covered and listing.covers(launched_at)
        return obs, covered

    async def _on_listing(self, provider: str, previous: Observation, current: Observation) -> None:
        """Wake a service's worker when one of its instances changed in the new listing, and
        reap tagged replica instances that no live replica owns."""
        for key in changed_keys(previous, current):
            sid = service_id_of_key(key)
            if sid is not None:
                self.wake(sid)
        mine = {k: o for k, o in current.instances.items() if TAG_REPLICA in o.tags}
        for key, o in mine.items():
            row = await self.store.get_replica(key)
            alive = o.state in (InstanceState.RUNNING, InstanceState.NOTICE, InstanceState.PENDING)
            if (row is None or row.status.is_terminal) and alive:
                log.warning("reaping replica instance no live replica owns", key=key)
                await self._terminate(provider, o.id)

    # -- the per-service worker ------------------------------------------------------------

    async def _worker(self, sid: int, wake: asyncio.Event) -> None:
        while not self.stop.is_set():
            wake.clear()
            svc = await self.store.get_service(sid)
            mine = self.owner is None or svc is None or svc.owner == self.owner
            if svc is None or svc.status == ServiceStatus.DOWN or not mine:
                self._forget(sid)  # down, or (several daemons) run by another one now
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
        spec = self.task_of(svc).service
        assert spec is not None  # the API accepts only tasks with a service section
        await self.lbs.ensure(svc, spec)
        # the zone history before anything is recorded: a notice a former owner recorded is
        # not recorded again by this daemon's first look at the replica
        await self.zones.ensure(svc.id, now)
        rows = await self.store.replicas(service_id=svc.id, live_only=True)
        for row in rows:
            await self._observe_replica(svc, row, now)
        rows = await self.store.replicas(service_id=svc.id, live_only=True)
        spec = self.task_of(svc).service
        assert spec is not None
        target = await self.scaler.target(svc, spec, now)
        await self._reconcile(svc, rows, target, now)
        self.memory.keep_versions(svc.id, {svc.version, *(r.version for r in rows)})
        await self.push(svc)
        await self.drainer.finish(svc, now)
        await self._service_status(svc, now)
        return self.serve.tick

    async def _observe_replica(self, svc: ServiceRow, row: ReplicaRow, now: float) -> None:
        """Fold the provider's and the agent's evidence into the replica's status."""
        if row.status == S.PROVISIONING and row.instance_id is None:
            await self.launcher.launch_instance(svc, row)  # an interrupted launch: finish it
            return
        obs, covered = self._observed(row)
        verdict = detection.classify(
            replica_evidence(row, obs, covered=covered), now=now, timeouts=self.timeouts
        )
        match judge_replica(row, obs, covered=covered, verdict=verdict):
            case End(status, reason, zone_preempted):
                kind = ZoneEventKind.PREEMPTED if zone_preempted else None
                await self.end(row, status, reason, now, zone_kind=kind)
            case Notice(deadline):
                await self.drainer.notice(row, deadline, now)
            case Suspect(evidence):
                self.metrics.suspects.inc()
                log.info(
                    "suspect replica: no heartbeat, provider says alive",
                    replica=row.key,
                    evidence=evidence,
                )
            case Running(instance):
                url = f"http://{instance.address}:{row.port}"
                await self.store.transition_replica(
                    row.key,
                    from_=[S.PROVISIONING],
                    to=S.STARTING,
                    reason=f"instance {instance.id} running; probing {url}",
                    now=now,
                    started_at=now,
                    url=url,
                )
                self.prober.starting(row.key, now)
                self.probers.wake(svc.id)

    async def end(
        self,
        row: ReplicaRow,
        to: ReplicaStatus,
        reason: str,
        now: float,
        *,
        zone_kind: ZoneEventKind | None = None,
    ) -> None:
        """Move a replica to a terminal status and terminate its instance (if any)."""
        await self.store.transition_replica(
            row.key, from_=[row.status], to=to, reason=reason, now=now
        )
        self.prober.forget(row.key)
        self.drainer.forget(row.key)
        self.memory.replica_gone(row.key)
        await self.zones.ended(row, zone_kind, now)
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
            log.warning(
                "terminate failed; the reaper retries", instance=instance_id, error=str(exc)
            )

    # -- decide and act --------------------------------------------------------------------

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
                id=ReplicaId(r.replica_id),
                zone=ZoneKey(r.provider, r.region, r.zone),
                market=r.market,
                status=r.status,
                launched_at=r.created_at,
                notice_deadline=r.notice_deadline,
            )
            for r in newest
            if r.status.is_alive
        ]
        # older versions leave as the newest becomes READY (rolling), or all at once when
        # the newest is fully READY (blue_green); those that stay serve meanwhile
        old = [r for r in rows if r.version < svc.version and r.status.is_alive]
        leaving = updates.retire_old(
            [updates.OldReplica(ReplicaId(r.replica_id), r.status) for r in old],
            mode=svc.update_mode,
            target=target,
            ready_new=sum(1 for r in newest if r.status == S.READY),
        )
        gone = set(leaving)
        staying = [r for r in old if r.replica_id not in gone]
        zp = self.plan_for(task, svc.project)
        risk = self.zones.risk(svc.id, now)  # orders zones of equal spot price
        options = [
            dataclasses.replace(z, preemption_risk=risk[z.zone]) if z.zone in risk else z
            for z in zp.zones
        ]
        plan = hedge.plan_replicas(
            target,
            zones=options,
            current=views,
            zone_history=self.zones.events(svc.id),
            policy=policy,
            now=now,
            use_spot=zp.use_spot,
            ready_elsewhere=sum(
                1 for r in staying if r.status == S.READY and r.notice_deadline is None
            ),
        )
        by_id = {r.replica_id: r for r in rows}
        for rid in plan.terminate:
            await self.drainer.retire(by_id[rid], f"planner: {plan.reason}", now)
        # a refused launch stops (and backs off) launches of its own market only: a spot
        # stockout says nothing of on-demand capacity, which is what the fallback needs then
        refused: set[Market] = set()
        for launch in plan.launch:
            blocked_until = self.backoff.blocked_until(svc.id, launch.market)
            place = zp.places.get((launch.zone, launch.market))
            if launch.market in refused or now < blocked_until or place is None:
                continue
            if not await self.launcher.launch_new(svc, launch, place, plan.reason, now):
                refused.add(launch.market)
        for rid in leaving:
            await self.drainer.retire(
                by_id[rid], f"replaced by version {svc.version} ({svc.update_mode})", now
            )

    # -- the load balancer -----------------------------------------------------------------

    async def push(self, svc: ServiceRow) -> None:
        await self.lbs.push(svc, await self.store.replicas(service_id=svc.id, live_only=True))

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
        await self.store.transition_service(
            svc.id, from_=[fresh.status], to=want, reason=why, now=now
        )

    async def _down(self, svc: ServiceRow, now: float) -> None:
        """`serve down`: every replica terminated, the LB stopped, the service DOWN."""
        for row in await self.store.replicas(service_id=svc.id, live_only=True):
            if row.status != S.SHUTTING_DOWN:
                row = await self.store.transition_replica(
                    row.key, from_=[row.status], to=S.SHUTTING_DOWN, reason="serve down", now=now
                )
            await self.end(row, S.TERMINATED, "serve down: instance terminated", now)
        await self.lbs.stop(svc)
        await self.store.transition_service(
            svc.id,
            from_=[ServiceStatus.SHUTTING_DOWN, ServiceStatus.FAILED],
            to=ServiceStatus.DOWN,
            reason="every replica and the load balancer are gone",
            now=self.clock(),
        )
        self._forget(svc.id)

    def _forget(self, sid: int) -> None:
        """The service is DOWN: drop what was kept in memory for it and its replicas."""
        self.memory.forget(sid)
        self.scaler.forget(sid)
        self.backoff.forget(sid)
        self.lbs.forget(sid)
        self.prober.forget_service(sid)
        self.drainer.forget_service(sid)
        self.zones.forget_service(sid)

    async def zone_event(self, row: ReplicaRow, kind: ZoneEventKind, now: float) -> None:
        await self.zones.record(row, kind, now)
