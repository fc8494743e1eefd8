"""Autoscaling on what saturates an LLM server: the replicas' vLLM ``/metrics`` and the LB's
queue, read by the daemon and acted on by ``serve.autoscaler``.

Fast tiers: the Prometheus parser on vLLM bodies (current and old names, several engines,
garbage), the HTTP source against a real server on loopback (the stub replica's own
``/metrics`` under real load, a body over the cap, a server too slow to answer), and the spec
keys. Slow tier: a real daemon, LB and stub replicas where long generations at a request rate
far under ``target_qps_per_replica`` scale the service up on queue depth.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from spotd.control.replica_metrics import (
    FakeMetricsSource,
    HttpMetricsSource,
    MetricsUnavailable,
    ReplicaSample,
    parse_vllm_metrics,
    read_load,
)
from spotd.control.serve_config import autoscale_policy
from spotd.sdk.client_serve import serve_events, serve_up, wait_service
from spotd.serve.autoscaler import ReplicaLoad
from spotd.serve.stub_replica import Stub, make_app
from spotd.spec import SpecError, Task, load_task
from spotd.telemetry.gpu import FAKE_NVML_ENV
from tests.conftest import DaemonProc, kill_instance_groups

from .conftest import SERVE_ENV, cleanup_services, ready

# a vLLM 0.1x body, shortened: histograms and counters around the three gauges
VLLM_BODY = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 7.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 12.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.83
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="m"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 40.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 40.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 3.2
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 1024.0
"""

