"""What happens to a document's plain data before the models see it: ``job_recovery`` under
``resources`` moves to the top level, ``--env K=V`` sets a declared secret or an env."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from spotd.spec.job_recovery import hoist_job_recovery
from spotd.spec.load import apply_overrides


@pytest.mark.parametrize(
    ("data", "hoisted", "moved"),
    [
        pytest.param({"run": "x"}, {"run": "x"}, False, id="nothing-to-move"),
        pytest.param(
            {"resources": {"cpus": 2, "job_recovery": "FAILOVER"}},
            {"resources": {"cpus": 2}, "job_recovery": "FAILOVER"},
            True,
            id="moved-up",
        ),
        pytest.param(
            {"resources": {"job_recovery": "A"}, "job_recovery": "B"},
            {"resources": {"job_recovery": "A"}, "job_recovery": "B"},
            False,
            id="both-places-left-for-validation",
        ),
        pytest.param({"resources": None}, {"resources": None}, False, id="empty-resources"),
    ],
)
def test_hoist_job_recovery(data: dict[str, Any], hoisted: dict[str, Any], moved: bool) -> None:
    before = copy.deepcopy(data)
    assert hoist_job_recovery(data) == (hoisted, moved)
    assert data == before  # the caller's data is never changed


@pytest.mark.parametrize(
    ("data", "overrides", "prepared"),
    [
        pytest.param({"run": "x"}, {}, {"run": "x"}, id="no-overrides"),
        pytest.param({"run": "x"}, {"A": "1"}, {"run": "x", "envs": {"A": "1"}}, id="adds-an-env"),
        pytest.param(
            {"envs": {"A": None, "B": "0"}},
            {"A": "1"},
            {"envs": {"A": "1", "B": "0"}},
            id="fills-a-null-env",
        ),
        pytest.param(
            {"secrets": {"T": None}},
            {"T": "hf_x"},
            {"secrets": {"T": "hf_x"}, "envs": {}},
            id="a-declared-secret-stays-secret",
        ),
        pytest.param(
            {"envs": ["A=1"]},
            {"B": "2"},
            {"envs": ["A=1"]},
            id="a-malformed-envs-is-left-for-validation",
        ),
    ],
)
def test_apply_overrides(
    data: dict[str, Any], overrides: dict[str, str], prepared: dict[str, Any]
) -> None:
    before = copy.deepcopy(data)
    assert apply_overrides(data, overrides) == prepared
    assert data == before
