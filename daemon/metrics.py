"""Prometheus metrics of the daemon, on a registry of its own (no process-wide singleton)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class PacedJob(NamedTuple):
    """One DEADLINE job's pace as the gauges show it (``control.deadline.Pace``, flattened)."""

    job: int
    name: str
    project: str
    slack: float
    ahead: float
    progress: float
    progress_from: str  # "checkpoint" or "wall time"


_PACE_FAMILIES = (
    (
        "spotd_job_deadline_slack_seconds",
        "Time to the deadline beyond the work still to do (negative: it will be late)",
    ),
    (
        "spotd_job_deadline_ahead_of_line_seconds",
        "Work seconds ahead of the uniform-progress line (negative: behind it)",
    ),
    (
        "spotd_job_progress_ratio",
        "Work done over expected_duration (0-1): the last checkpoint's, else wall time",
    ),
)


def _label(value: str) -> str:
    """A label value as the text exposition format quotes it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(x: float) -> str:
    """A sample value as the text exposition format writes it."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x))


def _pace_text(paces: Sequence[PacedJob]) -> str:
    """The three pace gauges in the text exposition format, one line per job and gauge.

    Written here rather than through a collector: prometheus_client checks and escapes every
    label name of every sample as it renders, which at 10,000 DEADLINE jobs (30,000 samples)
    took 0.19 s of the scrape's CPU; these labels are fixed, so only the values need quoting
    (``tests/api/test_deadline_metrics.py`` reads the result back with the library's parser).
    """
    (slack, s_help), (ahead, a_help), (progress, p_help) = _PACE_FAMILIES
    out = [f"# HELP {slack} {s_help}\n# TYPE {slack} gauge\n"]
    ahead_lines = [f"# HELP {ahead} {a_help}\n# TYPE {ahead} gauge\n"]
    progress_lines = [f"# HELP {progress} {p_help}\n# TYPE {progress} gauge\n"]
    for p in paces:
        job, name, project = p.job, _label(p.name), _label(p.project)
        labels = f'job="{job}",name="{name}",project="{project}"'
        out.append(f"{slack}{{{labels}}} {_number(p.slack)}\n")
        ahead_lines.append(f"{ahead}{{{labels}}} {_number(p.ahead)}\n")
        progress_lines.append(
            f'{progress}{{job="{job}",name="{name}",progress_from="{_label(p.progress_from)}",'
            f'project="{project}"}} {_number(p.progress)}\n'
        )
    return "".join(out + ahead_lines + progress_lines)


class DaemonMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.jobs_by_state = Gauge("spotd_jobs", "Managed jobs by state", ["state"], registry=r)
        self.jobs_finished = Counter(
            "spotd_jobs_finished_total", "Jobs that reached a final state", ["state"], registry=r
        )
        self.attempts = Counter(
            "spotd_attempts_total", "Attempts placed", ["provider", "region", "market"], registry=r
        )
        self.preemptions = Counter(
            "spotd_preemptions_total", "Preemptions detected", ["provider", "region"], registry=r
        )
        self.recovery_seconds = Histogram(
            "spotd_recovery_seconds",
            "From an attempt's loss to the job running again",
            buckets=(0.5, 1, 2, 3, 5, 10, 30, 60, 120, 300, 900),
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "spotd_observe_pass_seconds",
            "Duration of one batched observe pass of a provider",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
            registry=r,
        )
        self.provider_calls = Counter(
            "spotd_provider_calls_total", "Provider API calls", ["provider", "call"], registry=r
        )
        self.provider_errors = Counter(
            "spotd_provider_errors_total", "Provider API errors", ["provider", "call"], registry=r
        )
        self.heartbeats = Counter("spotd_heartbeats_total", "Agent heartbeats", registry=r)
        self.suspects = Counter(
            "spotd_suspect_observations_total",
            "Observations of an instance with late heartbeats that the provider says is alive",
            registry=r,
        )
        self.api_requests = Counter(
            "spotd_api_requests_total", "API requests", ["route", "code"], registry=r
        )
        self.log_followers = Gauge(
            "spotd_log_followers", "Log streams being followed (?follow=1) right now", registry=r
        )
        # the autoscaler's signals per service (control.scaling), set where a policy reads them
        self.service_qps = Gauge(
            "spotd_service_qps",
            "Requests per second over the autoscaler's window",
            ["service"],
            registry=r,
        )
        self.service_waiting = Gauge(
            "spotd_service_requests_waiting",
            "Requests waiting: the READY replicas' vllm:num_requests_waiting plus the LB's queue",
            ["service"],
            registry=r,
        )
        self.service_running = Gauge(
            "spotd_service_requests_running",
            "The READY replicas' vllm:num_requests_running, summed",
            ["service"],
            registry=r,
        )
        self.service_kv_cache = Gauge(
            "spotd_service_kv_cache_usage",
            "The READY replicas' KV-cache usage (0-1), averaged",
            ["service"],
            registry=r,
        )
        self.service_wanted = Gauge(
            "spotd_service_autoscaler_wanted_replicas",
            "Replicas each configured autoscaling target asks for (before bounds and delays)",
            ["service", "signal"],
            registry=r,
        )
        self._wanted_labels: set[tuple[str, str]] = set()
        # DEADLINE jobs not ended, set at scrape time from the store (control.deadline.pace),
        # replaced whole (never changed in place) and written after the registry's families
        self._paces: list[PacedJob] = []

    def set_service_load(
        self,
        service: str,
        *,
        qps: float,
        waiting: float | None,
        running: float | None,
        kv_cache_usage: float | None,
        wanted: Mapping[str, int],
    ) -> None:
        """One read of a service's autoscaling signals; None: not read this time."""
        self.service_qps.labels(service).set(qps)
        for gauge, value in (
            (self.service_waiting, waiting),
            (self.service_running, running),
            (self.service_kv_cache, kv_cache_usage),
        ):
            if value is not None:
                gauge.labels(service).set(value)
        for signal, n in wanted.items():
            self.service_wanted.labels(service, signal).set(n)
            self._wanted_labels.add((service, signal))

    def forget_service(self, service: str) -> None:
        """Drop a gone service's series (a service name can be reused)."""
        for gauge in (
            self.service_qps,
            self.service_waiting,
            self.service_running,
            self.service_kv_cache,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(service)
        for labels in [x for x in self._wanted_labels if x[0] == service]:
            self._wanted_labels.discard(labels)
            with contextlib.suppress(KeyError):
                self.service_wanted.remove(*labels)

    def set_deadline_paces(self, paces: Iterable[PacedJob]) -> None:
        """The paces of the DEADLINE jobs not ended, replacing the last scrape's: a job that
        ended since has no series any more."""
        self._paces = list(paces)

    def render(self) -> bytes:
        return generate_latest(self.registry) + _pace_text(self._paces).encode()
