"""The DEADLINE pace gauges on ``/metrics``: one series per job not ended, replaced at every
scrape so that a job that ended since leaves no stale series behind."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spotd.api.ops import _paces
from spotd.metrics import DaemonMetrics, PacedJob
from spotd.spec import Task
from spotd.store.jobs import JobPage

NOW = 100_000.0


def _samples(m: DaemonMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        if family.name.startswith("spotd_job_"):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_each_paced_job_has_its_slack_lead_and_progress() -> None:
    m = DaemonMetrics()
    m.set_deadline_paces(
        [
            PacedJob(7, "train", "default", 900.0, -30.0, 0.2, "checkpoint"),
            PacedJob(9, "eval", "team-a", -5.0, 10.0, 1.0, "wall time"),
        ]
    )
    seven = (("job", "7"), ("name", "train"), ("project", "default"))
    nine = (("job", "9"), ("name", "eval"), ("project", "team-a"))
    assert _samples(m) == {
        ("spotd_job_deadline_slack_seconds", seven): 900.0,
        ("spotd_job_deadline_ahead_of_line_seconds", seven): -30.0,
        ("spotd_job_progress_ratio", (*seven[:2], ("progress_from", "checkpoint"), seven[2])): 0.2,
        ("spotd_job_deadline_slack_seconds", nine): -5.0,
        ("spotd_job_deadline_ahead_of_line_seconds", nine): 10.0,
        ("spotd_job_progress_ratio", (*nine[:2], ("progress_from", "wall time"), nine[2])): 1.0,
    }


def test_a_job_gone_from_the_next_scrape_leaves_no_series() -> None:
    m = DaemonMetrics()
    one, two = (PacedJob(i, "train", "default", 1.0, 0.0, 0.0, "wall time") for i in (1, 2))
    m.set_deadline_paces([one, two])
    m.set_deadline_paces([two])
    assert {labels[0] for _, labels in _samples(m)} == {("job", "2")}
    m.set_deadline_paces([])
    assert _samples(m) == {}


@dataclass(frozen=True)
class _Job:
    """The fields of a JobRow that a pace reads."""

    id: int
    spec_json: str
    name: str = "train"
    project: str = "default"
    deadline: float | None = NOW + 3000.0
    submitted_at: float = NOW - 1000.0
    ended_at: float | None = None
    work_done_seconds: float = 500.0  # checkpointed
    failed_launches: int = 0
    first_failure_at: float | None = None


def _deadline_task(expected: str) -> Task:
    return Task.model_validate(
        {
            "run": "python train.py",
            "job_recovery": {
                "strategy": "DEADLINE",
                "deadline": "2h",
                "expected_duration": expected,
            },
        }
    )


def test_a_scrape_reads_the_task_the_worker_parsed_and_parses_the_others() -> None:
    """The route hands the tasks the daemon's workers hold (``JobMemory.known``) to the paces;
    a job without one (another daemon's) has its stored spec parsed for this scrape."""
    stored = _deadline_task("1000s").model_dump_json()
    page = JobPage(jobs=[_Job(1, stored), _Job(2, stored)])  # type: ignore[list-item]
    # job 1's worker holds a task that expects 2000 s of work: its slack is 1000 s less
    paces = {p.job: p for p in _paces(page, {1: _deadline_task("2000s")}, NOW)}
    assert paces[2].slack == pytest.approx(3000.0 - 500.0)
    assert paces[1].slack == pytest.approx(3000.0 - 1500.0)
    assert paces[1].progress == pytest.approx(0.25) and paces[2].progress == pytest.approx(0.5)


def test_the_pace_gauges_read_back_as_the_library_would_write_them() -> None:
    """The pace lines are written by hand (speed): parsed with prometheus_client, they give
    the same families, types and samples as the library's own rendering of the same gauges,
    label values with quotes, backslashes, newlines and non-ASCII included, and each family
    has its help."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    paces = [
        PacedJob(1, 'say "hi"', "back\\nslash\\", -1.5, float("inf"), 0.0, "checkpoint"),
        PacedJob(2, "two\nlines", "équipe", 1e-7, -2.0, 1.0, "wall time"),
        PacedJob(3, "plain", "default", 12345678.25, 0.5, 0.333, "checkpoint"),
    ]
    ours = DaemonMetrics()
    ours.set_deadline_paces(paces)

    reg = CollectorRegistry()
    for name, text, labels in (
        ("spotd_job_deadline_slack_seconds", "slack", ["job", "name", "project"]),
        ("spotd_job_deadline_ahead_of_line_seconds", "ahead", ["job", "name", "project"]),
        ("spotd_job_progress_ratio", "progress", ["job", "name", "project", "progress_from"]),
    ):
        g = Gauge(name, text, labels, registry=reg)
        for p in paces:
            values = [str(p.job), p.name, p.project]
            if name == "spotd_job_progress_ratio":
                g.labels(*values, p.progress_from).set(p.progress)
            else:
                g.labels(*values).set(p.slack if "slack" in name else p.ahead)

    def families(text: str) -> dict[str, tuple[str, set[tuple[str, tuple[object, ...], float]]]]:
        out = {}
        for f in text_string_to_metric_families(text):
            if f.name.startswith("spotd_job_"):
                samples = {(s.name, tuple(sorted(s.labels.items())), s.value) for s in f.samples}
                out[f.name] = (f.type, samples)
        return out

    assert families(ours.render().decode()) == families(generate_latest(reg).decode())
    helps = {
        f.name: f.documentation
        for f in text_string_to_metric_families(ours.render().decode())
        if f.name.startswith("spotd_job_")
    }
    assert len(helps) == 3 and all(helps.values()), helps
