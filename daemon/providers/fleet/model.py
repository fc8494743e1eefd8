"""The fleet's cloud: instances as records, and the events that move them.

An instance is a record in the fleet process, never a process of its own. What happens to it
is a queue of timed events (a heap), so ten thousand instances cost one timer, not ten thousand:

- ``READY``: the launch latency is over; PENDING becomes RUNNING and its agent starts reporting;
- ``NOTICE``: the spot market announces a reclaim; listed as NOTICE with a deadline, and the
  agent reports the notice at once, then ``preempted`` (it checkpointed);
- ``RECLAIM``: the instance is gone (PREEMPTED); its agent goes silent;
- ``EXIT``: the job's ``run`` ended; the agent reports ``exited`` with its code;
- ``FORGET``: an ended instance drops out of the listing (EC2 keeps terminated ones for a while);
- ``BEAT``: the agent's keep-alive: an agent reports on change, and otherwise once per
  ``heartbeat_seconds`` of its config (the daemon's keep-alive period).

Preemptions come from a rate (``preempt_rate_per_hour`` per spot instance, exponential times,
seeded) or from a trace (``spotd.providers.fleet.trace``): a drop in a region's availability
reclaims that share of its spot instances, and while it reads 0 spot launches there stock out.

A job's behaviour is read from its ``run`` script, the only part of a task that says how long
it runs: ``sleep N`` (seconds; ``infinity``) and ``exit K``; anything else ends at once with 0.
A run whose script names ``spotd-progress`` (the file a real job writes its progress to with
each checkpoint, ``spotd.agent.checkpoints``) checkpoints: node 0's agent syncs every
``checkpoint_sync_seconds`` of its config while it runs, saving the fraction of its ``sleep``s
done to the job's checkpoint store (its config's ``checkpoint_store``, as a bucket is; an older
attempt never overwrites a newer one's), and reports the newest sync with each heartbeat; a
later attempt's nodes resume from what the store holds, running only the rest. Not modelled:
a gang restart (``spotd.providers.fleet.agents``) counts from the run's first start, and a
notice's final snapshot is the last periodic sync.
Everything here is plain data with ``now`` passed in: the fleet's server and its agent loop
(``spotd.providers.fleet.agents``) apply it.
"""

from __future__ import annotations

import enum
import heapq
import math
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from spotd.providers.base import TAG_JOB
from spotd.types import InstanceState, Market

__all__ = [
    "ALIVE",
    "Capacity",
    "Event",
    "FleetModel",
    "Inst",
    "ModelConfig",
    "Refused",
    "job_plan",
]

ALIVE = (InstanceState.PENDING, InstanceState.RUNNING, InstanceState.NOTICE)

_SLEEP = re.compile(r"\bsleep\s+(infinity|inf|\d+(?:\.\d+)?)\b")
_EXIT = re.compile(r"\bexit\s+(-?\d+)\b")
PROGRESS_FILE = "spotd-progress"


def job_plan(run: str | None) -> tuple[float, int]:
    """(seconds the run lasts, its exit code) from a ``run`` script: the sum of its ``sleep``s
    and its last ``exit`` (0 without one)."""
    text = run or ""
    seconds = 0.0
    for m in _SLEEP.finditer(text):
        seconds += math.inf if m.group(1).startswith("inf") else float(m.group(1))
    codes = _EXIT.findall(text)
    return seconds, int(codes[-1]) if codes else 0


class Event(enum.StrEnum):
    READY = "READY"  # launch latency over: RUNNING, the agent starts
    NOTICE = "NOTICE"  # advance warning of a reclaim
    RECLAIM = "RECLAIM"  # the spot market takes it back: PREEMPTED
    EXIT = "EXIT"  # the job's run ended
    FORGET = "FORGET"  # an ended instance leaves the listing
    BEAT = "BEAT"  # the agent's keep-alive is due (nothing changed since its last report)


