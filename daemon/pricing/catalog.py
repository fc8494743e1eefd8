"""Instance catalogs: which machine shapes each provider sells, where, and at what price.

A catalog is a YAML snapshot, one document per provider (``---`` separates several)::

    provider: local
    regions:
      local-east:
        zones:                         # a list of names, or a mapping name -> options
          local-east-a: {}
          local-east-b: {spot_multiplier: 1.05}
    instance_types:
      - name: sim-a100-8
        vcpus: 96
        memory_gb: 1152
        accelerator: A100              # null for CPU-only types
        accelerator_count: 8
        prices:                        # USD per hour; a region left out does not sell it
          local-east: {ondemand: 32.77, spot: 9.83}
          local-west:
            ondemand: 34.08
            spot: 14.75                # null (or left out): no spot capacity in the region
            zones:                     # optional per-zone overrides of spot / ondemand
              local-west-b: {spot: null}

A zone's spot price is its own override if it has one, else the region's spot price times the
zone's ``spot_multiplier`` (default 1). Every instance type priced in a region is offered in
every zone of that region. The result is a flat ``list[CatalogEntry]``, one per
(region, zone, instance type), in file order; the optimizer does the ranking.

The same format carries cloud snapshots (AWS later), so the loader is strict: unknown keys,
unknown regions or zones, duplicate names and non-numeric prices are errors that name the file
and the place in it, rather than a catalog that silently offers less than it should.

The ``local`` provider's catalog is *simulated*: its "instances" are processes on the daemon's
host, its GPUs and prices are made up. :func:`real_capacity` keeps it from competing with real
capacity (see there); cost reports mark what it "cost" as simulated.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import yaml

from spotd.types import CatalogEntry, ResourceRequest

__all__ = [
    "SIMULATED_PROVIDERS",
    "CatalogError",
    "default_local_catalog",
    "is_simulated",
    "load_catalog",
    "parse_catalog",
    "real_capacity",
]

# Providers whose capacity is made up: the local provider runs "instances" as processes on the
# daemon's host, with the GPUs and prices its catalog invents.
SIMULATED_PROVIDERS: frozenset[str] = frozenset({"local"})

_REGION_KEYS = frozenset({"zones"})
_ZONE_KEYS = frozenset({"spot_multiplier"})
_TYPE_KEYS = frozenset({"name", "vcpus", "memory_gb", "accelerator", "accelerator_count", "prices"})
_PRICE_KEYS = frozenset({"ondemand", "spot", "zones"})
_ZONE_PRICE_KEYS = frozenset({"ondemand", "spot"})


class CatalogError(ValueError):
    """A catalog file that cannot be used; the message names the file and the offending key."""


def is_simulated(provider: str) -> bool:
    """Whether ``provider``'s capacity is simulated (the local provider's)."""
    return provider in SIMULATED_PROVIDERS


def real_capacity(
    catalog: Sequence[CatalogEntry],
    *,
    request: ResourceRequest,
    enabled_providers: Collection[str],
) -> list[CatalogEntry]:
    """The part of ``catalog`` a placement of ``request`` may choose from.

    Simulated capacity never competes with real capacity: the local provider's entries stay
    only when the task names that provider itself (``infra: local``, ``--infra local``, in any
    of its options) or when no real provider (aws, k8s, slurm) is enabled — then the local
    provider is all there is, as on a laptop or in the tests. Otherwise its made-up prices,
    lower than any cloud's, would place ``accelerators: A100:8, use_spot: true`` on
    ``sim-a100-8``: a GPU job run as a process on the daemon's host and billed at invented
    prices. A configured provider counts as enabled even when it is disabled for a while
    (AWS without credentials): a credentials outage must not move GPU jobs onto the daemon's
    host.

    ========================  ========================  =====================
    enabled providers         providers the task names  local entries kept
    ========================  ========================  =====================
    local                     (none)                    yes: nothing real
    local, aws                (none)                    no
    local, aws                local                     yes: asked for
    local, aws                aws, local (any_of)       yes: asked for
    local, k8s / slurm        (none)                    no
    ========================  ========================  =====================

    Used by the launch (``spotd.control.submit``) and by every later placement of the same
    job, so a relaunch never lands where the first launch could not have.
    """
    named = {o.provider for o in request.options if o.provider}
    real_enabled = any(not is_simulated(p) for p in enabled_providers)
    if not real_enabled or any(is_simulated(p) for p in named):
        return list(catalog)
    return [e for e in catalog if not is_simulated(e.provider)]


def load_catalog(path: str | Path) -> list[CatalogEntry]:
    """Read a catalog YAML file (one document per provider)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{p}: cannot read the catalog: {exc.strerror or exc}") from exc
    return parse_catalog(text, source=str(p))


