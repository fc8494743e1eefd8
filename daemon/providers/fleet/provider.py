"""``FleetProvider``: the daemon's side of the fleet, a client of the fleet process's API.

The fleet process (``spotd.providers.fleet.server``) plays the cloud and every agent; this
provider calls it the way the AWS provider calls EC2: a launch keyed by ``spec.key``, one
listing call per region, terminate. The daemon's configuration (``providers.fleet``)::

    providers:
      fleet:
        url: unix:/path/fleet.sock     # a fleet already running; default: start one at
                                       # $SPOTD_HOME/fleet/fleet.sock if none answers there
        launch_seconds: 1.0            # PENDING this long
        preempt_rate_per_hour: 0.5     # per spot instance; or a trace:
        trace: /work/shared/traces/preemption/1-node/aws-04-22-2023
        trace_speedup: 60
        notice_seconds: 0              # announce a reclaim this long before (0: none)
        concurrency: 32                # agents' reports in flight at once

The fleet process is started detached (its own session), so it outlives a daemon restart like
a cloud's instances do: the restarted daemon finds it answering and adopts what it lists.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from spotd.providers.base import (
    CapacityUnavailable,
    InstanceSpec,
    InvalidRequest,
    ObservedInstance,
    ProviderUnavailable,
)
from spotd.providers.fleet.catalog import PROVIDER_NAME, fleet_catalog
from spotd.providers.fleet.model import ModelConfig
from spotd.types import CatalogEntry, InstanceId, InstanceState

__all__ = ["FleetProvider"]

START_TIMEOUT = 15.0
_CONFIG_KEYS = frozenset(
    {
        "url",
        "launch_seconds",
        "launch_jitter",
        "preempt_rate_per_hour",
        "notice_seconds",
        "forget_seconds",
        "seed",
        "trace",
        "trace_speedup",
        "concurrency",
    }
)


class FleetProvider:
    """Instances of the fleet process. Capabilities: ``AdvanceNotices`` (its listing says
    NOTICE, with the deadline, before a reclaim)."""

    name = PROVIDER_NAME
    notice_source = "the fleet's own notices (notice_seconds before a rate's or trace's reclaim)"

    def __init__(
        self,
        *,
        url: str,
        config: Mapping[str, Any] | None = None,
        spawn_in: Path | None = None,
        python: str = sys.executable,
    ) -> None:
        self.url = url
        self._config = dict(config or {})
        self._spawn_in = spawn_in
        self._python = python
        self._catalog = fleet_catalog()
        self._regions = sorted({e.region for e in self._catalog})
        self._session: aiohttp.ClientSession | None = None
        self._base = ""
        self._started: asyncio.Lock | None = None
        self._ready = False
        self._proc: subprocess.Popen[bytes] | None = None  # the fleet this provider started
        # per region: the fleet's epoch and revision of the last listing, and what it listed
        self._seen: dict[str, tuple[str, int, dict[str, ObservedInstance]]] = {}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, default_root: Path) -> FleetProvider:
        """From the ``providers.fleet`` section; a bad key or value is a ``ValueError``."""
        unknown = set(cfg) - _CONFIG_KEYS
        if unknown:
            raise ValueError(f"providers.fleet: unknown keys {sorted(unknown)}")
        model = {k: v for k, v in cfg.items() if k not in ("url", "trace", "concurrency")}
        ModelConfig.from_mapping(model)  # refuse bad numbers now, not in the fleet process
        if cfg.get("trace") and not Path(str(cfg["trace"])).exists():
            raise ValueError(f"providers.fleet: trace {cfg['trace']} does not exist")
        if cfg.get("url"):
            return cls(url=str(cfg["url"]), config=cfg)
        return cls(url=f"unix:{default_root / 'fleet.sock'}", config=cfg, spawn_in=default_root)

    # -- talking to the fleet ------------------------------------------------------------------

    def _client(self) -> tuple[aiohttp.ClientSession, str]:
        if self._session is None:
            if self.url.startswith("unix:"):
                conn = aiohttp.UnixConnector(path=self.url[len("unix:") :])
                self._session, self._base = aiohttp.ClientSession(connector=conn), "http://fleet"
            else:
                self._session, self._base = aiohttp.ClientSession(), self.url.rstrip("/")
        return self._session, self._base

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        await self._ensure_running()
        session, base = self._client()
        try:
            async with session.request(
                method, base + path, json=body, timeout=aiohttp.ClientTimeout(total=30)
            ) as r:
                return r.status, await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise ProviderUnavailable(f"the fleet at {self.url} did not answer: {exc}") from exc

    async def _answers(self) -> bool:
        session, base = self._client()
        try:
            async with session.get(
                base + "/v1/health", timeout=aiohttp.ClientTimeout(total=2)
            ) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _ensure_running(self) -> None:
        """Start the fleet process once, if this provider owns one and none answers."""
        if self._ready or self._spawn_in is None:
            return
        if self._started is None:
            self._started = asyncio.Lock()
        async with self._started:
            if self._ready:
                return
            if not await self._answers():
                await self._spawn(self._spawn_in)
            self._ready = True

    async def _spawn(self, root: Path) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        sock = self.url[len("unix:") :]
        config = {k: v for k, v in self._config.items() if k != "url"}
        argv = [
            self._python,
            "-m",
            "spotd.providers.fleet",
            "--socket",
            sock,
            "--pid-file",
            str(root / "fleet.pid"),
            "--config",
            json.dumps(config),
        ]
        self._proc = await asyncio.to_thread(_start_detached, argv, root / "fleet.log")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if await self._answers():
                return
            await asyncio.sleep(0.05)
        raise ProviderUnavailable(f"the fleet process did not start; see {root / 'fleet.log'}")

    # -- the provider interface ----------------------------------------------------------------

    def catalog(self) -> Sequence[CatalogEntry]:
        return self._catalog

    async def launch(self, spec: InstanceSpec) -> InstanceId:
        body = {
            "key": spec.key,
            "region": spec.region,
            "zone": spec.zone,
            "instance_type": spec.instance_type,
            "market": str(spec.market),
            "tags": dict(spec.tags),
            "agent": dataclasses.asdict(spec.agent),
        }
        status, data = await self._call("POST", "/v1/launch", body)
        if status == 200:
            return InstanceId(str(data["id"]))
        message = str(data.get("error", data)) if isinstance(data, dict) else str(data)
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind == "capacity":
            raise CapacityUnavailable(message)
        if kind == "invalid":
            raise InvalidRequest(message)
        raise ProviderUnavailable(f"the fleet answered {status}: {message}")

    async def list_instances(self) -> Sequence[ObservedInstance]:
        """One call per region, all at once. Each asks only for what changed since the last
        answer (``?since=``) and reuses the rest, as a Kubernetes client lists from a
        resourceVersion: at 10,000 instances, decoding and rebuilding every one twice a
        second was most of an idle daemon's CPU."""
        listed = await asyncio.gather(*(self._list_region(r) for r in self._regions))
        return [o for region in listed for o in region]

    async def _list_region(self, region: str) -> list[ObservedInstance]:
        epoch, rev, held = self._seen.get(region, ("", 0, {}))
        query = f"?since={rev}&epoch={epoch}"
        status, data = await self._call("GET", f"/v1/regions/{region}/instances{query}")
        if status != 200 or not isinstance(data, dict):
            raise ProviderUnavailable(f"the fleet's listing answered {status}: {data}")
        if data["epoch"] != epoch:
            held = {}  # another fleet process: nothing from before stands
        fresh = {str(d["key"]): _observed(d) for d in data["changed"]}
        now = {k: fresh.get(k) or held.get(k) for k in data["keys"]}
        if any(o is None for o in now.values()):  # cannot be, unless the fleet lost track
            self._seen.pop(region, None)
            raise ProviderUnavailable(f"the fleet's listing of {region} was incomplete")
        kept = {k: o for k, o in now.items() if o is not None}
        self._seen[region] = (str(data["epoch"]), int(data["rev"]), kept)
        return list(kept.values())

    async def terminate(self, instance_id: InstanceId) -> None:
        status, data = await self._call("POST", "/v1/terminate", {"id": instance_id})
        if status != 200:
            raise ProviderUnavailable(f"the fleet's terminate answered {status}: {data}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _start_detached(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start the fleet process in a session of its own: it outlives the daemon, like a cloud."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )


def _observed(d: Mapping[str, Any]) -> ObservedInstance:
    return ObservedInstance(
        id=InstanceId(str(d["id"])),
        key=str(d["key"]),
        region=str(d["region"]),
        zone=str(d["zone"]),
        state=InstanceState(d["state"]),
        tags=dict(d.get("tags") or {}),
        reason=str(d.get("reason") or ""),
        notice_deadline=d.get("notice_deadline"),
    )