OLD_VLLM_BODY = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 0.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
"""

TWO_ENGINES = """\
vllm:num_requests_running{engine="0"} 4
vllm:num_requests_running{engine="1"} 3
vllm:num_requests_waiting{engine="0"} 1
vllm:num_requests_waiting{engine="1"} 2
vllm:kv_cache_usage_perc{engine="0"} 0.2
vllm:kv_cache_usage_perc{engine="1"} 0.6
"""


@pytest.mark.parametrize(
    ("body", "sample"),
    [
        (VLLM_BODY, ReplicaSample(running=7, waiting=12, kv_cache_usage=0.83)),
        (OLD_VLLM_BODY, ReplicaSample(running=2, waiting=0, kv_cache_usage=0.5)),
        (TWO_ENGINES, ReplicaSample(running=7, waiting=3, kv_cache_usage=0.4)),
        (
            "vllm:num_requests_running 1\nvllm:num_requests_waiting 0\n",
            ReplicaSample(running=1, waiting=0, kv_cache_usage=None),
        ),
        (
            # a garbage line elsewhere in the body does not hide the gauges
            "some_other_metric{a=b c\n" + OLD_VLLM_BODY,
            ReplicaSample(running=2, waiting=0, kv_cache_usage=0.5),
        ),
    ],
    ids=["vllm", "vllm-before-0.10", "two-engines", "no-kv-gauge", "garbage-elsewhere"],
)
def test_vllm_metrics_are_read(body: str, sample: ReplicaSample) -> None:
    got = parse_vllm_metrics(body)
    assert got.running == sample.running and got.waiting == sample.waiting
    assert got.kv_cache_usage == pytest.approx(sample.kv_cache_usage)


@pytest.mark.parametrize(
    "body",
    [
        "",
        "<html>not metrics</html>",
        "vllm:num_requests_running 3\n",  # waiting missing: not a vLLM-like server
        "vllm:num_requests_running 3\nvllm:num_requests_waiting NaN\n",
        "vllm:num_requests_running -1\nvllm:num_requests_waiting 0\n",
        "vllm:num_requests_running 1\nvllm:num_requests_waiting zero\n",
    ],
    ids=["empty", "html", "no-waiting", "nan", "negative", "not-a-number"],
)
def test_bodies_without_usable_gauges_are_refused(body: str) -> None:
    with pytest.raises(MetricsUnavailable):
        parse_vllm_metrics(body)


async def test_the_load_sums_answering_replicas_and_the_lb_queue() -> None:
    source = FakeMetricsSource(
        {
            "http://a/metrics": VLLM_BODY,
            "http://b/metrics": OLD_VLLM_BODY,
            "http://c/metrics": MetricsUnavailable("refused"),
        }
    )
    urls = {"1": "http://a", "2": "http://b/", "3": "http://c"}
    load = await read_load(source, urls, lb_waiting=5)
    assert load is not None
    assert (load.replicas, load.running, load.waiting) == (2, 9, 12 + 0 + 5)
    assert load.kv_cache_usage == pytest.approx(0.83 + 0.5)
    assert sorted(source.fetched) == ["http://a/metrics", "http://b/metrics", "http://c/metrics"]


async def test_no_replica_answering_is_missing_data_not_zero_load() -> None:
    source = FakeMetricsSource({"http://a/metrics": "nothing here"})
    assert await read_load(source, {"1": "http://a"}, lb_waiting=3) is None
    # no READY replica at all: the LB's queue is the whole load
    assert await read_load(source, {}, lb_waiting=3) == ReplicaLoad(replicas=0, waiting=3)


@pytest.fixture
async def stub_url() -> AsyncIterator[tuple[str, Stub]]:
    stub = Stub(
        replica_id="r1", model="m", tokens=4, latency_ms=0, token_delay_ms=50, max_running=2
    )
    runner = web.AppRunner(make_app(stub))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", stub
    finally:
        await runner.cleanup()


async def test_the_stub_replica_reports_its_real_queue(stub_url: tuple[str, Stub]) -> None:
    """5 requests at a stub that runs 2 at a time: 2 running, 3 waiting, KV cache full."""
    url, _ = stub_url
    async with aiohttp.ClientSession() as s:
        source = HttpMetricsSource(lambda: s)
        body = {"prompt": "x", "max_tokens": 8}
        posts = [asyncio.create_task(s.post(f"{url}/v1/completions", json=body)) for _ in range(5)]
        seen = None
        for _ in range(100):  # until all 5 arrived (bounded: 100 × 20 ms)
            seen = parse_vllm_metrics(await source.fetch(f"{url}/metrics"))
            if seen.running + seen.waiting == 5:
                break
            await asyncio.sleep(0.02)
        for r in await asyncio.gather(*posts):
            assert r.status == 200
            r.release()
        after = parse_vllm_metrics(await source.fetch(f"{url}/metrics"))
    assert seen == ReplicaSample(running=2, waiting=3, kv_cache_usage=1.0)
    assert after == ReplicaSample(running=0, waiting=0, kv_cache_usage=0.0)


async def test_the_http_source_bounds_body_and_time() -> None:
    async def huge(_: web.Request) -> web.Response:
        return web.Response(text="#" * 4096)

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="")

    async def missing(_: web.Request) -> web.Response:
        return web.Response(status=404)

    async def long(_: web.Request) -> web.StreamResponse:
        # a real vLLM body is ~100 KB of histograms, sent in pieces: the gauges come last
        resp = web.StreamResponse()
        resp.content_type = "text/plain"
        await resp.prepare(_)
        for i in range(300):
            await resp.write(f'vllm:some_histogram_bucket{{le="{i}"}} {i}.0\n'.encode() * 20)
        await resp.write(OLD_VLLM_BODY.encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/huge/metrics", huge)
    app.router.add_get("/slow/metrics", slow)
    app.router.add_get("/missing/metrics", missing)
    app.router.add_get("/long/metrics", long)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            source = HttpMetricsSource(lambda: s, timeout=0.3, max_bytes=1024)
            with pytest.raises(MetricsUnavailable, match="over 1024 bytes"):
                await source.fetch(f"{base}/huge/metrics")
            with pytest.raises(MetricsUnavailable, match="Timeout"):
                await source.fetch(f"{base}/slow/metrics")
            with pytest.raises(MetricsUnavailable, match="HTTP 404"):
                await source.fetch(f"{base}/missing/metrics")
            whole = HttpMetricsSource(lambda: s, timeout=5)
            body = await whole.fetch(f"{base}/long/metrics")
            assert len(body) > 200_000
            assert parse_vllm_metrics(body) == ReplicaSample(2, 0, 0.5)
            with pytest.raises(MetricsUnavailable, match="over 1024 bytes"):
                await source.fetch(f"{base}/long/metrics")  # chunked: no length to refuse on
            with pytest.raises(MetricsUnavailable):
                await source.fetch("http://127.0.0.1:1/metrics")  # refused
            # one slow replica is left out; the others still make the load
            load = await read_load(source, {"1": f"{base}/slow", "2": f"{base}/huge"}, lb_waiting=0)
            assert load is None
    finally:
        await runner.cleanup()


# -- the spec keys ----------------------------------------------------------------------------


def parse_task_text(policy: str) -> Task:
    text = f"run: x\nservice:\n  readiness_probe: /health\n  replica_policy:\n{policy}"
    return load_task("svc.yaml", text=text)


def test_queue_and_kv_targets_reach_the_autoscaler() -> None:
    task = parse_task_text(
        "    min_replicas: 1\n    max_replicas: 4\n    target_queue_per_replica: 4\n"
        "    target_kv_cache_usage: 0.8\n"
    )
    assert task.service is not None
    policy = autoscale_policy(task.service)
    assert (policy.target_queue_per_replica, policy.target_kv_cache_usage) == (4, 0.8)
    assert policy.target_qps_per_replica is None
    assert policy.needs_replica_metrics()


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("    min_replicas: 1\n    max_replicas: 4\n", "needs target_qps_per_replica (or"),
        (
            "    max_replicas: 4\n    target_queue_per_replica: 0\n",
            "target_queue_per_replica: must be > 0.0, got 0",
        ),
        (
            "    max_replicas: 4\n    target_queue_per_replica: .nan\n",
            "target_queue_per_replica: expected a number, got nan",
        ),
        (
            "    max_replicas: 4\n    target_kv_cache_usage: 80\n",
            "target_kv_cache_usage: must be <= 1.0, got 80",
        ),
        (
            "    max_replicas: 4\n    target_gpu_utilization: 150\n",
            "target_gpu_utilization: must be <= 100.0, got 150",
        ),
        (
            "    max_replicas: 4\n    target_queue_per_replica: lots\n",
            "target_queue_per_replica: expected a number, got 'lots'",
        ),
    ],
    ids=["no-target", "zero-queue", "nan-queue", "kv-as-percent", "gpu-over-100", "not-a-number"],
)
def test_bad_targets_are_spec_errors(policy: str, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_task_text(policy)


# -- a real daemon, LB and stub replicas ------------------------------------------------------

# each replica runs 2 requests at a time; a request generates 20 tokens at 100 ms: 2 s
LONG_GENERATIONS = """
name: llm
resources:
  cpus: 1+
  use_spot: true
