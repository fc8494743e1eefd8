"""Realistic SkyPilot task files load into the tasks a user would expect."""

from __future__ import annotations

import pytest

from spotd.spec import LoadBalancingPolicy, check_file, load_task, load_tasks
from spotd.types import RecoveryStrategy
from tests.spec.conftest import DATA, EXAMPLE_OVERRIDES


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.yaml")))
def test_every_example_file_is_valid(name: str) -> None:
    assert check_file(DATA / name, env_overrides=EXAMPLE_OVERRIDES) == []


def test_minimal_job_gets_the_defaults() -> None:
    t = load_task(DATA / "minimal.yaml")
    assert t.run and "hello from spotd" in t.run
    assert (t.name, t.num_nodes, t.setup, t.service) == (None, 1, None, None)
    assert t.job_recovery.strategy is RecoveryStrategy.EAGER_NEXT_REGION
    assert t.job_recovery.give_up_after_seconds == 3600
    assert t.job_recovery.max_restarts_on_errors == 0
    assert t.resources_summary() == "1x cpu"


def test_llm_finetune() -> None:
    t = load_task(DATA / "finetune.yaml", env_overrides=EXAMPLE_OVERRIDES)
    assert t.name == "llama-finetune" and t.num_nodes == 2
    assert t.resources.use_spot is True and t.resources.disk_size == 512
    assert str(t.resources.accelerators) == "{A100:8, H100:8}"
    assert t.envs == {
        "MODEL_NAME": "meta-llama/Llama-3.1-8B",
        "EPOCHS": "3",
        "LR": "2e-05",
        "WANDB_PROJECT": "ft-runs",
    }
    assert t.secrets == {"HF_TOKEN": "hf_very_secret_token"}
    assert t.secret_names == {"HF_TOKEN"}
    assert t.environment()["HF_TOKEN"] == "hf_very_secret_token"
    assert {k: (m.source, m.is_s3) for k, m in t.file_mounts.items()} == {
        "/data": ("s3://my-datasets/alpaca", True),
        "/configs": ("./configs", False),
        "/checkpoints": ("s3://my-ckpts/llama-ft", True),
    }
    assert t.job_recovery.strategy is RecoveryStrategy.EAGER_NEXT_REGION
    assert t.job_recovery.max_restarts_on_errors == 3
    assert t.job_recovery.recover_on_exit_codes == [33, 34]
    assert t.setup and t.setup.endswith('echo "setup done"\n')
    assert t.resources_summary() == "2x {A100:8, H100:8} cpus=32+ mem=4x [spot]"


def test_vllm_service() -> None:
    t = load_task(DATA / "vllm_serve.yaml")
    assert t.service is not None
    probe = t.service.readiness_probe
    assert (probe.path, probe.initial_delay_seconds, probe.timeout_seconds) == (
        "/v1/models",
        600,
        15,
    )
    assert probe.headers == {"Authorization": "Bearer dummy"}
    policy = t.service.policy()
    assert (policy.min_replicas, policy.max_replicas, policy.target_qps_per_replica) == (2, 6, 2.5)
    assert (policy.upscale_delay_seconds, policy.downscale_delay_seconds) == (300, 1200)
    assert policy.base_ondemand_fallback_replicas == 1 and policy.dynamic_ondemand_fallback
    assert t.service.load_balancing_policy is LoadBalancingPolicy.POWER_OF_TWO
    assert t.service_port() == 8000
    assert t.resources_summary() == "1x [L4:1, A10G:1, T4:1] [spot]"


def test_any_of_with_infra() -> None:
    t = load_task(DATA / "any_of_infra.yaml")
    rec = t.job_recovery
    assert rec.strategy is RecoveryStrategy.FAILOVER  # written `failover`
    assert (rec.give_up_after_seconds, rec.expected_duration_seconds) == (1800, 4 * 3600)
    assert rec.resolve_deadline(1_000.0) == 1_000.0 + 12 * 3600
    assert t.resources_summary() == (
        "1x aws/us-east-1:A100:8 | aws/us-west-2/us-west-2b:A100:8 | "
        "k8s/gke_proj_us-central1_gpu-cluster:A100:8 | local/local-east:T4:1 [spot]"
    )


def test_pipeline_file_gives_one_task_per_document_and_skips_the_header() -> None:
    tasks = load_tasks(DATA / "pipeline.yaml")
    assert [t.name for t in tasks] == ["preprocess", "train"]
    # `job_recovery` under `resources` (older SkyPilot) is the task's job_recovery
    assert tasks[1].job_recovery.strategy is RecoveryStrategy.FAILOVER
    assert tasks[0].job_recovery.strategy is RecoveryStrategy.EAGER_NEXT_REGION


def test_spotd_example_job_and_e2e_helper_yaml_load() -> None:
    # the shapes other parts of spotd already write
    from tests.e2e.helpers import train_yaml

    t = load_task("train.yaml", text=train_yaml(extra_envs="  FAIL_AT_STEP: 3"))
    assert t.envs["STEP_SECONDS"] == "0.05" and t.envs["FAIL_AT_STEP"] == "3"
    assert t.resources_summary() == "1x cpus=1+ [spot]"
