"""Helpers for the task-spec tests: example files and a way to load inline YAML."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from spotd.spec import SpecError, SpecIssue, Task, load_task

DATA = Path(__file__).resolve().parent / "data"

# what the example files need at launch (they declare these as null)
EXAMPLE_OVERRIDES = {"WANDB_PROJECT": "ft-runs", "HF_TOKEN": "hf_very_secret_token"}


def task_of(yaml_text: str, **overrides: str) -> Task:
    return load_task("t.yaml", text=textwrap.dedent(yaml_text), env_overrides=overrides)


def issues_of(yaml_text: str, **overrides: str) -> list[SpecIssue]:
    with pytest.raises(SpecError) as info:
        load_task("t.yaml", text=textwrap.dedent(yaml_text), env_overrides=overrides)
    return info.value.issues
