"""The LB's control protocol: every body the daemon and the LB exchange, as typed records.

The daemon imports these to build what it sends and to read what it gets; the LB uses the same
records to read what it is sent and to build its answers, so the two sides cannot disagree on
a field name. Each record has ``to_json()`` and, where it is read, ``from_json(raw)``, which
raises ``ValueError`` (or ``KeyError``/``TypeError`` for a missing or mistyped field) on a
malformed body.

- ``PUT /-/replicas``: a list of ``ReplicaEntry`` (or ``{"replicas": [...]}``); the answer is
  a ``ReplicaSetAck``. A DRAINING entry with a ``deadline`` (unix time) is a replica under a
  preemption notice: its LLM streams move to other replicas before then (``llmstream``).
- ``GET /-/replicas``: a ``ReplicasReport`` (the set with per-replica ``ReplicaReport``
  counters, recent ``Ejection``s, and the requests waiting for a replica).
- ``GET /-/stats?window=N``: a ``StatsReport`` with per-second ``StatsBucket``s.
- ``PUT /-/api-keys``: an ``ApiKeySet`` (the whole set of client keys, the header they come
  in, whether it is forwarded; an empty set turns keys off); the answer is an ``ApiKeyAck``
  (never the keys). ``GET /-/api-keys`` answers the same ``ApiKeyAck``.
- ``POST <report-url>`` (the daemon's ``/v1/services/{name}/lb-events``): an ``LbEvent``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ApiKeyAck",
    "ApiKeySet",
    "Ejection",
    "LbEvent",
    "ReplicaEntry",
    "ReplicaReport",
    "ReplicaSetAck",
    "ReplicasReport",
    "StatsBucket",
    "StatsReport",
    "parse_replica_set",
    "replica_set_json",
]

# the states the daemon sends; the LB picks READY replicas only, the others finish in-flight
READY, NOT_READY, DRAINING = "READY", "NOT_READY", "DRAINING"


@dataclass(frozen=True, slots=True)
class ReplicaEntry:
    """One replica of the set the daemon pushes."""

    id: str
    url: str  # http(s)://host:port
    state: str = READY
    # a preemption notice: the unix time the replica is reclaimed; its streams move before
    deadline: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "url": self.url, "state": self.state}
        if self.deadline is not None:
            out["deadline"] = self.deadline
        return out


def replica_set_json(entries: Sequence[ReplicaEntry]) -> list[dict[str, Any]]:
    return [e.to_json() for e in entries]


def parse_replica_set(body: Any) -> list[ReplicaEntry]:
    """``[{id, url, state, deadline?}]`` or ``{"replicas": [...]}``; ValueError when
    malformed."""
    if isinstance(body, Mapping):
        body = body.get("replicas")
    if not isinstance(body, list):
        raise ValueError('expected a list of replicas or {"replicas": [...]}')
    out: list[ReplicaEntry] = []
    seen: set[str] = set()
    for item in body:
        if not isinstance(item, Mapping):
            raise ValueError("each replica must be an object")
        rid, url = item.get("id"), item.get("url")
        if not isinstance(rid, str | int) or not isinstance(url, str) or not url:
            raise ValueError("each replica needs a string id and url")
        rid = str(rid)
        if rid in seen:
            raise ValueError(f"duplicate replica id {rid}")
        seen.add(rid)
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"replica {rid}: url must be http(s)://host:port")
        deadline = item.get("deadline")
        if deadline is not None and (
            isinstance(deadline, bool)
            or not isinstance(deadline, int | float)
            or not math.isfinite(deadline)
        ):
            raise ValueError(f"replica {rid}: deadline must be a unix time (a number)")
        out.append(
            ReplicaEntry(
                id=rid,
                url=url,
                state=str(item.get("state", READY)).upper(),
                deadline=None if deadline is None else float(deadline),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class ReplicaReport:
    """One replica as the LB sees it, with its run-time counters."""

    id: str
    url: str
    state: str
    in_flight: int = 0
    ejected: bool = False
    requests: int = 0
    failures: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "state": self.state,
            "in_flight": self.in_flight,
            "ejected": self.ejected,
            "requests": self.requests,
            "failures": self.failures,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ReplicaReport:
        return cls(
            id=str(raw["id"]),
            url=str(raw.get("url", "")),
            state=str(raw.get("state", READY)),
            in_flight=int(raw["in_flight"]),
            ejected=bool(raw.get("ejected", False)),
            requests=int(raw.get("requests", 0)),
            failures=int(raw.get("failures", 0)),
        )


@dataclass(frozen=True, slots=True)
class Ejection:
    """A replica the LB stopped sending requests to after a connection failure."""

    replica_id: str
    url: str
    reason: str  # e.g. "ClientConnectorError: Connect call failed"
    at: float  # unix time

    def to_json(self) -> dict[str, Any]:
        return {
            "replica_id": self.replica_id,
            "url": self.url,
            "reason": self.reason,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Ejection:
        return cls(
            replica_id=str(raw["replica_id"]),
            url=str(raw.get("url", "")),
            reason=str(raw.get("reason", "")),
            at=float(raw.get("at", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class ReplicaSetAck:
    """The LB's answer to a PUT: the set's new version and what it holds now."""

    version: int
    replicas: tuple[ReplicaReport, ...]

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "replicas": [r.to_json() for r in self.replicas]}


@dataclass(frozen=True, slots=True)
class ReplicasReport:
    version: int
    replicas: tuple[ReplicaReport, ...]
    ejections: tuple[Ejection, ...] = ()
    waiting: int = 0  # requests queued for want of a READY replica

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "replicas": [r.to_json() for r in self.replicas],
            "ejections": [e.to_json() for e in self.ejections],
            "waiting": self.waiting,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ReplicasReport:
        return cls(
            version=int(raw.get("version", 0)),
            replicas=tuple(ReplicaReport.from_json(r) for r in raw.get("replicas", [])),
            ejections=tuple(Ejection.from_json(e) for e in raw.get("ejections", [])),
            waiting=int(raw.get("waiting", 0)),
        )


@dataclass(frozen=True, slots=True)
class StatsBucket:
    t: float  # the second's start (unix time)
    requests: int
    errors_5xx: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "requests": self.requests, "errors_5xx": self.errors_5xx}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> StatsBucket:
        return cls(
            t=float(raw["t"]),
            requests=int(raw["requests"]),
            errors_5xx=int(raw.get("errors_5xx", 0)),
        )


@dataclass(frozen=True, slots=True)
class StatsReport:
    """Whole seconds, oldest first, the filling one left out."""

    lb_id: str
    now: float
    buckets: tuple[StatsBucket, ...]
    in_flight: int = 0
    waiting: int = 0  # requests queued for want of a READY replica: demand not yet counted
    replicas: Mapping[str, int] | None = None  # replica id -> in flight

    @property
    def requests(self) -> int:
        return sum(b.requests for b in self.buckets)

    def to_json(self) -> dict[str, Any]:
        n = len(self.buckets)
        return {
            "lb_id": self.lb_id,
            "now": self.now,
            "window_seconds": n,
            "requests": self.requests,
            "errors_5xx": sum(b.errors_5xx for b in self.buckets),
            "qps": self.requests / n if n else 0.0,
            "buckets": [b.to_json() for b in self.buckets],
            "in_flight": self.in_flight,
            "waiting": self.waiting,
            "replicas": dict(self.replicas or {}),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> StatsReport:
        return cls(
            lb_id=str(raw.get("lb_id", "")),
            now=float(raw.get("now", 0.0)),
            buckets=tuple(StatsBucket.from_json(b) for b in raw["buckets"]),
            in_flight=int(raw.get("in_flight", 0)),
            waiting=int(raw.get("waiting", 0)),
            replicas={str(k): int(v) for k, v in (raw.get("replicas") or {}).items()},
        )


@dataclass(frozen=True, slots=True)
class LbEvent:
    """What the LB reports to the daemon at once (today: an ejection)."""

    lb_id: str
    ejection: Ejection
    event: str = "ejected"

    def to_json(self) -> dict[str, Any]:
        return {"lb_id": self.lb_id, "event": self.event, **self.ejection.to_json()}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> LbEvent:
        if raw.get("event") != "ejected":
            raise ValueError(f"unknown LB event {raw.get('event')!r}")
        return cls(lb_id=str(raw.get("lb_id", "")), ejection=Ejection.from_json(raw))


@dataclass(frozen=True, slots=True)
class ApiKeySet:
    """The client API keys an LB accepts (``PUT /-/api-keys``); it replaces the whole set.

    ``header`` is where clients send a key (``Authorization`` means ``Bearer <key>``);
    ``forward`` keeps that header on the request to the replica (off: removed). The keys are
    secrets: ``repr`` leaves them out."""

    keys: tuple[str, ...] = ()
    header: str = "Authorization"
    forward: bool = False

    def __repr__(self) -> str:
        return f"ApiKeySet(keys=<{len(self.keys)}>, header={self.header!r}, forward={self.forward})"

    def to_json(self) -> dict[str, Any]:
        return {"keys": list(self.keys), "header": self.header, "forward": self.forward}

    @classmethod
    def from_json(cls, raw: Any) -> ApiKeySet:
        if not isinstance(raw, Mapping):
            raise ValueError('expected {"keys": [...], "header": ..., "forward": ...}')
        keys = raw.get("keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("keys must be a list of strings")
        header = raw.get("header", "Authorization")
        forward = raw.get("forward", False)
        if not isinstance(header, str) or not isinstance(forward, bool):
            raise ValueError("header must be a string and forward a boolean")
        return cls(keys=tuple(keys), header=header, forward=forward)


@dataclass(frozen=True, slots=True)
class ApiKeyAck:
    """What the LB holds after a PUT (or on a GET): how many keys, never the keys."""

    version: int
    count: int
    header: str
    forward: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "count": self.count,
            "header": self.header,
            "forward": self.forward,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ApiKeyAck:
        return cls(
            version=int(raw["version"]),
            count=int(raw["count"]),
            header=str(raw.get("header", "Authorization")),
            forward=bool(raw.get("forward", False)),
        )
