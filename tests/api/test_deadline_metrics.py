"""The DEADLINE pace gauges on ``/metrics``: one series per job not ended, replaced at every
scrape so that a job that ended since leaves no stale series behind."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from spotd.metrics import DaemonMetrics, PacedJob


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
