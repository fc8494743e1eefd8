"""How `resources:` becomes the optimizer's ResourceRequest (SkyPilot's semantics)."""

from __future__ import annotations

from typing import Any

import pytest

from spotd.spec import Resources
from spotd.spec.resources import summary as summary_of
from spotd.types import ResourceOption, ResourceRequest
from tests.spec.conftest import task_of


def _req(resources: str) -> ResourceRequest:
    return task_of(f"run: echo\nresources:\n{resources}").resource_request()


def _brief(o: ResourceOption) -> tuple[Any, ...]:
    return (o.provider, o.region, o.zone, o.accelerator, o.accelerator_count, o.use_spot)


@pytest.mark.parametrize(
    ("resources", "ordered", "options"),
    [
        pytest.param("  accelerators: A100:8\n", False, [(None, None, None, "A100", 8, False)],
                     id="one-accelerator"),
        pytest.param(
            "  accelerators: {A100:8, H100:8}\n  use_spot: true\n", False,
            [(None, None, None, "A100", 8, True), (None, None, None, "H100", 8, True)],
            id="mapping-is-any-of",
        ),
        pytest.param(
            "  accelerators: [H100:8, A100:8]\n", True,
            [(None, None, None, "H100", 8, False), (None, None, None, "A100", 8, False)],
            id="list-is-ordered",
        ),
        pytest.param(
            "  infra: aws/us-east-1/us-east-1a\n  accelerators: T4:0.5\n", False,
            [("aws", "us-east-1", "us-east-1a", "T4", 0.5, False)], id="infra-and-fraction",
        ),
        pytest.param(
            "  cloud: Kubernetes\n  region: ctx\n", False, [("k8s", "ctx", None, None, 0, False)],
            id="cloud-name-normalised",
        ),
        pytest.param(
            "  accelerators: A100:8\n  use_spot: true\n  any_of:\n"
            "    - infra: aws/us-east-1\n    - infra: slurm/gpu\n      use_spot: false\n",
            False,
            [("aws", "us-east-1", None, "A100", 8, True), ("slurm", "gpu", None, "A100", 8, False)],
            id="any-of-entries-over-top-level",
        ),
        pytest.param(
            "  cloud: aws\n  region: us-east-1\n  ordered:\n    - region: us-west-2\n"
            "    - {}\n    - cloud: local\n",
            True,
            [("aws", "us-west-2", None, None, 0, False), ("aws", "us-east-1", None, None, 0, False),
             ("local", None, None, None, 0, False)],
            id="ordered-location-overrides",
        ),
        pytest.param(
            "  infra: aws/us-east-1\n  any_of:\n    - accelerators: {A100: 8, H100: 8}\n"
            "    - accelerators: L4\n      zone: us-east-1b\n",
            False,
            [("aws", "us-east-1", None, "A100", 8, False),
             ("aws", "us-east-1", None, "H100", 8, False),
             ("aws", "us-east-1", "us-east-1b", "L4", 1, False)],
            id="accelerator-choice-inside-an-entry",
        ),
    ],
)  # fmt: skip
def test_options(resources: str, ordered: bool, options: list[tuple[Any, ...]]) -> None:
    req = _req(resources)
    assert req.ordered is ordered
    assert [_brief(o) for o in req.options] == options


@pytest.mark.parametrize(
    ("resources", "cpus", "cpus_plus", "memory_gb", "memory_plus", "per_cpu"),
    [
        ("  cpus: 4+\n", 4, True, None, True, None),
        ("  cpus: 4\n", 4, False, None, True, None),
        ("  cpus: 2\n  memory: 4x\n", 2, False, None, True, 4),
        ("  memory: 32+\n", None, True, 32, True, None),
        ("  memory: 16\n", None, True, 16, False, None),
    ],
)
def test_cpus_and_memory(
    resources: str,
    cpus: float | None,
    cpus_plus: bool,
    memory_gb: float | None,
    memory_plus: bool,
    per_cpu: float | None,
) -> None:
    [o] = _req(resources).options
    assert (o.cpus, o.cpus_plus, o.memory_gb, o.memory_plus, o.memory_per_cpu) == (
        cpus, cpus_plus, memory_gb, memory_plus, per_cpu,
    )  # fmt: skip


def test_any_of_entry_overrides_leaf_fields_and_keeps_the_rest() -> None:
    req = _req(
        "  cpus: 8+\n  memory: 64+\n  instance_type: p4d.24xlarge\n  max_hourly_cost: 40\n"
        "  any_of:\n    - cpus: 16+\n    - instance_type: p5.48xlarge\n"
    )
    first, second = req.options
    assert (first.cpus, first.memory_gb, first.instance_type) == (16, 64, "p4d.24xlarge")
    assert (second.cpus, second.instance_type, second.max_hourly_cost) == (8, "p5.48xlarge", 40)


def test_no_resources_is_one_unconstrained_option() -> None:
    req = task_of("run: echo\n").resource_request()
    assert req == ResourceRequest((ResourceOption(),), ordered=False)


@pytest.mark.parametrize(
    ("yaml_text", "summary"),
    [
        ("run: x\n", "1x cpu"),
        ("run: x\nnum_nodes: 4\nresources: {accelerators: A100:8, use_spot: true}\n",
         "4x A100:8 [spot]"),
        ("run: x\nresources: {cpus: 2+, memory: 8+}\n", "1x cpus=2+ mem=8+"),
        ("run: x\nresources: {accelerators: [H100:8, A100:8]}\n", "1x [H100:8, A100:8]"),
        ("run: x\nresources: {infra: aws/us-east-1, instance_type: m5.large}\n",
         "1x m5.large @aws/us-east-1"),
        ("run: x\nresources:\n  ordered: [{infra: aws, accelerators: L4}, {infra: local}]\n",
         "1x aws:L4:1 > local:cpu"),
    ],
)  # fmt: skip
def test_resources_summary(yaml_text: str, summary: str) -> None:
    assert task_of(yaml_text).resources_summary() == summary


@pytest.mark.parametrize(
    ("resources", "text"),
    [
        pytest.param(Resources(), "cpu", id="nothing-asked"),
        pytest.param(Resources(instance_type="m5.large"), "m5.large", id="instance-type"),
        pytest.param(
            Resources(accelerators={"A100": 8, "H100": 8}), "{A100:8, H100:8}", id="choice"
        ),
        pytest.param(
            Resources.model_validate(
                {
                    "any_of": [
                        {"infra": "aws", "accelerators": "A100:8"},
                        {"infra": "k8s", "accelerators": "H100:8", "use_spot": True},
                    ]
                }
            ),
            "aws:A100:8 | k8s:H100:8 [spot]",
            id="any-of-spot-in-one-entry",
        ),
        pytest.param(
            Resources.model_validate(
                {"cpus": "4+", "ordered": [{"infra": "aws/us-east-1"}, {"cloud": "kubernetes"}]}
            ),
            "aws/us-east-1:cpus=4 > k8s:cpus=4",
            id="ordered-entries-inherit-cpus",
        ),
    ],
)
def test_summary_of_resources(resources: Resources, text: str) -> None:
    assert summary_of(resources) == text