service:
  readiness_probe:
    path: /health
    initial_delay_seconds: 30
    timeout_seconds: 2
  replica_policy:
    min_replicas: 1
    max_replicas: 3
    target_qps_per_replica: 4
    target_queue_per_replica: 1
    upscale_delay_seconds: 1
    downscale_delay_seconds: 600
run: |
  exec python -m spotd.serve.stub_replica --port $SPOTD_REPLICA_PORT --id r$SPOTD_REPLICA_ID \\
    --token-delay-ms 100 --max-running 2 --grace 20
"""


def _gauge(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.slow
async def test_long_generations_at_low_qps_scale_up_on_queue_depth(serve_daemon, load):
    """2 requests/s of 2-second generations: one replica (2 at a time) serves 1/s, so its
    queue grows, while the LB's rate stays under half of ``target_qps_per_replica`` (QPS alone
    asks for 1 replica all along). The queue target scales the service up, says so in its
    event and on the daemon's /metrics, and every request is answered."""
    async with serve_daemon.client() as c:
        await serve_up(c, LONG_GENERATIONS, filename="llm.yaml")
        svc = await wait_service(c, "llm", ready(1), timeout=40, what="1 READY")
        assert svc["target"] == 1
        ld = load(
            svc["endpoint"],
            "--concurrency",
            "16",
            "--schedule",
            "2:14",
            "--tokens",
            "20",
            "--max-seconds",
            "40",
            "--max-requests",
            "40",
        )
        up = await wait_service(
            c,
            "llm",
            lambda s: s["target"] >= 2 and ready(s["target"])(s),
            timeout=30,
            what="scaled up on the queue",
        )
        daemon_metrics = await c.request("GET", "/metrics")
        await ld.wait_done(24, timeout=45)  # the schedule sends 28: let the queue be served
        result = ld.finish(timeout=60)
        events = [e["message"] for e in await serve_events(c, "llm")]
    scaled = [m for m in events if m.startswith("autoscaler: target 1 →")]
    assert scaled, events
    # the event names the signal that asked, and what QPS alone asked for (2 requests/s
    # counted as they arrive, under the target of 4: 1 replica, or 0 before the first second)
    assert "on queue_per_replica" in scaled[0], scaled
    assert re.search(r"qps_per_replica asks [01]\b", scaled[0]), scaled
    qps = _gauge(daemon_metrics, "spotd_service_qps", service="llm")
    assert qps is not None and qps < 4
    wanted_qps = _gauge(
        daemon_metrics,
        "spotd_service_autoscaler_wanted_replicas",
        service="llm",
        signal="qps_per_replica",
    )
    assert wanted_qps is not None and wanted_qps <= 1
    assert result["failed"] == 0, result["errors"]
    assert result["ok"] >= 24
    assert len(result["by_replica"]) >= 2, "the new replicas took part of the queue"
    assert up["target"] in (2, 3)


