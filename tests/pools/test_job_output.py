"""A pool job's output cut from its worker's log (``spotd.control.pool_jobs.job_output``)."""

from __future__ import annotations

import pytest

from spotd.control.pool_jobs import job_output

LOG = """\
[spotd-agent] attempt 1 node 0/1: checkpoint empty
setup output
[spotd-agent] pool job 3 rank 0 attempt 1: started
three says hi
[spotd-agent] pool job 3 rank 0 attempt 1: exited with 0
[spotd-agent] pool job 13 rank 1 attempt 2: started
thirteen says hi
[spotd-agent] pool job 13 rank 1 attempt 2: stopped by the preemption notice (exit -15)
[spotd-agent] pool job 4 rank 1 attempt 1: started
four, still running
"""


@pytest.mark.parametrize(
    ("job", "attempt", "expected"),
    [
        pytest.param(3, 1, ["started", "three says hi", "exited with 0"], id="ended"),
        pytest.param(13, 2, ["started", "thirteen says hi", "stopped by"], id="noticed"),
        pytest.param(4, 1, ["started", "four, still running"], id="running-to-the-end"),
        pytest.param(3, 2, [], id="another-attempt"),
        pytest.param(1, 1, [], id="job-1-is-not-job-13"),
    ],
)
def test_job_output(job: int, attempt: int, expected: list[str]) -> None:
    lines = job_output(LOG, job, attempt).splitlines()
    assert len(lines) == len(expected)
    for line, part in zip(lines, expected, strict=True):
        assert part in line
