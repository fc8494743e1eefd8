"""``spotctl check``'s placement advice: a pure function of a request and the catalogs, saying
why nothing enabled can place it and what would (``spotd.pricing.advice``)."""

from __future__ import annotations

import pytest

from spotd.pricing.advice import packaged_catalog, placement_warnings
from spotd.pricing.catalog import default_local_catalog
from spotd.spec import review_file
from spotd.types import CatalogEntry, ResourceRequest

KNOWN = packaged_catalog()
LOCAL = default_local_catalog()


def _request(resources: str) -> ResourceRequest:
    """The request as ``spotctl check`` reads it (clouds without a provider are kept)."""
    [task] = review_file("t.yaml", text=f"run: x\nresources: {resources}\n").tasks
    return task.resource_request()


@pytest.mark.parametrize(
    ("resources", "enabled", "unknown", "expected"),
    [
        ("{accelerators: A100:8}", LOCAL, (), []),
        ("{cpus: 2+}", LOCAL, (), []),
        (
            "{accelerators: L4}",
            LOCAL,
            (),
            ["no enabled provider offers L4; aws g6 does — enable aws"],
        ),
        (
            "{accelerators: V100}",
            LOCAL,
            (),
            ["no enabled provider offers V100; aws p3 does — enable aws"],
        ),
        ("{accelerators: L4}", KNOWN, (), []),
        ("{infra: aws, accelerators: T4}", LOCAL, (), ["provider aws is not enabled; aws g4dn"]),
        ("{infra: k8s, cpus: 2}", LOCAL, (), ["provider k8s is not enabled; k8s may serve it"]),
        ("{infra: k8s, cpus: 2}", LOCAL, ("k8s",), []),
        ("{accelerators: L4}", LOCAL, ("slurm",), []),
        ("{infra: gcp}", LOCAL, (), ["spotd has no provider for gcp; elsewhere, local"]),
        (
            "{accelerators: A100:16}",
            LOCAL,
            (),
            ["no instance type offers A100:16; largest A100 count is 8"],
        ),
        (
            "{any_of: [{accelerators: L4}, {accelerators: A100:1}]}",
            LOCAL,
            (),
            [],
        ),
        (
            "{any_of: [{accelerators: L4}, {infra: lambda, accelerators: H100:8}]}",
            LOCAL,
            (),
            ["option 1 (L4:1", "option 2 (H100:8"],
        ),
    ],
)
def test_placement_warnings(
    resources: str, enabled: list[CatalogEntry], unknown: tuple[str, ...], expected: list[str]
) -> None:
    warnings = placement_warnings(_request(resources), enabled, KNOWN, unknown_providers=unknown)
    assert len(warnings) == len(expected), warnings
    for got, phrase in zip(warnings, expected, strict=True):
        assert phrase in got, got


def test_the_packaged_catalog_holds_local_and_aws() -> None:
    assert {e.provider for e in KNOWN} == {"local", "aws"}
