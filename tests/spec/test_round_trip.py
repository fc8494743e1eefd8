"""A parsed task survives every way spotd stores or shows it, and secrets stay hidden."""

from __future__ import annotations

import json

import pytest

from spotd.spec import REDACTED, Task, load_task, load_tasks
from tests.spec.conftest import DATA, EXAMPLE_OVERRIDES, task_of

ALL_TASKS = [
    pytest.param(task, id=f"{path.stem}-{i}")
    for path in sorted(DATA.glob("*.yaml"))
    for i, task in enumerate(load_tasks(path, env_overrides=EXAMPLE_OVERRIDES))
]
INLINE = [
    "run: x\nresources: {cpus: 4, memory: 0.5, ports: [80, '9000-9001'], labels: {team: 7}}\n",
    "run: x\nresources: {cloud: AWS, region: us-east-1, zone: us-east-1a, image_id: ami-1}\n",
    "run: x\nresources: {image_id: {us-east-1: ami-1, us-west-2: ami-2}}\n",
    (
        "run: x\njob_recovery: {deadline: '2030-01-02T03:04:05+00:00', strategy: deadline,"
        " expected_duration: 90m}\n"
    ),
    "run: x\njob_recovery: {deadline: 2030-01-02, give_up_after: 0}\n",
    "run: x\nservice: {readiness_probe: {path: /h, post_data: {q: 1}}, replicas: 3}\n",
    "run: x\nfile_mounts: {~/data: {source: s3://b/p, store: S3}}\n",
]


@pytest.mark.parametrize("task", ALL_TASKS + [pytest.param(task_of(t)) for t in INLINE])
def test_every_dump_loads_back_equal(task: Task) -> None:
    assert load_task("again.yaml", text=task.to_yaml()) == task
    assert Task.model_validate(json.loads(task.model_dump_json())) == task  # what the store keeps
    assert Task.model_validate(task.model_dump()) == task
    assert Task.model_validate(task.model_dump(by_alias=True)) == task


def test_to_yaml_writes_the_forms_people_write() -> None:
    t = load_task(DATA / "any_of_infra.yaml")
    text = t.to_yaml()
    assert "give_up_after: 30m" in text and "expected_duration: 4h" in text
    assert "deadline: 12h" in text and "accelerators: A100:8" in text
    assert "num_nodes" not in text  # defaults are left out
    ft = load_task(DATA / "finetune.yaml", env_overrides=EXAMPLE_OVERRIDES).to_yaml()
    assert "/data: s3://my-datasets/alpaca" in ft and "run: |" in ft and "cpus: 32+" in ft


def test_secrets_are_hidden_from_repr_redacted_and_redacted_yaml() -> None:
    t = load_task(DATA / "finetune.yaml", env_overrides=EXAMPLE_OVERRIDES)
    secret = EXAMPLE_OVERRIDES["HF_TOKEN"]
    assert secret not in repr(t) and secret not in str(t)
    red = t.redacted()
    assert red["secrets"] == {"HF_TOKEN": REDACTED}
    assert secret not in json.dumps(red)  # JSON-able, and clean
    assert red["envs"]["MODEL_NAME"] == "meta-llama/Llama-3.1-8B"  # envs are not secrets
    assert secret not in t.to_yaml(redact=True)
    # the full dump keeps the value: it is what the agents receive
    assert secret in t.model_dump_json() and secret in t.to_yaml()


def test_tasks_are_immutable() -> None:
    t = task_of("run: x\n")
    with pytest.raises(ValueError, match="frozen"):
        t.num_nodes = 3  # type: ignore[misc]
    assert t.model_copy(update={"workdir": "/abs"}).workdir == "/abs"
