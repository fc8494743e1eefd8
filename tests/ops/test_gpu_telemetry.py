"""GPU telemetry: the NVML adapter on a fake NVML, and agents' samples through a real daemon."""

from __future__ import annotations

import json

import pytest

from spotd.telemetry.gpu import FakeNvml, GpuReader, GpuSample, default_nvml, read_gpus, summarize
from tests.e2e.helpers import wait_job
from tests.ops.conftest import gpu_yaml, write_nvml

A100 = {
    "name": "NVIDIA A100-SXM4-80GB",
    "util": 87,
    "mem_used_mib": 30822.4,
    "mem_total_mib": 81920,
    "temp": 61,
}


def test_reader_turns_nvml_devices_into_samples() -> None:
    fake = FakeNvml([A100, {**A100, "util": 13, "mem_used_mib": 1024, "temp": 48}])
    samples = read_gpus(fake)
    assert samples == [
        GpuSample(
            index=0,
            name="NVIDIA A100-SXM4-80GB",
            utilization_pct=87.0,
            memory_used_mib=30822.4,
            memory_total_mib=81920.0,
            temperature_c=61.0,
        ),
        GpuSample(
            index=1,
            name="NVIDIA A100-SXM4-80GB",
            utilization_pct=13.0,
            memory_used_mib=1024.0,
            memory_total_mib=81920.0,
            temperature_c=48.0,
        ),
    ]
    assert summarize(samples) == "2x A100-SXM4-80GB util 50% mem 31.1/160.0 GiB 61°C"
    assert [GpuSample.from_json(s.to_json()) for s in samples] == samples


def test_no_gpu_is_an_empty_list_not_an_error() -> None:
    fake = FakeNvml(error="NVML Shared Library Not Found")
    reader = GpuReader(fake)
    assert reader.read() == [] and reader.read() == []
    assert reader.error == "no GPU: NVML Shared Library Not Found"
    assert fake.init_calls == 1  # a machine without a driver is not asked again every heartbeat
    assert summarize([]) == "no GPU"
    assert summarize(None) == "-"  # not reported yet


def test_real_pynvml_without_a_gpu_reads_as_no_gpu() -> None:
    pynvml = pytest.importorskip("pynvml")
    reader = GpuReader(pynvml)  # this machine has no NVIDIA driver
    assert reader.read() == []
    assert reader.error is not None and reader.error.startswith("no GPU")


def test_a_sensorless_gpu_keeps_the_rest_of_its_sample() -> None:
    [s] = read_gpus(FakeNvml([{"name": "vGPU", "util": 5, "mem_used_mib": 1, "mem_total_mib": 2}]))
    assert (s.utilization_pct, s.temperature_c) == (5.0, 0.0)


def test_a_device_failing_mid_read_is_no_gpu(tmp_path) -> None:
    path = tmp_path / "nvml.json"
    write_nvml(path, {"devices": [A100]})
    reader = GpuReader(default_nvml({"SPOTD_FAKE_NVML": str(path)}))
    assert len(reader.read()) == 1
    write_nvml(path, {"error": "GPU is lost"})  # the driver went away under a running agent
    assert reader.read() == [] and reader.error == "no GPU: GPU is lost"
    write_nvml(path, {"devices": [A100, A100]})
    assert len(reader.read()) == 2


def test_bad_samples_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="utilization_pct"):
        GpuSample.from_json({"index": 0, "memory_used_mib": 1, "memory_total_mib": 2})


async def test_agent_reports_gpus_and_queue_shows_them(make_daemon, tmp_path) -> None:
    nvml = tmp_path / "nvml.json"
    write_nvml(nvml, {"devices": [A100, {**A100, "util": 13, "temp": 55}]})
    d = make_daemon(SPOTD_FAKE_NVML=str(nvml))
    async with d.client() as c:
        job = await c.launch(gpu_yaml(gpus="A100:1"), filename="g.yaml")
        job = await wait_job(
            c,
            job["id"],
            lambda j: j["gpu_summary"].startswith("2x"),
            timeout=30,
            what="GPU samples",
        )
        [node] = job["gpus"]
        assert node["node"] == 0 and node["at"] is not None
        assert [g["utilization_pct"] for g in node["gpus"]] == [87.0, 13.0]
        assert node["gpus"][0]["memory_total_mib"] == 81920.0
        write_nvml(nvml, {"devices": [{**A100, "util": 99}]})  # samples follow the GPUs
        await wait_job(c, job["id"], lambda j: "util 99%" in j["gpu_summary"], timeout=20)
        r = d.spotctl("jobs", "queue", "-v")
        assert r.returncode == 0, r.stderr
        assert (
            "GPUS" in r.stdout and "1x A100-SXM4-80GB util 99% mem 30.1/80.0 GiB 61°C" in r.stdout
        )
        await c.cancel(job["id"])


async def test_no_gpu_shows_as_no_gpu_and_the_job_runs(make_daemon) -> None:
    d = make_daemon()  # the real pynvml: this machine has no NVIDIA driver
    async with d.client() as c:
        job = await c.launch("resources: {cpus: 1+}\nrun: sleep 1; echo done\n", filename="c.yaml")
        job = await wait_job(c, job["id"], lambda j: j["status"] == "SUCCEEDED", timeout=30)
    assert job["gpu_summary"] == "no GPU" and job["gpus"][0]["gpus"] == []
    r = d.spotctl("jobs", "queue", "-v", "-o", "json")
    assert json.loads(r.stdout)[0]["gpu_summary"] == "no GPU"
    r = d.spotctl("jobs", "queue", "-v")
    assert "no GPU" in r.stdout and "error" not in r.stdout.lower()