class Refused(Exception):
    """A launch the fleet refuses; ``kind`` is the provider failure class it stands for."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "capacity" | "invalid"


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """How the fleet behaves (``providers.fleet`` in the daemon's config)."""

    launch_seconds: float = 1.0  # PENDING this long (± launch_jitter of it)
    launch_jitter: float = 0.2
    preempt_rate_per_hour: float = 0.0  # per running spot instance
    notice_seconds: float = 0.0  # a reclaim is announced this long before (0: no notice)
    forget_seconds: float = 120.0  # ended instances stay listed this long
    seed: int = 0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ModelConfig:
        base = cls()
        out: dict[str, Any] = {
            name: _number(raw, name, getattr(base, name))
            for name in (
                "launch_seconds",
                "launch_jitter",
                "preempt_rate_per_hour",
                "notice_seconds",
                "forget_seconds",
            )
        }
        out["seed"] = int(_number(raw, "seed", base.seed))
        return cls(**out)


def _number(raw: Mapping[str, Any], name: str, default: float) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"fleet: {name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"fleet: {name} must be a finite number, 0 or more, got {value!r}")
    return float(value)


@dataclass(slots=True)
class Inst:
    """One instance and what its simulated agent has to say."""

    id: str
    key: str
    region: str
    zone: str
    instance_type: str
    market: Market
    tags: dict[str, str]
    agent: dict[str, Any]  # the AgentConfig as JSON: daemon_url, token, run...
    created_at: float
    state: InstanceState = InstanceState.PENDING
    reason: str = ""
    notice_deadline: float | None = None
    gen: int = 0  # bumped when the instance ends: its queued events are then stale
    rev: int = 0  # the fleet's revision when what ``listing`` shows last changed
    # the agent's side
    phase: str = ""  # "" until READY
    exit_code: int | None = None
    planned_exit: int = 0  # what the run exits with when it ends
    acked: tuple[str, int | None, float | None] | None = None  # last state the daemon acked
    log_offset: int = 0
    log: bytes = b""
    partitioned_until: float = 0.0
    next_keepalive: float = 0.0
    # what a check reads (``FleetModel.history``): when the run started and first stopped
    ran_at: float | None = None
    stopped_at: float | None = None
    # a run that checkpoints: its whole length (0: it does not), the fraction of it the run
    # resumed from, and how often its agent syncs
    work_seconds: float = 0.0
    resumed: float = 0.0
    sync_every: float = 0.0

    @property
    def alive(self) -> bool:
        return self.state in ALIVE

    def listing(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "region": self.region,
            "zone": self.zone,
            "state": str(self.state),
            "tags": self.tags,
            "reason": self.reason,
            "notice_deadline": self.notice_deadline,
        }

    def report(self) -> tuple[str, int | None, float | None]:
        return (self.phase, self.exit_code, self.notice_deadline)


@dataclass(slots=True)
class Capacity:
    """Spot capacity of one region: a stockout until ``stocked_out_until`` (per market)."""

    stocked_out_until: dict[str, float] = field(default_factory=dict)


class FleetModel:
    """Every instance of the fleet and its event queue. Not thread-safe; one event loop."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        offers: Mapping[tuple[str, str], frozenset[str]],
    ) -> None:
        self.config = config
        self._offers = dict(offers)  # (region, zone) -> instance types
        self.regions = sorted({r for r, _ in self._offers})
        self._rng = random.Random(config.seed)
        self._by_key: dict[str, Inst] = {}
        self._by_id: dict[str, Inst] = {}
        self._queue: list[tuple[float, int, str, int, Event]] = []
        self._seq = 0
        self._capacity = {r: Capacity() for r in self.regions}
        self.list_calls: dict[str, int] = dict.fromkeys(self.regions, 0)
        self.preempted_at: dict[str, float] = {}  # key -> when it was reclaimed or noticed
        self.launches = 0
        self.launches_by_key: dict[str, int] = {}  # instances made per key (FORGET keeps it)
        self.rev = 0  # bumped by every change a listing shows (``changed_since``)
        self._saved: dict[str, tuple[int, float]] = {}  # job -> (attempt, progress) checkpointed

    # -- the provider's calls ----------------------------------------------------------------

    def launch(self, spec: Mapping[str, Any], *, now: float) -> Inst:
        key = str(spec["key"])
        known = self._by_key.get(key)
        if known is not None:
            return known  # idempotent by key, like an EC2 ClientToken
        region, zone, itype = str(spec["region"]), str(spec["zone"]), str(spec["instance_type"])
        if itype not in self._offers.get((region, zone), frozenset()):
            raise Refused("invalid", f"{itype} is not offered in {region}/{zone}")
        market = Market(spec["market"])
        until = self._capacity[region].stocked_out_until
        for k in (str(market), "*"):
            if until.get(k, 0.0) > now:
                raise Refused("capacity", f"no {market} capacity in {region} (stocked out)")
        self.launches += 1
        self.launches_by_key[key] = self.launches_by_key.get(key, 0) + 1
        inst = Inst(
            id=f"fleet-{key}",
            key=key,
            region=region,
            zone=zone,
            instance_type=itype,
            market=market,
            tags={str(k): str(v) for k, v in dict(spec.get("tags") or {}).items()},
            agent=dict(spec.get("agent") or {}),
            created_at=now,
        )
        self._by_key[key] = inst
        self._by_id[inst.id] = inst
        self._touch(inst)
        jitter = self.config.launch_jitter * self.config.launch_seconds
        delay = max(0.0, self.config.launch_seconds + self._rng.uniform(-jitter, jitter))
        self._push(now + delay, inst, Event.READY)
        return inst

    def list_region(self, region: str) -> list[Inst]:
        """One region's instances: what one batched listing call returns."""
        if region not in self.list_calls:
            raise KeyError(f"no fleet region {region}")
        self.list_calls[region] += 1
        return [i for i in self._by_key.values() if i.region == region]

    def changed_since(self, region: str, rev: int) -> tuple[list[str], list[Inst]]:
        """One region's listing as (every key, the instances changed after revision ``rev``):
        a caller that kept the rest from before rebuilds the whole listing from far less."""
        listed = self.list_region(region)
        return [i.key for i in listed], [i for i in listed if i.rev > rev]

    def terminate(self, instance_id: str, *, now: float) -> None:
        inst = self._by_id.get(instance_id)
        if inst is None or not inst.alive:
            return
        self._end(inst, InstanceState.TERMINATED, "terminated by its owner", now=now)

    # -- test and chaos controls ---------------------------------------------------------------

    def find(self, instance_id: str) -> Inst:
        inst = self._by_id.get(instance_id) or self._by_key.get(instance_id)
        if inst is None:
            raise KeyError(f"no fleet instance {instance_id}")
        return inst

    def preempt(self, instance_id: str, *, now: float, notice_seconds: float | None) -> None:
        """Reclaim it: after a notice of ``notice_seconds``, or at once (None or 0)."""
        inst = self.find(instance_id)
        if not inst.alive:
            return
        self.preempted_at.setdefault(inst.key, now)
        if notice_seconds:
            self._notice(inst, now=now, seconds=notice_seconds)
        else:
            self._end(inst, InstanceState.PREEMPTED, "preempted: spot capacity reclaimed", now=now)

    def kill(self, instance_id: str, *, now: float) -> None:
        inst = self.find(instance_id)
        if inst.alive:
            self.preempted_at.setdefault(inst.key, now)
            self._end(inst, InstanceState.PREEMPTED, "instance killed (no notice)", now=now)

    def partition(self, instance_id: str, *, now: float, seconds: float) -> None:
        self.find(instance_id).partitioned_until = now + seconds

    def stockout(self, region: str, *, now: float, seconds: float, market: str | None) -> None:
        if region not in self._capacity:
            raise KeyError(f"no fleet region {region}")
        self._capacity[region].stocked_out_until[market or "*"] = now + seconds

    def reclaim_share(self, region: str, share: float, *, now: float) -> int:
        """Reclaim ``share`` (0..1) of the region's running spot instances (a trace's drop)."""
        spot = [
            i
            for i in self._by_key.values()
            if i.region == region and i.market == Market.SPOT and i.state == InstanceState.RUNNING
        ]
        n = min(len(spot), math.ceil(share * len(spot)))
        for inst in self._rng.sample(spot, n):
            self.preempt(inst.id, now=now, notice_seconds=self.config.notice_seconds or None)
        return n

    # -- time passing -------------------------------------------------------------------------

    def next_due(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def advance(self, now: float) -> Iterator[Inst]:
        """Apply every event due by ``now``; yields the instances whose agent has news."""
        while self._queue and self._queue[0][0] <= now:
            at, _, key, gen, event = heapq.heappop(self._queue)
            inst = self._by_key.get(key)
            if inst is None:
                continue
            if event == Event.FORGET:
                if not inst.alive:
                    del self._by_key[key]
                    self._by_id.pop(inst.id, None)
                continue
            if gen != inst.gen or not inst.alive:
                continue
            yield from self._apply(inst, event, at)

    def _apply(self, inst: Inst, event: Event, at: float) -> Iterator[Inst]:
        if event == Event.READY:
            inst.state = InstanceState.RUNNING
            self._touch(inst)
            inst.phase = "run"
            inst.ran_at = at
            inst.log = (
                f"[fleet] {inst.key}: simulated agent on {inst.id} in {inst.zone}, "
                f"run: {inst.agent.get('run')!r}\n".encode()
            )
            seconds, code = job_plan(inst.agent.get("run"))
            if PROGRESS_FILE in str(inst.agent.get("run") or "") and 0 < seconds < math.inf:
                resumed = self._saved.get(_job_of(inst), (0, 0.0))[1]
                if inst.agent.get("node_rank", 0) == 0:  # the node that saves checkpoints
                    inst.work_seconds, inst.resumed = seconds, resumed
                    every = float(inst.agent.get("checkpoint_sync_seconds") or 0.5)
                    inst.sync_every = max(0.1, every)
                seconds *= 1.0 - resumed  # every node runs the rest, from the checkpoint
            if math.isfinite(seconds):
                inst.planned_exit = code
                self._push(at + seconds, inst, Event.EXIT)
            self._schedule_preemption(inst, at)
            yield inst
        elif event == Event.EXIT:
            if inst.phase == "run":  # not after a notice: that agent stopped the job
                inst.phase, inst.exit_code = "exited", inst.planned_exit
                inst.stopped_at = inst.stopped_at or at
                yield inst
        elif event == Event.BEAT:
            if at >= inst.next_keepalive:  # an older keep-alive, since overtaken by a report
                yield inst
        elif event == Event.NOTICE:
            self.preempted_at.setdefault(inst.key, at)
            self._notice(inst, now=at, seconds=self.config.notice_seconds)
            yield inst
        elif event == Event.RECLAIM:
            self.preempted_at.setdefault(inst.key, at)
            reason = (
                "preempted: notice deadline reached"
                if inst.notice_deadline
                else ("preempted: spot capacity reclaimed")
            )
            self._end(inst, InstanceState.PREEMPTED, reason, now=at)

    def _schedule_preemption(self, inst: Inst, now: float) -> None:
        rate = self.config.preempt_rate_per_hour
        if inst.market != Market.SPOT or rate <= 0:
            return
        at = now + self._rng.expovariate(rate / 3600.0)
        notice = self.config.notice_seconds
        self._push(max(now, at - notice), inst, Event.NOTICE if notice else Event.RECLAIM)

    def _notice(self, inst: Inst, *, now: float, seconds: float) -> None:
        if inst.state == InstanceState.NOTICE:
            return
        inst.state = InstanceState.NOTICE
        inst.reason = "spot interruption notice"
        inst.notice_deadline = now + seconds
        self._touch(inst)
        if inst.phase not in ("", "exited"):
            inst.phase = "preempted"  # the agent checkpoints and says so (spotd.agent)
            inst.stopped_at = inst.stopped_at or now
        self._push(inst.notice_deadline, inst, Event.RECLAIM)

    def checkpoint(self, inst: Inst, now: float) -> tuple[float, float] | None:
        """(synced at, progress) of the newest checkpoint the instance's run has synced by
        ``now``, saved to its job's checkpoint store; None if the run does not checkpoint or
        has not synced yet."""
        if not inst.work_seconds or inst.ran_at is None:
            return None
        end = now if inst.stopped_at is None else min(now, inst.stopped_at)
        synced = inst.ran_at + math.floor((end - inst.ran_at) / inst.sync_every) * inst.sync_every
        if synced <= inst.ran_at:
            return None
        progress = min(1.0, inst.resumed + (synced - inst.ran_at) / inst.work_seconds)
        attempt = int(inst.agent.get("attempt") or 0)
        held = self._saved.get(_job_of(inst))
        if held is None or attempt >= held[0]:
            self._saved[_job_of(inst)] = (attempt, progress)
        return synced, progress

    def _end(self, inst: Inst, state: InstanceState, reason: str, *, now: float) -> None:
        self.checkpoint(inst, now)  # what it synced before it went is in the store
        inst.state = state
        inst.reason = reason
        if inst.ran_at is not None:
            inst.stopped_at = inst.stopped_at or now
        self._touch(inst)
        inst.gen += 1
        self._push(now + self.config.forget_seconds, inst, Event.FORGET)

    def _touch(self, inst: Inst) -> None:
        self.rev += 1
        inst.rev = self.rev

    def _push(self, at: float, inst: Inst, event: Event) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, inst.key, inst.gen, event))

    def beat_later(self, inst: Inst, at: float) -> None:
        """The agent reported: its next keep-alive is at ``at`` unless news comes first."""
        inst.next_keepalive = at
        if inst.alive:
            self._push(at, inst, Event.BEAT)

    # -- what the benchmark reads --------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for inst in self._by_key.values():
            out[str(inst.state)] = out.get(str(inst.state), 0) + 1
        return out

    def instances(self) -> list[Inst]:
        return list(self._by_key.values())

    def history(self) -> list[dict[str, Any]]:
        """Every instance still known, with when its run started and first stopped and how
        many instances its key made: what a check of "nothing ran twice" reads."""
        return [
            {
                **inst.listing(),
                "created_at": inst.created_at,
                "ran_at": inst.ran_at,
                "stopped_at": inst.stopped_at,
                "phase": inst.phase,
                "exit_code": inst.exit_code,
                "launches": self.launches_by_key.get(inst.key, 0),
            }
            for inst in self._by_key.values()
        ]


def _job_of(inst: Inst) -> str:
    """The checkpoint store of the job an instance runs (the job's tag without one)."""
    return str(inst.agent.get("checkpoint_store") or inst.tags.get(TAG_JOB, inst.key))
