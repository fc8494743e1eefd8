"""Reading what saturates an LLM server: each READY replica's Prometheus ``/metrics``.

The autoscaler's queue and KV-cache targets (``serve.autoscaler``) need what the replicas'
servers report, not what the LB counts: a vLLM replica that generates long answers is
saturated (requests waiting, KV cache full) at a request rate that looks idle. vLLM exports

- ``vllm:num_requests_running``: requests in the running batch;
- ``vllm:num_requests_waiting``: requests queued for the batch (what a user waits on);
- ``vllm:kv_cache_usage_perc``: KV-cache usage as a fraction, 1 = full (``perc`` in the name
  notwithstanding); vLLM before 0.10 called it ``vllm:gpu_cache_usage_perc``.

A server with several engines (data parallel) reports one series per engine: counts are
summed, the KV-cache fraction averaged. Other servers that speak the same names (SGLang's
vLLM-compatible exporter, the stub replica) work as they are; a replica whose ``/metrics``
lacks them counts as not answering.

Fetching is a narrow seam (``MetricsSource``: one ``fetch(url) -> text``) with the aiohttp
implementation (bounded body, short timeout) and a fake beside it. ``read_load`` scrapes the
given replicas concurrently and folds the answers into one ``serve.autoscaler.ReplicaLoad``;
a replica that fails (timeout, refused, too big, unparsable) is left out of it and logged, and
when none answers the result is None: the autoscaler then holds its target rather than decide
on missing data.

Why not GPU utilisation from here: vLLM does not export it, and for LLM servers it is a weak
signal anyway (continuous batching keeps a busy GPU near 100 % at any load). The agent's NVML
samples are the source where a policy asks for ``target_gpu_utilization``; see
docs/serving.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import structlog
from prometheus_client.parser import text_string_to_metric_families

from spotd.lb.control import READY, ReplicasReport
from spotd.serve.autoscaler import ReplicaLoad

__all__ = [
    "FakeMetricsSource",
    "HttpMetricsSource",
    "MetricsSource",
    "MetricsUnavailable",
    "ReplicaSample",
    "fold",
    "parse_vllm_metrics",
    "read_load",
    "read_samples",
    "ready_urls",
]

log = structlog.get_logger("spotd.control.replica_metrics")

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = "vllm:kv_cache_usage_perc"
KV_CACHE_OLD = "vllm:gpu_cache_usage_perc"  # vLLM < 0.10
_WANTED = (RUNNING, WAITING, KV_CACHE, KV_CACHE_OLD)

MAX_BODY_BYTES = 2 << 20  # vLLM's /metrics is about 100 KB with every histogram
DEFAULT_TIMEOUT = 1.0  # seconds: a replica too busy to answer this is left out this time


class MetricsUnavailable(Exception):
    """A replica's metrics could not be read or made no sense; the message says why."""


class MetricsSource(Protocol):
    """Where a replica's Prometheus text comes from."""

    async def fetch(self, url: str) -> str:
        """The body at ``url``; raises ``MetricsUnavailable`` when it cannot be had."""
        ...


