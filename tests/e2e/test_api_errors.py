"""Bad input gets a 4xx with a message and loses nothing."""

from __future__ import annotations

import aiohttp
import pytest

from tests.e2e.helpers import train_yaml, wait_job


async def _raw(daemon, method: str, path: str, **kw):
    conn = aiohttp.UnixConnector(path=str(daemon.socket))
    async with (
        aiohttp.ClientSession(connector=conn) as s,
        s.request(method, "http://spotd" + path, **kw) as r,
    ):
        return r.status, await r.json()


@pytest.mark.parametrize(
    ("method", "path", "kw", "status", "phrase"),
    [
        ("POST", "/v1/jobs", {"data": b"{not json"}, 400, "not valid JSON"),
        ("POST", "/v1/jobs", {"json": [1, 2]}, 400, "JSON object"),
        ("POST", "/v1/jobs", {"json": {"yaml": "run: x", "bogus": 1}}, 400, "invalid request"),
        ("POST", "/v1/jobs", {"json": {"yaml": "run: [unclosed"}}, 400, "invalid task YAML"),
        (
            "POST",
            "/v1/jobs",
            {"json": {"yaml": "resources: {acclerators: A100}\nrun: x"}},
            400,
            "invalid task YAML",
        ),
        (
            "POST",
            "/v1/jobs",
            {"json": {"yaml": "resources: {accelerators: A100:16}\nrun: x"}},
            400,
            "no feasible placement",
        ),
        ("POST", "/v1/jobs", {"json": {"yaml": "name: x"}}, 400, "run"),
        ("GET", "/v1/jobs/12345", {}, 404, "no job"),
        ("GET", "/v1/jobs/abc", {}, 400, "number"),
        ("POST", "/v1/jobs/999/cancel", {}, 404, "no job"),
        ("GET", "/v1/jobs?status=NOPE", {}, 400, "unknown status"),
        ("POST", "/v1/chaos/preempt", {"json": {"target": "nope"}}, 404, "no live instance"),
        ("POST", "/v1/chaos/stockout", {"json": {"target": "mars", "seconds": 5}}, 404, "mars"),
        ("POST", "/v1/chaos/stockout", {"json": {"target": "x", "seconds": -1}}, 400, "invalid"),
        (
            "POST",
            "/v1/chaos/stockout",
            {"json": {"target": "local-east", "seconds": 5, "market": "reserved"}},
            400,
            "market",
        ),
        (
            "POST",
            "/agent/v1/heartbeat",
            {"json": {"key": "j1-a1-n0", "phase": "run", "log_offset": 0}},
            401,
            "token",
        ),
        (
            "POST",
            "/v1/services/nope/lb-events",
            {"json": {"event": "ejected", "replica_id": "1"}},
            404,
            "no service",
        ),
        (
            "POST",
            "/v1/services/nope/lb-events",
            {"json": {"event": "exploded", "replica_id": "1"}},
            400,
            "invalid",
        ),
        ("GET", "/v1/nope", {}, 404, "Not Found"),
    ],
)
async def test_bad_requests_get_4xx_json(daemon, method, path, kw, status, phrase):
    got, body = await _raw(daemon, method, path, **kw)
    assert got == status, body
    assert phrase.lower() in (body["error"] + str(body.get("details", ""))).lower()


async def test_yaml_error_names_key_and_line(daemon):
    got, body = await _raw(
        daemon,
        "POST",
        "/v1/jobs",
        json={"yaml": "name: x\nresources:\n  acclerators: A100:1\nrun: echo\n"},
    )
    assert got == 400
    [issue] = body["details"]
    assert issue["line"] == 3 and "accelerators" in issue["message"]


async def test_daemon_state_survives_bad_requests(daemon):
    async with daemon.client() as c:
        job = await c.launch(train_yaml(steps=3, step_seconds=0), filename="ok.yaml")
        for _ in range(5):
            await _raw(daemon, "POST", "/v1/jobs", data=b"\x00\xff")
        job = await wait_job(c, job["id"], lambda j: j["status"] == "SUCCEEDED")
        assert len(await c.jobs()) == 1


def test_check_command_reports_every_error(daemon, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nresources:\n  acclerators: A100:1\n  memory: 32GB+\nrun: echo\n")
    r = daemon.spotctl("check", str(bad))
    assert r.returncode != 0
    assert "did you mean" in r.stderr and ":3" in r.stderr
    good = daemon.spotctl("check", "examples/train.yaml")
    assert good.returncode == 0, good.stderr


def test_dry_run_prints_candidates_and_impossible_request_fails_before_launch(daemon, tmp_path):
    r = daemon.spotctl("jobs", "launch", "examples/train.yaml", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "chosen" in r.stdout and "#2" in r.stdout
    imp = tmp_path / "imp.yaml"
    imp.write_text("resources:\n  accelerators: A100:16\nrun: echo\n")
    r = daemon.spotctl("jobs", "launch", str(imp), "-y", "-d")
    assert r.returncode != 0 and "A100" in r.stderr
    assert daemon.spotctl("jobs", "queue", "-o", "json").stdout.strip() == "[]"
