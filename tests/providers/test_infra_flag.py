"""``spotctl jobs launch --infra X`` replaces where a task may run, whatever its YAML said."""

from __future__ import annotations

import pytest

from spotd.api.app import refusal_status
from spotd.control.submit import InvalidRequest
from spotd.control.submit import with_infra as _with_infra
from spotd.spec import load_tasks

YAML = """
resources:
  accelerators: T4:1
  use_spot: true
  infra: local/local-east
  any_of:
    - infra: local
      cpus: 4+
    - cloud: aws
      region: us-east-1
run: echo hi
"""


def test_infra_replaces_every_location_and_keeps_the_rest() -> None:
    task = _with_infra(load_tasks("t.yaml", text=YAML)[0], "aws/us-west-2")
    options = task.resource_request().options
    assert [(o.provider, o.region, o.zone) for o in options] == [("aws", "us-west-2", None)] * 2
    assert all((o.accelerator, o.accelerator_count, o.use_spot) == ("T4", 1, True) for o in options)
    assert options[0].cpus == 4


@pytest.mark.parametrize("infra", ["k8s", "slurm/debug", "aws", "local"])
def test_every_provider_name_is_accepted(infra: str) -> None:
    task = _with_infra(load_tasks("t.yaml", text=YAML)[0], infra)
    assert {o.provider for o in task.resource_request().options} == {infra.split("/")[0]}


def test_a_bad_value_is_a_client_error() -> None:
    with pytest.raises(InvalidRequest) as exc:
        _with_infra(load_tasks("t.yaml", text=YAML)[0], "aws//x")
    assert refusal_status(exc.value) == 400 and "--infra" in exc.value.message