class HttpMetricsSource:
    """``GET url`` with a total timeout and a body cap, through the daemon's session."""

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_bytes = max_bytes

    async def fetch(self, url: str) -> str:
        try:
            async with self._session().get(url, timeout=self._timeout) as r:
                if r.status != 200:
                    raise MetricsUnavailable(f"GET {url}: HTTP {r.status}")
                if (r.content_length or 0) > self._max_bytes:
                    raise MetricsUnavailable(f"GET {url}: body over {self._max_bytes} bytes")
                chunks: list[bytes] = []
                size = 0
                # read() returns what is buffered, not the whole body: read to the end, bounded
                async for chunk in r.content.iter_chunked(64 << 10):
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise MetricsUnavailable(f"GET {url}: body over {self._max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks).decode("utf-8", errors="replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MetricsUnavailable(f"GET {url}: {type(exc).__name__}: {exc}") from exc


class FakeMetricsSource:
    """Answers from a table: url -> Prometheus text, or an exception to raise."""

    def __init__(self, answers: Mapping[str, str | Exception] | None = None) -> None:
        self.answers: dict[str, str | Exception] = dict(answers or {})
        self.fetched: list[str] = []

    def set(self, url: str, answer: str | Exception) -> None:
        self.answers[url] = answer

    async def fetch(self, url: str) -> str:
        self.fetched.append(url)
        answer = self.answers.get(url)
        if answer is None:
            raise MetricsUnavailable(f"GET {url}: no answer")
        if isinstance(answer, Exception):
            raise answer
        return answer


@dataclass(frozen=True, slots=True)
class ReplicaSample:
    """One replica's server at one moment. ``kv_cache_usage`` None: the server does not say."""

    running: float
    waiting: float
    kv_cache_usage: float | None = None


def parse_vllm_metrics(text: str) -> ReplicaSample:
    """The vLLM gauges in a Prometheus text body; ``MetricsUnavailable`` when the running and
    waiting counts are not both there, or a value is not a finite number >= 0.

    Only the lines of the wanted metrics are parsed (the histograms are most of the body).
    """
    lines = [ln for ln in text.splitlines() if _wanted_line(ln)]
    series: dict[str, list[float]] = {}
    try:
        for family in text_string_to_metric_families("\n".join(lines) + "\n"):
            for s in family.samples:
                if s.name in _WANTED:
                    series.setdefault(s.name, []).append(float(s.value))
    except ValueError as exc:
        raise MetricsUnavailable(f"unparsable metrics: {exc}") from exc
    values = [v for vs in series.values() for v in vs]
    if any(not 0 <= v < float("inf") for v in values):  # also refuses NaN
        raise MetricsUnavailable("a vLLM gauge is negative or not a finite number")
    if RUNNING not in series or WAITING not in series:
        raise MetricsUnavailable(f"no {RUNNING} / {WAITING} in the replica's metrics")
    kv = series.get(KV_CACHE) or series.get(KV_CACHE_OLD)
    return ReplicaSample(
        running=sum(series[RUNNING]),
        waiting=sum(series[WAITING]),
        kv_cache_usage=min(1.0, sum(kv) / len(kv)) if kv else None,
    )


def _wanted_line(line: str) -> bool:
    if line.startswith("#"):
        parts = line.split(maxsplit=3)
        return len(parts) >= 3 and parts[1] in ("TYPE", "HELP") and parts[2] in _WANTED
    name = line.split("{", 1)[0].split(" ", 1)[0]
    return name in _WANTED


def fold(samples: Iterable[ReplicaSample], *, lb_waiting: int) -> ReplicaLoad:
    """The replicas' samples as one load; the LB's own queue counts as waiting."""
    got = list(samples)
    return ReplicaLoad(
        replicas=len(got),
        running=sum(s.running for s in got),
        waiting=sum(s.waiting for s in got) + lb_waiting,
        kv_cache_usage=sum(s.kv_cache_usage or 0.0 for s in got),
    )


async def read_samples(source: MetricsSource, urls: Mapping[str, str]) -> dict[str, ReplicaSample]:
    """Scrape ``{replica id: base url}`` concurrently; the replicas that answered."""

    async def one(rid: str, base: str) -> tuple[str, ReplicaSample | None]:
        try:
            return rid, parse_vllm_metrics(await source.fetch(base.rstrip("/") + "/metrics"))
        except MetricsUnavailable as exc:
            log.info("cannot read a replica's metrics", replica=rid, error=str(exc))
            return rid, None

    answers = await asyncio.gather(*(one(rid, url) for rid, url in urls.items()))
    return {rid: s for rid, s in answers if s is not None}


async def read_load(
    source: MetricsSource, urls: Mapping[str, str], *, lb_waiting: int
) -> ReplicaLoad | None:
    """The READY replicas' load plus the LB's queue; None when replicas were asked and none
    answered (missing data). No replicas to ask: the LB's queue alone (``replicas=0``)."""
    samples = await read_samples(source, urls)
    if urls and not samples:
        return None
    return fold(samples.values(), lb_waiting=lb_waiting)


def ready_urls(report: ReplicasReport) -> dict[str, str]:
    """``{replica id: url}`` of the replicas the LB sends requests to (READY, not ejected)."""
    return {r.id: r.url for r in report.replicas if r.state == READY and not r.ejected and r.url}
