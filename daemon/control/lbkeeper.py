"""Each service's load balancer: started, adopted after a daemon restart, told the replica set,
read for its counts, and stopped.

A service's data plane is one ``python -m spotd.lb`` process in its own session, so it keeps
serving while the daemon restarts; the store keeps its pid and the pid's start time, and a
restarted daemon that finds that very process alive adopts it (and pushes the set again). The
wire format is ``spotd.lb.control``'s typed records, shared with the LB.

The replica set is pushed when it changes (never polled by the LB): the last set the LB
acknowledged is remembered per service, and an unchanged set is not sent again.

Endpoint security (the service section's ``tls`` and ``api_keys_env``): the LB is started
with the service's certificate and key (``--tls-cert``/``--tls-key``: its port is HTTPS only)
and its client API keys (in its environment, never on its command line). The keys are pushed
again (``PUT /-/api-keys``) whenever the service's newest version asks for other keys, so a
``serve update`` with new keys rotates them without restarting the LB: the old keys stop
working as soon as the update is accepted. The TLS files are read when the LB starts.

Leftover LBs: each LB this daemon starts is recorded in its home (``lbs/<service id>``: pid
and start time). At start, ``reap_leftovers`` ends every recorded LB that is no longer its
service's LB (the service went DOWN, or another daemon took it over while this one was away
and started its own): left running, it would route to a replica set nobody updates and hold
the port the service's next LB needs. It looks again every ``REAP_SECONDS`` (a service taken
over while this daemon ran). With several daemons a clean stop ends the LBs of the services it
owned (``hand_over``) before it hands them over, for the same reason, unless no other daemon is
there to take them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
import structlog
from pydantic import ValidationError

from spotd.aiokit import sleep
from spotd.config import Settings
from spotd.control.lb_history import LbHistory
from spotd.control.serve_config import ServeSettings
from spotd.lb.control import (
    DRAINING,
    NOT_READY,
    READY,
    ApiKeySet,
    ReplicaEntry,
    ReplicasReport,
    StatsReport,
    replica_set_json,
)
from spotd.ops.sdnotify import scrub_env
from spotd.serve.replica_state import ReplicaStatus
from spotd.spec import ServiceSpec, Task
from spotd.store import AsyncStore, ReplicaRow, ServiceRow, ServiceStatus

log = structlog.get_logger("spotd.control.lbkeeper")

S = ReplicaStatus
# what the LB is told about each status; the others are not in its set at all
LB_STATE = MappingProxyType({S.READY: READY, S.NOT_READY: NOT_READY, S.DRAINING: DRAINING})
REAP_SECONDS = 60.0  # how often this daemon looks for LBs it left that are no longer theirs
# what a failed read of the LB raises (it is away, or answered something else)
LB_ERRORS = (aiohttp.ClientError, TimeoutError, KeyError, ValueError, TypeError)


def start_ticks(pid: int) -> int | None:
    """The pid's start time in clock ticks (None if no such live process)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    if rest[0] in ("Z", "X"):
        return None
    return int(rest[19])


def alive(pid: int | None, ticks: int | None) -> bool:
    return pid is not None and ticks is not None and start_ticks(pid) == ticks


def replica_set(rows: Sequence[ReplicaRow]) -> list[ReplicaEntry]:
    """The set the LB should hold: replicas with a URL that are READY, NOT_READY or DRAINING;
    a DRAINING one under a preemption notice carries its deadline (the LB moves its LLM
    streams to other replicas before then)."""
    return [
        ReplicaEntry(
            id=str(r.replica_id),
            url=r.url,
            state=LB_STATE[r.status],
            deadline=r.notice_deadline if r.status == S.DRAINING else None,
        )
        for r in rows
        if r.status in LB_STATE and r.url
    ]


def api_keys_of(task: Task) -> ApiKeySet:
    """The client keys the task's service asks for: the comma-separated value of the secret
    (or env) ``api_keys_env`` names; no keys (``ApiKeySet()``) without one."""
    spec = task.service
    if spec is None or not spec.api_keys_env:
        return ApiKeySet()
    name = spec.api_keys_env
    raw = task.secrets.get(name)
    if raw is None:
        raw = task.envs.get(name)
    keys = tuple(dict.fromkeys(k.strip() for k in (raw or "").split(",") if k.strip()))
    return ApiKeySet(keys=keys, header=spec.api_key_header, forward=spec.forward_api_key)


