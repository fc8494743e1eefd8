"""Tasks built in Python are the YAML models: same validation, same YAML, both directions."""

from __future__ import annotations

from pathlib import Path

import pytest

import spotd
from spotd.spec import SpecError, Task, load_task


def _round_trip(task: spotd.Task, tmp_path: Path) -> spotd.Task:
    path = tmp_path / "task.yaml"
    path.write_text(task.to_yaml())
    return spotd.Task.from_yaml(path)


def test_python_task_is_the_spec_model_and_round_trips(tmp_path: Path) -> None:
    task = spotd.Task(
        name="train",
        setup="pip install -r requirements.txt",
        run="python train.py --steps $STEPS\necho done\n",
        envs={"STEPS": 100, "DEBUG": True},
        num_nodes=2,
        workdir=".",
        file_mounts={"/data": "s3://bucket/data", "/cfg": {"source": "./cfg"}},
        job_recovery="FAILOVER",
    )
    assert spotd.Task is Task
    assert task.envs == {"STEPS": "100", "DEBUG": "True"}  # as SkyPilot turns them to strings
    back = _round_trip(task, tmp_path)
    assert back == task
    assert "run: |" in task.to_yaml()  # multi-line commands dump as the block users write


A100, H100 = (
    spotd.Resources(accelerators="A100:8"),
    spotd.Resources(accelerators="H100:8", use_spot=True),
)


@pytest.mark.parametrize(
    ("given", "key", "ordered"),
    [
        ([A100, H100], "ordered", True),
        ((A100, H100), "ordered", True),
        ({A100, H100}, "any_of", False),
        (frozenset({A100, H100}), "any_of", False),
    ],
    ids=["list", "tuple", "set", "frozenset"],
)
def test_list_is_ordered_and_set_is_any_of(given, key: str, ordered: bool, tmp_path) -> None:
    task = spotd.Task(name="t", run="echo").set_resources(given)
    entries = getattr(task.resources, key)
    assert [e.accelerators.yaml_value() for e in entries] == (
        ["A100:8", "H100:8"]  # a set is sorted, so its YAML is stable
    )
    request = task.resource_request()
    assert request.ordered is ordered
    assert [(o.accelerator, o.use_spot) for o in request.options] == [
        ("A100", False),
        ("H100", True),
    ]
    assert f"  {key}:\n" in task.to_yaml()
    assert _round_trip(task, tmp_path) == task


def test_single_resources_and_one_element_choice_are_plain(tmp_path) -> None:
    one = spotd.Task(run="echo").set_resources(A100)
    assert one.resources == A100
    assert spotd.Task(run="echo").set_resources([A100]).resources == A100
    assert spotd.Task(run="echo").set_resources({H100}).resources == H100
    assert _round_trip(one, tmp_path) == one


def test_set_resources_changes_the_task_in_place_like_skypilot() -> None:
    task = spotd.Task(name="t", run="echo")
    returned = task.set_resources(A100)
    assert returned is task and task.resources == A100
    assert task.resources_summary() == "1x A100:8"


def test_resources_are_hashable_and_equal_by_value() -> None:
    a = spotd.Resources(accelerators="A100:8", labels={"team": "ml"})
    b = spotd.Resources(accelerators={"A100": 8}, labels={"team": "ml"})
    assert a == b and hash(a) == hash(b)
    assert len({a, b, H100}) == 2


def test_nested_choice_in_a_choice_is_an_invalid_task() -> None:
    nested = spotd.Resources(any_of=[{"accelerators": "A100:8"}, {"accelerators": "H100:8"}])
    with pytest.raises(spotd.InvalidTaskError) as err:
        spotd.Task(run="echo").set_resources([A100, nested])
    assert "resources.ordered[1]: any_of/ordered cannot be nested" in str(err.value)
    with pytest.raises(spotd.InvalidTaskError, match="give at least one"):
        spotd.Task(run="echo").set_resources([])
    with pytest.raises(TypeError, match=r"a list .ordered. or a set"):
        spotd.Task(run="echo").set_resources("A100:8")  # type: ignore[arg-type]


def test_bad_yaml_file_raises_invalid_task_error_with_key_path_and_line(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nresources:\n  acclerators: A100:1\n  memory: 32GB+\nrun: echo\n")
    with pytest.raises(spotd.InvalidTaskError) as err:
        spotd.Task.from_yaml(bad)
    assert isinstance(err.value, SpecError)  # the very error `spotctl check` prints
    text = str(err.value)
    assert f"{bad}:3: resources.acclerators: unknown key; did you mean `accelerators`?" in text
    assert f"{bad}:4: resources.memory:" in text
    assert [(i.path, i.line) for i in err.value.issues] == [
        ("resources.acclerators", 3),
        ("resources.memory", 4),
    ]


def test_service_section_from_python(tmp_path) -> None:
    task = spotd.Task(
        name="svc",
        run="python -m spotd.serve.stub_replica --port 8081",
        service=spotd.Service(readiness_probe="/health", replicas=2, ports=8081),
    )
    assert task.service is not None and task.service.policy().min_replicas == 2
    assert _round_trip(task, tmp_path) == task
    assert load_task("<x>", text=task.to_yaml()).service_port() == 8081
