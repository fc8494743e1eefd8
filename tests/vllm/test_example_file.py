"""examples/serve_vllm.yaml is a valid service once its two required envs are given (fast
tier: no vLLM needed)."""

from __future__ import annotations

from spotd.spec import check_file, load_task

from .conftest import ROOT

EXAMPLE = ROOT / "examples" / "serve_vllm.yaml"
OVERRIDES = {"VLLM_PYTHON": "/opt/vllm/bin/python", "MODEL": "/tmp/spotd-tiny-model"}


def test_serve_vllm_example_is_valid_with_its_envs() -> None:
    assert check_file(EXAMPLE, env_overrides=OVERRIDES) == []
    t = load_task(EXAMPLE, env_overrides=OVERRIDES)
    assert t.service is not None
    assert t.service.readiness_probe.path == "/v1/models"
    assert t.run is not None and "vllm.entrypoints.openai.api_server" in t.run
    assert "--kv-cache-memory-bytes 67108864" in t.run and "$SPOTD_REPLICA_PORT" in t.run


def test_serve_vllm_example_names_its_missing_envs() -> None:
    issues = check_file(EXAMPLE)
    assert {i.path for i in issues} == {"envs.VLLM_PYTHON", "envs.MODEL"}, issues