class LbKeeper:
    def __init__(
        self,
        *,
        settings: Settings,
        serve: ServeSettings,
        store: AsyncStore,
        session: Callable[[], aiohttp.ClientSession],
        stop: asyncio.Event,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.serve = serve
        self.store = store
        self._session = session
        self._stop = stop
        self._clock = clock
        self._pushed: dict[int, list[ReplicaEntry]] = {}
        self._keys_pushed: dict[int, ApiKeySet] = {}
        self._tasks: dict[int, tuple[int, Task]] = {}  # service id -> (version, its task)
        self._children: dict[int, asyncio.subprocess.Process] = {}
        # the dashboard's charts: one sample per five reads of the stats (5 s by default)
        self.history = LbHistory(every=5 * serve.stats_interval)

    def task(self, svc: ServiceRow) -> Task | None:
        """The task of the service's newest version (parsed once per version)."""
        held = self._tasks.get(svc.id)
        if held is not None and held[0] == svc.version:
            return held[1]
        try:
            task = Task.model_validate_json(svc.spec_json)
        except ValidationError:
            return None
        self._tasks[svc.id] = (svc.version, task)
        return task

    def endpoint(self, svc: ServiceRow) -> str:
        """The service's URL. Read for listings and pages of any service, running or DOWN,
        here or on another daemon: the task is not parsed and kept for that (kept, it grew
        with every service ever shown), only its ``service.tls`` read."""
        host = "127.0.0.1" if self.serve.lb_host in ("0.0.0.0", "::", "") else self.serve.lb_host
        tls = _has_tls(svc.spec_json)
        return f"{'https' if tls else 'http'}://{host}:{svc.lb_port}"

    def log_path(self, svc: ServiceRow) -> Path:
        return self.settings.logs_dir / f"s{svc.id}" / "lb.log"

    def forget(self, service_id: int) -> None:
        """Push the whole set next time (the LB restarted, or the service went)."""
        self._pushed.pop(service_id, None)
        self._keys_pushed.pop(service_id, None)
        self._tasks.pop(service_id, None)

    def size(self) -> int:
        return len(self._pushed) + len(self._children) + len(self._tasks)

    async def get(self, svc: ServiceRow, path: str) -> Any:
        async with self._session().get(
            f"http://127.0.0.1:{svc.lb_control_port}{path}",
            headers={"Authorization": f"Bearer {svc.lb_token}"},
            timeout=aiohttp.ClientTimeout(total=2),
        ) as r:
            r.raise_for_status()
            return await r.json()

    async def replicas(self, svc: ServiceRow) -> ReplicasReport:
        """The LB's view of its replicas; raises one of ``LB_ERRORS`` when it cannot tell."""
        return ReplicasReport.from_json(await self.get(svc, "/-/replicas"))

    async def stats(self, svc: ServiceRow, window: int) -> StatsReport:
        """The last ``window`` whole seconds of request counts; raises one of ``LB_ERRORS``.
        Every few seconds a read also becomes a sample of ``history`` (with the LB's latency)."""
        report = StatsReport.from_json(await self.get(svc, f"/-/stats?window={window}"))
        await self.history.observe(
            svc.id, report, now=self._clock(), metrics_text=lambda: self._metrics_text(svc)
        )
        return report

    async def _metrics_text(self, svc: ServiceRow) -> str | None:
        """The LB's Prometheus text (its latency histogram); None when it cannot be read."""
        try:
            async with self._session().get(
                f"http://127.0.0.1:{svc.lb_control_port}/metrics",
                headers={"Authorization": f"Bearer {svc.lb_token}"},
                timeout=aiohttp.ClientTimeout(total=2),
            ) as r:
                r.raise_for_status()
                return await r.text()
        except LB_ERRORS:
            return None

    async def in_flight(self, svc: ServiceRow) -> Mapping[str, int] | None:
        """Requests in flight per replica id; None when the LB is away."""
        try:
            report = await self.replicas(svc)
        except LB_ERRORS:
            return None
        return {r.id: r.in_flight for r in report.replicas}

    async def ensure(self, svc: ServiceRow, spec: ServiceSpec) -> None:
        """Adopt the service's LB if it runs, else start it (on the same ports); either way
        make sure it holds the client API keys the newest version asks for."""
        task = self.task(svc)
        keys = api_keys_of(task) if task is not None else ApiKeySet()
        if alive(svc.lb_pid, svc.lb_start_ticks):
            await self.push_keys(svc, keys)
            return
        probe = spec.readiness_probe
        path = self.log_path(svc)
        path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "spotd.lb",
            "--host",
            self.serve.lb_host,
            "--port",
            str(svc.lb_port),
            "--control-port",
            str(svc.lb_control_port),
            "--policy",
            str(spec.load_balancing_policy),
            "--lb-id",
            f"{svc.name}-lb",
            "--probe-path",
            probe.path if probe.post_data is None else "/",
            "--shutdown-timeout",
            "10",
            # ejections are pushed to the daemon at once, through its unix API socket
            "--report-url",
            f"http://spotd/v1/services/{svc.name}/lb-events",
            "--report-unix",
            str(self.settings.socket_path),
        ]
        if spec.tls is not None:
            cmd += ["--tls-cert", spec.tls.certfile, "--tls-key", spec.tls.keyfile]
        cmd += ["--api-key-header", keys.header]
        if keys.forward:
            cmd.append("--forward-api-key")
        env = scrub_env(os.environ)
        env["SPOTD_LB_TOKEN"] = svc.lb_token
        env.pop("SPOTD_LB_API_KEYS", None)
        if keys.keys:  # in its environment (readable by its user only), not in its argv
            env["SPOTD_LB_API_KEYS"] = ",".join(keys.keys)
        out = open(path, "ab")  # noqa: SIM115, ASYNC230 - handed to the child; a local append
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                env=env,
            )
        finally:
            out.close()
        self._children[svc.id] = proc
        ticks = start_ticks(proc.pid)
        self._record(svc.id, proc.pid, ticks)
        await self.store.update_service_fields(
            svc.id,
            now=self._clock(),
            lb_pid=proc.pid,
            lb_start_ticks=ticks,
            event=f"load balancer started (pid {proc.pid}) on port {svc.lb_port}",
        )
        self.forget(svc.id)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not self._stop.is_set():
            if proc.returncode is not None:
                log.error(
                    "the load balancer exited at start", service=svc.name, code=proc.returncode
                )
                return
            try:
                await self.get(svc, "/-/health")
            except (aiohttp.ClientError, TimeoutError):
                await sleep(0.05, self._stop)
            else:
                self._keys_pushed[svc.id] = keys  # it started with them
                return

    async def push_keys(self, svc: ServiceRow, keys: ApiKeySet) -> None:
        """Send the LB its client API keys if they differ from the last ones it took."""
        if self._keys_pushed.get(svc.id) == keys:
            return
        try:
            async with self._session().put(
                f"http://127.0.0.1:{svc.lb_control_port}/-/api-keys",
                json=keys.to_json(),
                headers={"Authorization": f"Bearer {svc.lb_token}"},
                timeout=aiohttp.ClientTimeout(total=2),
            ) as r:
                r.raise_for_status()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("cannot push the API keys", service=svc.name, error=str(exc))
            self._keys_pushed.pop(svc.id, None)
            return
        self._keys_pushed[svc.id] = keys
        log.info("API keys pushed", service=svc.name, keys=len(keys.keys))

    async def push(self, svc: ServiceRow, rows: Sequence[ReplicaRow]) -> None:
        """Send the LB the replica set if it changed since the last push it acknowledged."""
        want = replica_set(rows)
        if self._pushed.get(svc.id) == want:
            return
        try:
            async with self._session().put(
                f"http://127.0.0.1:{svc.lb_control_port}/-/replicas",
                json=replica_set_json(want),
                headers={"Authorization": f"Bearer {svc.lb_token}"},
                timeout=aiohttp.ClientTimeout(total=2),
            ) as r:
                r.raise_for_status()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("cannot push the replica set", service=svc.name, error=str(exc))
            self.forget(svc.id)
            return
        self._pushed[svc.id] = want
        log.info(
            "replica set pushed",
            service=svc.name,
            replicas=", ".join(f"{x.id}={x.state}" for x in want) or "(none)",
        )

    async def stop(self, svc: ServiceRow) -> None:
        """SIGTERM the LB's process group (SIGKILL after 5 s); forget its set and history."""
        self.forget(svc.id)
        self.history.drop(svc.id)
        child = self._children.pop(svc.id, None)  # gone either way once this returns
        await _end(svc.lb_pid, svc.lb_start_ticks)
        self._unrecord(svc.id)
        if child is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(child.wait(), 2.0)  # reap it (or one that died itself)

    async def hand_over(self, owner: str | None) -> None:
        """A clean stop with several daemons: the others take this daemon's services over
        now, each on its own host, where this host's LBs would be updated and adopted by
        nobody. End them (before the lease is given up: no other daemon has adopted them)."""
        try:
            services = await self.store.list_services(live_only=True, owner=owner)
        except Exception as e:  # noqa: BLE001 - the store away: the next start reaps them
            log.warning("could not list the services to hand over", error=str(e))
            return
        running = [s for s in services if alive(s.lb_pid, s.lb_start_ticks)]
        if running:
            log.info("stopping the load balancers: other daemons take over", services=len(running))
        await asyncio.gather(*(self.stop(svc) for svc in services))  # together: seconds, not N×

    async def reap_leftovers(self) -> int:
        """End the LBs this daemon started that are no longer their service's (module
        docstring); the number ended."""
        ended = 0
        for path in sorted(self._records_dir.glob("*")):
            if not path.name.isdigit():
                continue  # a record being written (``<id>.tmp``)
            got = _read_record(path)
            if got is None:
                path.unlink(missing_ok=True)
                continue
            service_id, pid, ticks = got
            svc = await self.store.get_service(service_id)
            if service_id in self._children:
                continue  # started by this process, its row perhaps not written yet
            if not is_leftover(svc, pid, ticks):
                continue
            if alive(pid, ticks):
                log.warning(
                    "ending a load balancer left from before: no longer its service's",
                    service_id=service_id,
                    pid=pid,
                )
                await _end(pid, ticks)
                ended += 1
            path.unlink(missing_ok=True)
        return ended

    async def reap_loop(self) -> None:
        """``reap_leftovers`` every ``REAP_SECONDS`` until the daemon stops."""
        while not self._stop.is_set():
            await sleep(REAP_SECONDS, self._stop)
            if not self._stop.is_set():
                await self.reap_leftovers()

    @property
    def _records_dir(self) -> Path:
        return self.settings.home / "lbs"

    def _record(self, service_id: int, pid: int, ticks: int | None) -> None:
        if ticks is None:
            return  # it exited already: nothing to end later
        self._records_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self._records_dir / str(service_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{pid} {ticks}\n")
        tmp.replace(path)

    def _unrecord(self, service_id: int) -> None:
        (self._records_dir / str(service_id)).unlink(missing_ok=True)


def is_leftover(svc: ServiceRow | None, pid: int, ticks: int) -> bool:
    """Whether the LB recorded as (``pid``, ``ticks``) is no longer ``svc``'s: the service is
    gone or DOWN, or its row names another process (another daemon took it over and started
    its own). One that another daemon on this host adopted is still the row's: kept."""
    return (
        svc is None
        or svc.status is ServiceStatus.DOWN
        or (svc.lb_pid, svc.lb_start_ticks) != (pid, ticks)
    )


def _read_record(path: Path) -> tuple[int, int, int] | None:
    """(service id, pid, start ticks) of a record; None for a file that is not one."""
    try:
        pid, ticks = (int(x) for x in path.read_text().split())
        return int(path.name), pid, ticks
    except (OSError, ValueError):
        return None


async def _end(pid: int | None, ticks: int | None) -> None:
    """SIGTERM the process group of ``pid`` (if it is still that process), SIGKILL after 5 s."""
    if pid is None or not alive(pid, ticks):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and alive(pid, ticks):  # noqa: ASYNC110 - polls /proc
        await asyncio.sleep(0.05)
    if alive(pid, ticks):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _has_tls(spec_json: str) -> bool:
    """Whether a stored task's service section has ``tls`` (a task not valid JSON: no)."""
    try:
        service = json.loads(spec_json).get("service")
    except (ValueError, AttributeError):
        return False
    return isinstance(service, dict) and service.get("tls") is not None