def default_local_catalog() -> list[CatalogEntry]:
    """The catalog of the embedded ``local`` provider, shipped as package data."""
    res = importlib.resources.files("spotd").joinpath("data/local_catalog.yaml")
    return parse_catalog(res.read_text(encoding="utf-8"), source="spotd:data/local_catalog.yaml")


def parse_catalog(text: str, *, source: str = "<catalog>") -> list[CatalogEntry]:
    """Parse catalog YAML text; ``source`` names it in error messages."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise CatalogError(f"{source}: not valid YAML{where}: {problem}") from exc
    if not docs:
        raise CatalogError(f"{source}: the catalog is empty")
    entries: list[CatalogEntry] = []
    providers: set[str] = set()
    for i, doc in enumerate(docs):
        where = source if len(docs) == 1 else f"{source} (document {i + 1})"
        got = _Doc(where).parse(doc)
        provider = got[0].provider if got else _provider_of(doc)
        if provider in providers:
            raise CatalogError(f"{where}: provider {provider!r} appears in more than one document")
        providers.add(provider)
        entries.extend(got)
    return entries


def _provider_of(doc: Any) -> str:
    return str(doc.get("provider", "")) if isinstance(doc, Mapping) else ""


class _Doc:
    """Parses one provider document; every error carries the path to the offending key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> CatalogError:
        return CatalogError(
            f"{self.source}: {where}: {message}" if where else f"{self.source}: {message}"
        )

    def mapping(
        self, value: Any, where: str, allowed: AbstractSet[str] | None = None
    ) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, f"expected a mapping, got {_kind(value)}")
        for k in value:
            if not isinstance(k, str):
                raise self.fail(where, f"keys must be strings, got {k!r}")
        if allowed is not None:
            unknown = sorted(set(value) - allowed)
            if unknown:
                raise self.fail(
                    where,
                    f"unknown key {unknown[0]!r} (expected one of: {', '.join(sorted(allowed))})",
                )
        return value

    def name(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, f"expected a non-empty name, got {_kind(value)}")
        return value.strip()

    def number(self, value: Any, where: str, *, positive: bool = False) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise self.fail(where, f"expected a number, got {_kind(value)}")
        if value < 0 or (positive and value == 0):
            raise self.fail(
                where,
                f"expected a {'positive' if positive else 'non-negative'} number, got {value}",
            )
        return float(value)

    def optional_price(self, value: Any, where: str) -> float | None:
        return None if value is None else self.number(value, where)

    def parse(self, doc: Any) -> list[CatalogEntry]:
        top = self.mapping(doc, "", {"provider", "regions", "instance_types"})
        for key in ("provider", "regions", "instance_types"):
            if key not in top:
                raise self.fail("", f"missing required key {key!r}")
        provider = self.name(top["provider"], "provider")
        zones = self.regions(top["regions"])
        raw_types = top["instance_types"]
        if not isinstance(raw_types, list) or not raw_types:
            raise self.fail("instance_types", f"expected a non-empty list, got {_kind(raw_types)}")
        entries: list[CatalogEntry] = []
        seen: set[str] = set()
        for i, raw in enumerate(raw_types):
            label = f"instance_types[{i}]"
            if isinstance(raw, Mapping) and isinstance(raw.get("name"), str):
                label += f" ({raw['name']})"
            entries.extend(self.instance_type(provider, raw, label, zones, seen))
        return entries

    def regions(self, value: Any) -> dict[str, dict[str, float]]:
        """region -> zone -> spot multiplier."""
        regions = self.mapping(value, "regions")
        if not regions:
            raise self.fail("regions", "no regions")
        out: dict[str, dict[str, float]] = {}
        all_zones: set[str] = set()
        for region, body in regions.items():
            where = f"regions.{region}"
            body = self.mapping(body, where, _REGION_KEYS)
            if "zones" not in body:
                raise self.fail(where, "missing required key 'zones'")
            raw_zones = body["zones"]
            zones: dict[str, float] = {}
            if isinstance(raw_zones, list):
                for j, z in enumerate(raw_zones):
                    zones[self.name(z, f"{where}.zones[{j}]")] = 1.0
            else:
                for z, opts in self.mapping(raw_zones, f"{where}.zones").items():
                    zw = f"{where}.zones.{z}"
                    opts = self.mapping(opts if opts is not None else {}, zw, _ZONE_KEYS)
                    zones[z] = self.number(
                        opts.get("spot_multiplier", 1.0), f"{zw}.spot_multiplier", positive=True
                    )
            if not zones:
                raise self.fail(f"{where}.zones", "a region needs at least one zone")
            dup = sorted(all_zones & set(zones))
            if dup:
                raise self.fail(f"{where}.zones", f"zone {dup[0]!r} is listed in two regions")
            all_zones |= set(zones)
            out[region] = zones
        return out

    def instance_type(
        self,
        provider: str,
        raw: Any,
        where: str,
        zones: Mapping[str, Mapping[str, float]],
        seen: set[str],
    ) -> list[CatalogEntry]:
        body = self.mapping(raw, where, _TYPE_KEYS)
        for key in ("name", "vcpus", "memory_gb", "prices"):
            if key not in body:
                raise self.fail(where, f"missing required key {key!r}")
        name = self.name(body["name"], f"{where}.name")
        if name in seen:
            raise self.fail(where, f"instance type {name!r} is listed twice")
        seen.add(name)
        vcpus = self.number(body["vcpus"], f"{where}.vcpus", positive=True)
        memory = self.number(body["memory_gb"], f"{where}.memory_gb", positive=True)
        acc_raw = body.get("accelerator")
        accelerator = None if acc_raw is None else self.name(acc_raw, f"{where}.accelerator")
        count = self.number(body.get("accelerator_count", 0), f"{where}.accelerator_count")
        if accelerator is None and count:
            raise self.fail(where, "accelerator_count is set but accelerator is null")
        if accelerator is not None and not count:
            raise self.fail(where, f"accelerator {accelerator!r} needs accelerator_count > 0")
        prices = self.mapping(body["prices"], f"{where}.prices")
        if not prices:
            raise self.fail(f"{where}.prices", "no region prices: the type is offered nowhere")
        entries: list[CatalogEntry] = []
        for region, p in prices.items():
            pw = f"{where}.prices.{region}"
            if region not in zones:
                raise self.fail(pw, f"unknown region (known: {', '.join(sorted(zones))})")
            p = self.mapping(p, pw, _PRICE_KEYS)
            if "ondemand" not in p:
                raise self.fail(pw, "missing required key 'ondemand'")
            ondemand = self.number(p["ondemand"], f"{pw}.ondemand", positive=True)
            spot = self.optional_price(p.get("spot"), f"{pw}.spot")
            overrides = self.mapping(p.get("zones") or {}, f"{pw}.zones")
            for z in overrides:
                if z not in zones[region]:
                    raise self.fail(
                        f"{pw}.zones.{z}",
                        f"unknown zone of {region} (known: {', '.join(zones[region])})",
                    )
            for zone, multiplier in zones[region].items():
                zw = f"{pw}.zones.{zone}"
                o = self.mapping(overrides.get(zone) or {}, zw, _ZONE_PRICE_KEYS)
                z_ondemand = (
                    self.number(o["ondemand"], f"{zw}.ondemand", positive=True)
                    if "ondemand" in o
                    else ondemand
                )
                if "spot" in o:
                    z_spot = self.optional_price(o["spot"], f"{zw}.spot")
                else:
                    z_spot = None if spot is None else round(spot * multiplier, 6)
                entries.append(
                    CatalogEntry(
                        provider=provider,
                        region=region,
                        zone=zone,
                        instance_type=name,
                        vcpus=vcpus,
                        memory_gb=memory,
                        accelerator=accelerator,
                        accelerator_count=count,
                        ondemand_price=z_ondemand,
                        spot_price=z_spot,
                    )
                )
        return entries


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"{value!r}"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, int | float):
        return f"{value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__