GPU_BOUND = """
name: gpu
resources:
  cpus: 1+
service:
  readiness_probe: /health
  replica_policy:
    min_replicas: 1
    max_replicas: 2
    target_gpu_utilization: 60
    upscale_delay_seconds: 1
    downscale_delay_seconds: 600
run: exec python -m spotd.serve.stub_replica --port $SPOTD_REPLICA_PORT --grace 5
"""


@pytest.fixture
def gpu_daemon(tmp_path: Path) -> Iterator[tuple[DaemonProc, Path]]:
    """A daemon whose replicas' agents read a fake NVML: one GPU at 95 % busy."""
    nvml = tmp_path / "nvml.json"
    nvml.write_text(json.dumps({"devices": [{"name": "NVIDIA L4", "util": 95}]}))
    home = Path(f"/tmp/spotd-g{os.getpid()}-{time.monotonic_ns() % 10**9}")
    d = DaemonProc(home, extra_env={**SERVE_ENV, FAKE_NVML_ENV: str(nvml)})
    d.start()
    try:
        yield d, nvml
    finally:
        d.stop()
        cleanup_services(home)
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
async def test_gpu_utilisation_from_the_agents_is_a_signal(gpu_daemon) -> None:
    """The replicas' agents report NVML samples with their heartbeats; a policy that asks
    for ``target_gpu_utilization`` scales on them (95 % on one replica, target 60 % → 2)."""
    d, _ = gpu_daemon
    async with d.client() as c:
        await serve_up(c, GPU_BOUND, filename="gpu.yaml")
        up = await wait_service(
            c, "gpu", lambda s: s["target"] == 2 and ready(2)(s), timeout=40, what="2 READY"
        )
        events = [e["message"] for e in await serve_events(c, "gpu")]
        metrics = await c.request("GET", "/metrics")
    assert any(m.startswith("autoscaler: target 1 → 2") for m in events), events
    asked = _gauge(
        metrics, "spotd_service_autoscaler_wanted_replicas", service="gpu", signal="gpu_utilization"
    )
    # two replicas at 95 % each ask for ceil(190 / 60) = 4 (bounded to 2 by max_replicas)
    assert asked in (2, 4)
    assert up["status"] == "READY"
