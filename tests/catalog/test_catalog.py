"""The catalog loader: the shipped local catalog, the format's rules, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotd.pricing.catalog import CatalogError, default_local_catalog, load_catalog, parse_catalog
from spotd.types import CatalogEntry

MINIMAL = """
provider: test
regions:
  r1:
    zones: [r1-a, r1-b]
  r2:
    zones:
      r2-a: {}
      r2-b: {spot_multiplier: 2}
instance_types:
  - name: small
    vcpus: 2
    memory_gb: 4
    prices:
      r1: {ondemand: 1.0, spot: 0.25}
      r2: {ondemand: 1.5, spot: 0.5, zones: {r2-a: {spot: null, ondemand: 1.4}}}
  - name: gpu
    vcpus: 8
    memory_gb: 64
    accelerator: A100
    accelerator_count: 1
    prices:
      r2: {ondemand: 3.0}
"""


def _by_key(entries: list[CatalogEntry]) -> dict[tuple[str, str], CatalogEntry]:
    return {(e.zone, e.instance_type): e for e in entries}


# -- the shipped local catalog --------------------------------------------------------------


def test_local_catalog_has_three_regions_of_two_zones() -> None:
    cat = default_local_catalog()
    assert {e.provider for e in cat} == {"local"}
    regions: dict[str, set[str]] = {}
    for e in cat:
        regions.setdefault(e.region, set()).add(e.zone)
    assert regions == {
        "local-east": {"local-east-a", "local-east-b"},
        "local-central": {"local-central-a", "local-central-b"},
        "local-west": {"local-west-a", "local-west-b"},
    }


@pytest.mark.parametrize(
    ("instance_type", "accelerator", "count"),
    [
        ("cpu-1", None, 0),
        ("cpu-2", None, 0),
        ("cpu-4", None, 0),
        ("sim-t4-1", "T4", 1),
        ("sim-a100-1", "A100", 1),
        ("sim-a100-8", "A100", 8),
        ("sim-h100-8", "H100", 8),
    ],
)
def test_local_catalog_offers_cpu_and_simulated_gpu_types(
    instance_type: str, accelerator: str | None, count: int
) -> None:
    entries = [e for e in default_local_catalog() if e.instance_type == instance_type]
    assert entries, instance_type
    assert {(e.accelerator, e.accelerator_count) for e in entries} == {(accelerator, count)}


def test_local_spot_is_cheapest_in_east_then_central_then_west_for_every_type() -> None:
    order = [
        "local-east-a",
        "local-east-b",
        "local-central-a",
        "local-central-b",
        "local-west-a",
        "local-west-b",
    ]
    cat = default_local_catalog()
    for t in {e.instance_type for e in cat}:
        prices = {e.zone: e.spot_price for e in cat if e.instance_type == t and e.spot_price}
        zones = [z for z in order if z in prices]
        assert sorted(zones, key=lambda z: prices[z]) == zones, t


def test_local_spot_is_always_cheaper_than_on_demand() -> None:
    for e in default_local_catalog():
        if e.spot_price is not None:
            assert e.spot_price < e.ondemand_price, e


def test_load_catalog_reads_a_file(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(MINIMAL)
    assert load_catalog(p) == parse_catalog(MINIMAL)


# -- the format -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "instance_type", "ondemand", "spot"),
    [
        ("r1-a", "small", 1.0, 0.25),  # region prices
        ("r1-b", "small", 1.0, 0.25),  # every zone of a priced region offers the type
        ("r2-a", "small", 1.4, None),  # zone override: no spot, its own on-demand price
        ("r2-b", "small", 1.5, 1.0),  # spot_multiplier 2 on the region's spot price
        ("r2-a", "gpu", 3.0, None),  # spot left out: on-demand only
    ],
)
def test_prices_per_zone(
    zone: str, instance_type: str, ondemand: float, spot: float | None
) -> None:
    e = _by_key(parse_catalog(MINIMAL))[(zone, instance_type)]
    assert (e.ondemand_price, e.spot_price) == (ondemand, spot)


def test_a_region_left_out_of_prices_does_not_offer_the_type() -> None:
    entries = parse_catalog(MINIMAL)
    assert {e.region for e in entries if e.instance_type == "gpu"} == {"r2"}


def test_entry_fields() -> None:
    e = _by_key(parse_catalog(MINIMAL))[("r2-b", "gpu")]
    assert e == CatalogEntry(
        provider="test",
        region="r2",
        zone="r2-b",
        instance_type="gpu",
        vcpus=8,
        memory_gb=64,
        accelerator="A100",
        accelerator_count=1,
        ondemand_price=3.0,
        spot_price=None,
    )


def test_several_providers_in_one_file() -> None:
    other = MINIMAL.replace("provider: test", "provider: other")
    entries = parse_catalog(MINIMAL + "\n---\n" + other)
    assert {e.provider for e in entries} == {"test", "other"}


# -- errors -----------------------------------------------------------------------------------


def _mutate(old: str, new: str) -> str:
    assert old in MINIMAL, old
    return MINIMAL.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the catalog is empty"),
        ("provider: [unclosed", "not valid YAML (line 1"),
        ("- just\n- a list\n", "expected a mapping, got a list"),
        (_mutate("provider: test\n", ""), "missing required key 'provider'"),
        (_mutate("vcpus: 2", "vcpus: two"), "instance_types[0] (small).vcpus: expected a number"),
        (_mutate("vcpus: 2", "vcpus: 0"), "expected a positive number, got 0"),
        (_mutate("ondemand: 1.0", "ondemand: -1"), "prices.r1.ondemand: expected a positive"),
        (_mutate("spot: 0.25", "spot: cheap"), "prices.r1.spot: expected a number, got 'cheap'"),
        (_mutate("r1: {ondemand", "r9: {ondemand"), "prices.r9: unknown region (known: r1, r2)"),
        (_mutate("{r2-a: {spot", "{r1-a: {spot"), "prices.r2.zones.r1-a: unknown zone of r2"),
        (_mutate("memory_gb: 4", "memory_gb: 4\n    gpus: 1"), "unknown key 'gpus'"),
        (_mutate("name: gpu", "name: small"), "instance type 'small' is listed twice"),
        (_mutate("zones: [r1-a, r1-b]", "zones: [r1-a, r2-a]"), "zone 'r2-a' is listed in two"),
        (_mutate("zones: [r1-a, r1-b]", "zones: []"), "a region needs at least one zone"),
        (
            _mutate("    accelerator: A100\n", ""),
            "accelerator_count is set but accelerator is null",
        ),
        (_mutate("spot_multiplier: 2", "spot_multiplier: 0"), "spot_multiplier: expected a pos"),
        (_mutate("r2: {ondemand: 3.0}", "r2: {spot: 1.0}"), "missing required key 'ondemand'"),
        (MINIMAL + "\n---\n" + MINIMAL, "provider 'test' appears in more than one document"),
    ],
)
def test_malformed_catalog_names_the_file_and_the_place(text: str, message: str) -> None:
    with pytest.raises(CatalogError) as err:
        parse_catalog(text, source="my.yaml")
    assert str(err.value).startswith("my.yaml"), str(err.value)
    assert message in str(err.value), str(err.value)


def test_missing_file_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read the catalog"):
        load_catalog(tmp_path / "nope.yaml")
