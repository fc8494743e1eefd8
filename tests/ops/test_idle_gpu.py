"""The idle-GPU rule: a pure decision, table-driven; and flag/stop through a real daemon."""

from __future__ import annotations

import pytest

from spotd.config import ConfigError, load_settings
from spotd.telemetry.gpu import GpuSample
from spotd.telemetry.idle import (
    IdleAction,
    IdleGpuPolicy,
    IdleState,
    IdleVerdict,
    idle_gpu_step,
)
from tests.e2e.helpers import wait_job
from tests.ops.conftest import TERMINAL, gpu_yaml, write_nvml

V = IdleVerdict
POLICY = IdleGpuPolicy(minutes=10, threshold_pct=5)


def gpus(*utils: float) -> list[GpuSample]:
    return [
        GpuSample(
            index=i,
            name="A100",
            utilization_pct=u,
            memory_used_mib=0,
            memory_total_mib=80,
            temperature_c=40,
        )
        for i, u in enumerate(utils)
    ]


def run(steps, policy=POLICY):
    """Feed (now, nodes) steps through the rule; the verdicts in order."""
    state, out = IdleState(), []
    for now, nodes in steps:
        verdict, state = idle_gpu_step(nodes, policy, state, now)
        out.append(verdict)
    return out


@pytest.mark.parametrize(
    ("case", "steps", "policy", "verdicts"),
    [
        ("busy GPUs are busy", [(0, [gpus(50, 60)]), (700, [gpus(90)])], POLICY, [V.BUSY, V.BUSY]),
        (
            "idle for the whole window is flagged, once",
            [(0, [gpus(1, 4)]), (599, [gpus(0, 0)]), (600, [gpus(2, 2)]), (900, [gpus(0, 0)])],
            POLICY,
            [V.IDLE, V.IDLE, V.FLAG, V.IDLE],
        ),
        (
            "with action stop, stopped instead",
            [(0, [gpus(0)]), (600, [gpus(0)])],
            IdleGpuPolicy(minutes=10, threshold_pct=5, action=IdleAction.STOP),
            [V.IDLE, V.STOP],
        ),
        (
            "one busy GPU on one node resets the clock",
            [
                (0, [gpus(0), gpus(0)]),
                (300, [gpus(0), gpus(0, 60)]),
                (400, [gpus(0), gpus(0)]),
                (999, [gpus(0), gpus(0)]),
                (1000, [gpus(0), gpus(0)]),
            ],
            POLICY,
            [V.IDLE, V.BUSY, V.IDLE, V.IDLE, V.FLAG],
        ),
        (
            "the threshold itself counts as busy",
            [(0, [gpus(5)]), (600, [gpus(5)])],
            POLICY,
            [V.BUSY, V.BUSY],
        ),
        (
            "a busy stretch after a flag re-arms the rule",
            [
                (0, [gpus(0)]),
                (600, [gpus(0)]),
                (700, [gpus(80)]),
                (800, [gpus(0)]),
                (1400, [gpus(0)]),
            ],
            POLICY,
            [V.IDLE, V.FLAG, V.BUSY, V.IDLE, V.FLAG],
        ),
        (
            "a node with no GPU never makes a job idle",
            [(0, [[]]), (10_000, [[]])],
            POLICY,
            [V.NO_DATA, V.NO_DATA],
        ),
        (
            "a node not reported yet stops the clock",
            [
                (0, [gpus(0), None]),
                (600, [gpus(0), None]),
                (601, [gpus(0), gpus(0)]),
                (1201, [gpus(0), gpus(0)]),
            ],
            POLICY,
            [V.NO_DATA, V.NO_DATA, V.IDLE, V.FLAG],
        ),
        (
            "the rule is off at 0 minutes",
            [(0, [gpus(0)]), (10_000, [gpus(0)])],
            IdleGpuPolicy(minutes=0),
            [V.NO_DATA, V.NO_DATA],
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_idle_gpu_rule(case, steps, policy, verdicts) -> None:
    assert run(steps, policy) == verdicts, case


def test_rule_is_configured_by_the_daemon_not_the_task(tmp_path) -> None:
    s = load_settings(
        tmp_path,
        env={
            "SPOTD_IDLE_GPU_MINUTES": "30",
            "SPOTD_IDLE_GPU_THRESHOLD": "3",
            "SPOTD_IDLE_GPU_ACTION": "stop",
        },
    )
    assert (s.idle_gpu_minutes, s.idle_gpu_threshold, s.idle_gpu_action) == (30, 3, "stop")
    assert load_settings(tmp_path, env={}).idle_gpu_minutes == 0  # off by default
    with pytest.raises(ConfigError, match="flag or stop"):
        load_settings(tmp_path, env={"SPOTD_IDLE_GPU_ACTION": "kill"})


@pytest.mark.parametrize("action", ["flag", "stop"])
async def test_idle_gpus_are_flagged_or_stopped(make_daemon, tmp_path, action) -> None:
    nvml = tmp_path / "nvml.json"
    write_nvml(nvml, {"devices": [{"name": "A100", "util": 90, "mem_used_mib": 100}]})
    d = make_daemon(
        SPOTD_FAKE_NVML=str(nvml),
        SPOTD_IDLE_GPU_MINUTES="0.02",  # 1.2 s
        SPOTD_IDLE_GPU_THRESHOLD="10",
        SPOTD_IDLE_GPU_ACTION=action,
    )
    async with d.client() as c:
        job = await c.launch(gpu_yaml(gpus="A100:1"), filename="g.yaml")
        await wait_job(c, job["id"], lambda j: "util 90%" in j["gpu_summary"], timeout=30)
        await wait_job(c, job["id"], lambda j: j["status"] == "RUNNING", timeout=30)
        write_nvml(nvml, {"devices": [{"name": "A100", "util": 2, "mem_used_mib": 100}]})
        if action == "flag":
            job = await wait_job(c, job["id"], lambda j: "GPUs idle" in j["message"], timeout=30)
            assert job["status"] == "RUNNING"
            assert job["message"].startswith("flagged: GPUs idle: below 10% utilisation")
            await c.cancel(job["id"])
        else:
            job = await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL, timeout=30)
            assert job["status"] == "CANCELLED"
            assert "stopped by the idle-GPU rule" in job["message"]
            assert job["attempts"][-1]["end_reason"] == "CANCELLED"
        events = await c.events(job["id"])
    assert [e for e in events if e["kind"] == "gpu.idle"]
