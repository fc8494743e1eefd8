"""Operating the daemon: TCP with a token, the socket's mode, autostart, PostgreSQL state,
heartbeat loss, secrets kept out of every output, metrics."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import DaemonProc, kill_instance_groups
from tests.e2e.helpers import digest_of, expected_digest, logs, train_yaml, wait_job

TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def make_daemon() -> Iterator:
    made: list[DaemonProc] = []

    def make(**env: str) -> DaemonProc:
        home = Path(f"/tmp/spotd-o{os.getpid()}-{time.monotonic_ns() % 10**9}")
        d = DaemonProc(home, env)
        d.start()
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()
        kill_instance_groups(d.home)
        shutil.rmtree(d.home, ignore_errors=True)


def test_unix_socket_is_private(daemon):
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600


async def test_tcp_api_needs_the_token(make_daemon):
    port = _free_port()
    d = make_daemon(SPOTD_TCP=f"127.0.0.1:{port}", SPOTD_API_TOKEN="s3cret-token")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{port}/v1/jobs") as r:
            assert r.status == 401
        async with s.get(
            f"http://127.0.0.1:{port}/v1/jobs", headers={"Authorization": "Bearer wrong"}
        ) as r:
            assert r.status == 401
        async with s.get(
            f"http://127.0.0.1:{port}/v1/jobs", headers={"Authorization": "Bearer s3cret-token"}
        ) as r:
            assert r.status == 200 and await r.json() == []
    from spotd.sdk.client import Client

    async with Client.connect(url=f"http://127.0.0.1:{port}", token="s3cret-token") as c:
        job = await c.launch(train_yaml(steps=3, step_seconds=0), filename="t.yaml")
        job = await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL)
    assert job["status"] == "SUCCEEDED"
    assert d.proc is not None and d.proc.poll() is None


def test_spotctl_starts_a_daemon_when_none_runs(tmp_path):
    home = Path(f"/tmp/spotd-a{os.getpid()}")
    shutil.rmtree(home, ignore_errors=True)
    d = DaemonProc(home)
    try:
        r = d.spotctl("jobs", "queue", "-o", "json")
        assert r.returncode == 0, r.stderr
        assert "started spotd in the background" in r.stderr
        assert r.stdout.strip() == "[]"
        assert d.spotctl("daemon", "status").returncode == 0
    finally:
        d.spotctl("daemon", "stop")
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.postgres
async def test_jobs_on_postgresql_state_survive_a_daemon_kill(make_daemon):
    url = os.environ.get("SPOTD_TEST_PG_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI must provide PostgreSQL (scripts/test.sh starts it)")
        pytest.skip("SPOTD_TEST_PG_URL not set: run through `make test`")
    import sqlalchemy

    name = f"spotd_e2e_{os.getpid()}_{time.monotonic_ns() % 10**6}"
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    db_url = url.replace("/spotd_test?", f"/{name}?")
    try:
        d = make_daemon(SPOTD_DB_URL=db_url)
        async with d.client() as c:
            job = await c.launch(train_yaml(steps=40), filename="pg.yaml")
            await wait_job(c, job["id"], lambda j: j["status"] == "RUNNING")
        d.kill9()
        d.start()
        async with d.client() as c:
            job = await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL)
            text = await logs(c, job["id"])
        assert job["status"] == "SUCCEEDED" and len(job["attempts"]) == 1
        assert digest_of(text) == expected_digest(40)
        assert not (d.home / "state.db").exists(), "state went to PostgreSQL, not SQLite"
        d.stop()
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


async def test_silent_instance_is_declared_lost_only_after_the_lost_timeout(make_daemon):
    d = make_daemon(SPOTD_LOST_AFTER="3")
    async with d.client() as c:
        job = await c.launch(train_yaml(steps=200, step_seconds=0.05), filename="l.yaml")
        jid = job["id"]
        await wait_job(c, jid, lambda j: j["status"] == "RUNNING")
        t0 = time.monotonic()
        await c.chaos("partition", target=str(jid), seconds=60)
        job = await wait_job(c, jid, lambda j: len(j["attempts"]) > 1, timeout=30)
        waited = time.monotonic() - t0
        first = job["attempts"][0]
        job = await wait_job(c, jid, lambda j: j["status"] in TERMINAL, timeout=60)
    assert first["end_reason"] == "PREEMPTED" and "heartbeat" in first["end_detail"].lower()
    # lost_after counts from the last heartbeat, which came up to one period (0.2 s in the
    # tests) before the partition began
    assert waited >= 3.0 - 0.2, "never declared lost before lost_after"
    assert job["status"] == "SUCCEEDED"


async def test_secrets_never_appear_in_outputs(daemon):
    secret = "hunter2-very-secret-value"
    yaml = (
        "resources: {cpus: 1+}\nsecrets: {API_KEY: null}\n"
        'run: test "$API_KEY" = ' + secret + " && echo key-ok\n"
    )
    async with daemon.client() as c:
        job = await c.launch(yaml, filename="s.yaml", env={"API_KEY": secret})
        job = await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL)
        events = await c.events(job["id"])
        text = await logs(c, job["id"])
        listing = await c.jobs()
    assert job["status"] == "SUCCEEDED" and "key-ok" in text
    assert secret not in repr(events) + repr(listing) + repr(job)
    assert secret not in daemon.log_tail(10**7)
    r = daemon.spotctl("jobs", "queue", "-o", "json", "-v")
    assert secret not in r.stdout


async def test_metrics_report_jobs_and_preemptions(daemon):
    async with daemon.client() as c:
        job = await c.launch(train_yaml(steps=40), filename="m.yaml")
        await wait_job(c, job["id"], lambda j: j["status"] == "RUNNING")
        await c.chaos("preempt", target=str(job["id"]))
        await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL)
        text = await c.request("GET", "/metrics")
    assert 'spotd_jobs{state="SUCCEEDED"} 1.0' in text
    assert "spotd_preemptions_total{" in text
    assert "spotd_recovery_seconds_count 1.0" in text


async def test_daemon_logs_are_json_lines_with_job_and_attempt_ids(daemon):
    import json as _json

    async with daemon.client() as c:
        job = await c.launch(train_yaml(steps=20), filename="j.yaml")
        await wait_job(c, job["id"], lambda j: j["status"] == "RUNNING")
        await c.chaos("preempt", target=str(job["id"]))
        await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL)
    lines = [
        _json.loads(line) for line in daemon.log_tail(10**7).splitlines() if line.startswith("{")
    ]
    mine = [e for e in lines if e.get("job_id") == job["id"]]
    events = {e["event"] for e in mine}
    assert {"placed", "attempt lost", "job finished"} <= events
    assert all("attempt_id" in e for e in mine if e["event"] in ("attempt lost", "job finished"))
