"""A service's client API keys are the load balancer's to check: its replicas never get the
variable ``api_keys_env`` names, while every other env and secret reaches them."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotd.config import load_settings
from spotd.control.agent_config import AgentFiles, AgentIdentity, build_agent_config
from spotd.providers.local import LocalProvider
from spotd.spec import load_task

SERVICE = """\
name: svc
envs: {MODEL: tiny}
secrets: {HF_TOKEN: hf-secret, API_KEYS: k1}
run: python -m http.server 8080
service:
  readiness_probe: /
  replicas: 1
{keys}
"""


@pytest.mark.parametrize(
    ("keys", "reaches"),
    [
        ("  api_keys_env: API_KEYS", {"MODEL", "HF_TOKEN"}),
        ("", {"MODEL", "HF_TOKEN", "API_KEYS"}),  # no keys at the LB: an ordinary secret
    ],
)
def test_api_keys_do_not_reach_replicas(tmp_path: Path, keys: str, reaches: set[str]) -> None:
    settings = load_settings(tmp_path, env={})
    task = load_task("svc.yaml", text=SERVICE.replace("{keys}", keys))
    cfg = build_agent_config(
        settings=settings,
        provider=LocalProvider(settings.local_dir, []),
        task=task,
        who=AgentIdentity(instance_key="s1-r1", attempt_id="s1-r1", job_id=0, task_id="s1"),
        token="t",
        files=AgentFiles(checkpoint_store=str(tmp_path / "ckpt")),
    )
    assert {"MODEL", "HF_TOKEN", "API_KEYS"} & set(cfg.envs) == reaches
