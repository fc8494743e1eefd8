"""spotd.jobs against a real daemon: typed results, logs, cancel, waits, errors by type."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import spotd
from spotd.sdk.errors import ConflictError, SyncCallInEventLoopError
from spotd.sdk.types import Pace
from spotd.types import AttemptStatus, EndReason, JobStatus
from tests.sdk.conftest import short_home

FAST = 0.1  # poll interval for wait() in tests


def echo_task(name: str = "hello", run: str = "echo hello from the sdk; echo bye") -> spotd.Task:
    return spotd.Task(name=name, run=run).set_resources(spotd.Resources(cpus="1+"))


def test_launch_then_wait_gives_a_typed_succeeded_job(conn: spotd.Connection) -> None:
    handle = spotd.jobs.launch(echo_task(), connection=conn)
    assert isinstance(handle, spotd.JobHandle) and handle.name == "hello"
    assert handle.status in (JobStatus.PENDING, JobStatus.STARTING)

    job = spotd.jobs.wait(handle.id, poll=FAST, connection=conn)
    assert isinstance(job, spotd.Job) and job.id == handle.id
    assert job.status is JobStatus.SUCCEEDED and job.succeeded and job.is_terminal
    [attempt] = job.attempts
    assert attempt.status is AttemptStatus.ENDED and attempt.end_reason is EndReason.SUCCEEDED
    assert attempt.provider == "local" and attempt.price_per_hour is not None
    assert job.resources == "1x cpus=1+"
    assert handle.id in [j.id for j in spotd.jobs.queue(connection=conn)]
    assert spotd.jobs.get(handle.id, connection=conn) == job


def test_launch_without_detach_waits_for_the_end(conn: spotd.Connection) -> None:
    handle = spotd.jobs.launch(
        echo_task("attached"), "renamed", detach=False, poll=FAST, connection=conn
    )
    assert handle.name == "renamed" and handle.job.status is JobStatus.SUCCEEDED


def test_logs_are_an_iterator_of_lines(conn: spotd.Connection) -> None:
    run = "for i in 1 2 3; do echo line-$i; sleep 0.2; done"
    handle = spotd.jobs.launch(echo_task("logs", run), connection=conn)
    followed = list(spotd.jobs.logs(handle.id, follow=True, connection=conn))  # to the end
    assert followed[0].startswith("=== attempt 1: local/")
    assert [line for line in followed if line.startswith("line-")] == ["line-1", "line-2", "line-3"]
    assert not any("\n" in line for line in followed)
    only_first = list(spotd.jobs.logs(handle.id, attempt=1, connection=conn))
    assert only_first == followed
    lines = spotd.jobs.logs(handle.id, connection=conn)
    assert next(lines).startswith("=== attempt 1")
    lines.close()  # stopping early closes the stream and its private loop


def test_cancel_and_wait_timeout(conn: spotd.Connection) -> None:
    handle = spotd.jobs.launch(echo_task("sleeper", "sleep 60"), connection=conn)
    t0 = time.monotonic()
    with pytest.raises(spotd.WaitTimeoutError) as err:
        spotd.jobs.wait(handle.id, timeout=0.5, poll=FAST, connection=conn)
    assert 0.5 <= time.monotonic() - t0 < 5
    assert isinstance(err.value, TimeoutError) and not err.value.job.is_terminal
    assert f"job {handle.id} is still" in str(err.value)

    cancelling = spotd.jobs.cancel(handle.id, connection=conn)
    assert cancelling.status in (JobStatus.CANCELLING, JobStatus.CANCELLED)
    job = spotd.jobs.wait(handle.id, timeout=30, poll=FAST, connection=conn)
    assert job.status is JobStatus.CANCELLED  # returned, not raised: the caller asked for it
    with pytest.raises(ConflictError, match=f"job {handle.id} is already CANCELLED"):
        spotd.jobs.cancel(handle.id, connection=conn)


def test_failed_job_raises_job_failed_with_the_job(conn: spotd.Connection) -> None:
    handle = spotd.jobs.launch(echo_task("fails", "echo oops; exit 3"), connection=conn)
    with pytest.raises(spotd.JobFailedError) as err:
        spotd.jobs.wait(handle.id, timeout=30, poll=FAST, connection=conn)
    assert err.value.job.status is JobStatus.FAILED
    assert err.value.job.attempts[-1].end_reason is EndReason.USER_FAILED
    assert str(err.value).startswith(f"job {handle.id} (fails) ended FAILED")


def test_impossible_resources_raise_no_feasible_placement(conn: spotd.Connection) -> None:
    task = spotd.Task(name="huge", run="echo").set_resources(
        spotd.Resources(accelerators="A100:16")
    )
    with pytest.raises(spotd.NoFeasiblePlacementError) as err:
        spotd.jobs.launch(task, connection=conn)
    assert err.value.status == 400
    assert str(err.value).startswith("no feasible placement: no instance type offers A100:16")


def test_task_the_daemon_refuses_is_an_invalid_task(conn: spotd.Connection) -> None:
    with pytest.raises(spotd.InvalidTaskError, match="`run` is required"):
        spotd.jobs.launch(spotd.Task(name="no-run"), connection=conn)
    with pytest.raises(spotd.InvalidTaskError, match="is not a directory"):
        spotd.jobs.launch(spotd.Task(run="echo", workdir="/nonexistent/dir"), connection=conn)


def test_unknown_job_is_not_found(conn: spotd.Connection) -> None:
    for call in (
        lambda: spotd.jobs.get(987654, connection=conn),
        lambda: spotd.jobs.cancel(987654, connection=conn),
        lambda: spotd.jobs.wait(987654, connection=conn),
        lambda: list(spotd.jobs.logs(987654, connection=conn)),
    ):
        with pytest.raises(spotd.NotFoundError, match="no job 987654"):
            call()


def test_no_daemon_and_no_autostart_is_unreachable() -> None:
    home = short_home("none")
    with pytest.raises(spotd.DaemonUnreachableError, match="no spotd answers on"):
        spotd.jobs.queue(connection=spotd.Connection(home=home, autostart=False))
    assert not home.exists()  # nothing was started or created


def test_default_connection_finds_the_daemon_like_spotctl(
    sdk_daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPOTD_HOME", str(sdk_daemon.home))
    monkeypatch.delenv("SPOTD_URL", raising=False)
    assert isinstance(spotd.jobs.queue(), list)


def test_autostart_starts_a_local_daemon_when_none_answers(monkeypatch) -> None:
    home = short_home("auto")
    try:
        assert spotd.jobs.queue(connection=spotd.Connection(home=home)) == []
        assert (home / "spotd.sock").exists()
    finally:
        pid_file = home / "spotd.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            for _ in range(150):  # it is our child (started by this process): reap it
                try:
                    if os.waitpid(pid, os.WNOHANG) != (0, 0):
                        break
                except ChildProcessError:
                    break
                time.sleep(0.1)
        import shutil

        shutil.rmtree(home, ignore_errors=True)


async def test_blocking_api_inside_an_event_loop_says_use_aio(conn) -> None:
    with pytest.raises(SyncCallInEventLoopError, match=r"spotd\.aio\.jobs\.queue"):
        spotd.jobs.queue(connection=conn)
    with pytest.raises(SyncCallInEventLoopError, match=r"async for .* spotd\.aio\.jobs\.logs"):
        spotd.jobs.logs(1, connection=conn)


async def test_async_twin_launches_streams_and_waits(conn: spotd.Connection) -> None:
    handle = await spotd.aio.jobs.launch(echo_task("async"), connection=conn)
    lines = [line async for line in spotd.aio.jobs.logs(handle.id, follow=True, connection=conn)]
    assert "hello from the sdk" in lines
    job = await spotd.aio.jobs.wait(handle.id, timeout=30, poll=FAST, connection=conn)
    assert job.status is JobStatus.SUCCEEDED
    assert handle.id in [j.id for j in await spotd.aio.jobs.queue(connection=conn)]
    with pytest.raises(spotd.NotFoundError):
        await spotd.aio.jobs.get(987654, connection=conn)


def test_relative_workdir_resolves_against_the_callers_cwd(
    conn, tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "hello.txt").write_text("from the workdir\n")
    monkeypatch.chdir(tmp_path)
    task = spotd.Task(name="wd", workdir="code", run="cat hello.txt")
    handle = spotd.jobs.launch(task, detach=False, poll=FAST, connection=conn)
    assert "from the workdir" in list(spotd.jobs.logs(handle.id, connection=conn))


def test_a_deadline_job_has_a_pace_frozen_at_its_end(conn: spotd.Connection) -> None:
    task = spotd.Task.model_validate(
        {
            "name": "paced",
            "run": "echo paced",
            "resources": {"cpus": "1+"},
            "job_recovery": {"strategy": "DEADLINE", "deadline": "1h", "expected_duration": "10m"},
        }
    )
    job = spotd.jobs.wait(spotd.jobs.launch(task, connection=conn).id, poll=FAST, connection=conn)
    assert job.succeeded and isinstance(job.pace, Pace), job
    assert job.pace.progress_from == "wall time" and job.pace.expected_duration_seconds == 600.0
    assert 0.0 < job.pace.slack_seconds < 3_000.0
    time.sleep(1.1)
    assert spotd.jobs.get(job.id, connection=conn) == job  # measured at its end, not now
