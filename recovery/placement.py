"""The optimizer: every feasible placement of a resource request, cheapest expected cost first.

A placement is a (provider, region, zone, instance type, market) with a price. ``candidates``
lists them all, ranked by

    expected_cost = price_per_hour * num_nodes * (1 + risk[zone]) / (1 - blocked[zone])

- ``risk`` is a learned, non-negative cost factor per zone (``history.preemption_risk``): the
  fraction of paid time a preemption there is expected to waste. It applies to spot only;
  on-demand capacity is not preempted.
- ``blocked`` is a penalty in [0, 1] per zone (``history.zone_penalties``): 1 excludes the zone,
  0.5 doubles its cost, 0.9 multiplies it by ten. A zone that was just preempted or stocked out
  is thus skipped at first and comes back into the ranking smoothly as the penalty decays,
  instead of flipping from "never" to "first choice" at a fixed timeout.

Matching follows SkyPilot's resource syntax, already normalised into ``ResourceOption``:

- ``use_spot`` picks the market: false = on-demand only, true = spot only;
- accelerators match by name (case-insensitive) and exact count; a request without
  accelerators gets CPU-only types unless it names an ``instance_type``, so ``cpus: 4+`` never
  lands on a GPU machine because it happens to have four cores;
- ``cpus`` / ``memory_gb`` are minimums with their ``*_plus`` flag, exact otherwise;
  ``memory_per_cpu`` is a minimum of GiB per vCPU; ``instance_type``, ``provider``, ``region``
  and ``zone`` are exact filters;
- ``max_hourly_cost`` caps the price of one node (the same unit as every other field of an
  option, which describes one node), not of the whole job.

With ``ordered=True`` (SkyPilot's ``ordered:`` list) an earlier option always ranks first; else
(``any_of``) options compete on cost alone. Equal costs are broken by provider, region, zone,
instance type and market names, so the ranking is deterministic.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from spotd.types import Candidate, CatalogEntry, Market, ResourceOption, ResourceRequest, ZoneKey

__all__ = ["candidates", "explain_infeasible", "option_label"]

_EPS = 1e-9
_NO_RISK: Mapping[ZoneKey, float] = MappingProxyType({})


def candidates(
    request: ResourceRequest,
    catalog: Sequence[CatalogEntry],
    *,
    num_nodes: int = 1,
    risk: Mapping[ZoneKey, float] = _NO_RISK,
    blocked: Mapping[ZoneKey, float] = _NO_RISK,
    ondemand_blocked: Mapping[ZoneKey, float] | None = None,
) -> list[Candidate]:
    """Every feasible placement for ``request``, best first (see the module docstring).

    ``blocked`` applies to both markets unless ``ondemand_blocked`` is given, which then
    replaces it for on-demand placements (a spot preemption says nothing about on-demand
    capacity in the zone; a stockout may). A placement that several options accept is listed
    once, under the earliest option.
    """
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be at least 1, got {num_nodes}")
    best: dict[tuple[str, str, str, str, Market], Candidate] = {}
    for index, option in enumerate(request.options):
        for entry in catalog:
            if not _fits(option, entry):
                continue
            market = Market.SPOT if option.use_spot else Market.ON_DEMAND
            price = entry.spot_price if option.use_spot else entry.ondemand_price
            if price is None:
                continue
            if option.max_hourly_cost is not None and price > option.max_hourly_cost + _EPS:
                continue
            penalties = blocked if option.use_spot or ondemand_blocked is None else ondemand_blocked
            penalty = min(1.0, max(0.0, penalties.get(entry.zone_key, 0.0)))
            if penalty >= 1.0:
                continue
            factor = max(0.0, risk.get(entry.zone_key, 0.0)) if market is Market.SPOT else 0.0
            key = (entry.provider, entry.region, entry.zone, entry.instance_type, market)
            if key in best:
                continue  # an earlier option already accepted this placement
            best[key] = Candidate(
                provider=entry.provider,
                region=entry.region,
                zone=entry.zone,
                instance_type=entry.instance_type,
                market=market,
                price_per_hour=price,
                expected_cost=price * num_nodes * (1.0 + factor) / (1.0 - penalty),
                accelerator=entry.accelerator,
                accelerator_count=entry.accelerator_count,
                option_index=index,
            )

    def rank(c: Candidate) -> tuple[int, float, str, str, str, str, str]:
        first = c.option_index if request.ordered else 0
        return (first, c.expected_cost, c.provider, c.region, c.zone, c.instance_type, c.market)

    return sorted(best.values(), key=rank)


def explain_infeasible(request: ResourceRequest, catalog: Sequence[CatalogEntry]) -> str:
    """Why nothing in ``catalog`` fits ``request``, naming the closest thing that exists.

    For each option the filters are applied in a fixed order (provider, region, zone, instance
    type, accelerator, count, vCPUs, memory, memory per vCPU, market, price cap) and the first
    one that leaves nothing is explained against what was left before it, e.g. "no instance
    type offers A100:16; largest A100 count is 8 (sim-a100-8)". Several options are reported
    one after another. A feasible request is reported as such.
    """
    if not request.options:
        return "the request has no resource options"
    if not catalog:
        return "the catalog is empty: no provider offers anything"
    reasons = []
    for option in request.options:
        why = _explain_option(option, catalog)
        if why is None:
            n = len(candidates(ResourceRequest((option,)), catalog))
            return f"feasible: {option_label(option)} has {n} placement(s)"
        reasons.append(why)
    if len(reasons) == 1:
        return reasons[0]
    return "; ".join(
        f"option {i + 1} ({option_label(o)}): {r}"
        for i, (o, r) in enumerate(zip(request.options, reasons, strict=True))
    )


def option_label(option: ResourceOption) -> str:
    """A short human form of an option, in SkyPilot's syntax: ``A100:8, cpus=4+, spot``."""
    parts = []
    if option.accelerator:
        parts.append(f"{option.accelerator}:{option.accelerator_count:g}")
    if option.instance_type:
        parts.append(option.instance_type)
    if option.cpus is not None:
        parts.append(f"cpus={option.cpus:g}{'+' if option.cpus_plus else ''}")
    if option.memory_gb is not None:
        parts.append(f"memory={option.memory_gb:g}{'+' if option.memory_plus else ''}")
    if option.memory_per_cpu is not None:
        parts.append(f"memory={option.memory_per_cpu:g}x")
    infra = "/".join(x for x in (option.provider, option.region, option.zone) if x)
    if infra:
        parts.append(f"infra={infra}")
    parts.append("spot" if option.use_spot else "on-demand")
    if option.max_hourly_cost is not None:
        parts.append(f"max ${option.max_hourly_cost:g}/h")
    return ", ".join(parts)


# -- matching ------------------------------------------------------------------------------


def _same_count(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=0.0, abs_tol=_EPS)


def _fits(option: ResourceOption, e: CatalogEntry) -> bool:
    return all(check.accepts(option, e) for check in _CHECKS if check.applies(option))


@dataclass(frozen=True)
class _Check:
    """One filter of an option: when it applies, what it accepts, how to explain its failure."""

    applies: Callable[[ResourceOption], bool]
    accepts: Callable[[ResourceOption, CatalogEntry], bool]
    explain: Callable[[ResourceOption, Sequence[CatalogEntry]], str]


def _names(values: Iterable[str]) -> str:
    return ", ".join(sorted(set(values)))


def _scope(option: ResourceOption) -> str:
    where = "/".join(x for x in (option.provider, option.region, option.zone) if x)
    return f" in {where}" if where else ""


def _largest(pool: Sequence[CatalogEntry], key: Callable[[CatalogEntry], float]) -> str:
    top = max(pool, key=lambda e: (key(e), e.instance_type))
    return f"{key(top):g} ({top.instance_type})"


def _offered(pool: Sequence[CatalogEntry], key: Callable[[CatalogEntry], float]) -> str:
    by_value: dict[float, str] = {}
    for e in sorted(pool, key=lambda e: e.instance_type):
        by_value.setdefault(key(e), e.instance_type)
    return ", ".join(f"{v:g} ({t})" for v, t in sorted(by_value.items()))


def _explain_provider(o: ResourceOption, pool: Sequence[CatalogEntry]) -> str:
    return f"no provider {o.provider!r} in the catalog (known: {_names(e.provider for e in pool)})"


def _explain_region(o: ResourceOption, pool: Sequence[CatalogEntry]) -> str:
    who = f"provider {o.provider}" if o.provider else "any provider"
    return f"no region {o.region!r} for {who} (known: {_names(e.region for e in pool)})"


def _explain_zone(o: ResourceOption, pool: Sequence[CatalogEntry]) -> str:
    where = f" in region {o.region}" if o.region else ""
    return f"no zone {o.zone!r}{where} (known: {_names(e.zone for e in pool)})"


def _explain_instance_type(o: ResourceOption, pool: Sequence[CatalogEntry]) -> str:
    known = sorted({e.instance_type for e in pool})
    close = difflib.get_close_matches(o.instance_type or "", known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"no instance type {o.instance_type!r}{_scope(o)} (known: {', '.join(known)}){hint}"


def _explain_accelerator(o: ResourceOption, pool: Sequence[CatalogEntry]) -> str:
    known = {e.accelerator for e in pool if e.accelerator}
    if o.accelerator is None:
        if o.instance_type is not None:  # pragma: no cover - instance_type lifts this filter
            return "unreachable"
        return (
            f"no CPU-only instance type{_scope(o)}; request an accelerator (known: "
            f"{_names(known)}) or name an instance_type"
        )
    if not known:
        return f"no instance type{_scope(o)} has an accelerator ({o.accelerator} was requested)"
    if o.instance_type is not None:
        types = _names(e.instance_type for e in pool)
        acc = _names(f"{e.accelerator or 'no accelerator'}" for e in pool)
        return f"{types} offers {acc}, not {o.accelerator}"
    return (
        f"no instance type offers accelerator {o.accelerator!r}{_scope(o)} (known: {_names(known)})"
    )


def _explain_count(o: ResourceOption, pool: Sequence[CatalogEntry]) -> str:
    name = pool[0].accelerator or o.accelerator or ""  # the catalog's spelling
    want = f"{name}:{o.accelerator_count:g}"
    largest = max(e.accelerator_count for e in pool)
    if o.accelerator_count > largest:
        return (
            f"no instance type offers {want}{_scope(o)}; largest {name} count is "
            f"{_largest(pool, lambda e: e.accelerator_count)}"
        )
    return (
        f"no instance type offers {want}{_scope(o)}; {name} counts offered: "
        f"{_offered(pool, lambda e: e.accelerator_count)}"
    )


def _explain_cpus(o: ResourceOption, pool: Sequence[CatalogEntry]) -> str:
    assert o.cpus is not None
    if o.cpus_plus:
        return (
            f"no matching instance type has {o.cpus:g}+ vCPUs{_scope(o)}; the largest has "
            f"{_largest(pool, lambda e: e.vcpus)}"
        )
    return (
        f"no matching instance type has exactly {o.cpus:g} vCPUs{_scope(o)} (offered: "
        f"{_offered(pool, lambda e: e.vcpus)}; write '{o.cpus:g}+' for a minimum)"
    )


def _explain_memory(o: ResourceOption, pool: Sequence[CatalogEntry]) -> str:
    assert o.memory_gb is not None
    if o.memory_plus:
        return (
            f"no matching instance type has {o.memory_gb:g}+ GiB of memory{_scope(o)}; the "
            f"largest has {_largest(pool, lambda e: e.memory_gb)}"
        )
    return (
        f"no matching instance type has exactly {o.memory_gb:g} GiB of memory{_scope(o)} "
        f"(offered: {_offered(pool, lambda e: e.memory_gb)}; write '{o.memory_gb:g}+' for a "
        "minimum)"
    )


def _explain_memory_per_cpu(o: ResourceOption, pool: Sequence[CatalogEntry]) -> str:
    best = max(pool, key=lambda e: (e.memory_gb / e.vcpus, e.instance_type))
    return (
        f"no matching instance type has {o.memory_per_cpu:g}+ GiB per vCPU{_scope(o)}; the most "
        f"is {best.memory_gb / best.vcpus:g} ({best.instance_type})"
    )


def _explain_market(o: ResourceOption, pool: Sequence[CatalogEntry]) -> str:
    types = _names(e.instance_type for e in pool)
    return f"no spot capacity for {types}{_scope(o)}; on-demand is sold (use_spot: false)"


def _price(o: ResourceOption, e: CatalogEntry) -> float:
    p = e.spot_price if o.use_spot else e.ondemand_price
    return math.inf if p is None else p


def _explain_price(o: ResourceOption, pool: Sequence[CatalogEntry]) -> str:
    e = min(pool, key=lambda e: (_price(o, e), e.region, e.zone, e.instance_type))
    market = "spot" if o.use_spot else "on-demand"
    return (
        f"the cheapest match, {e.instance_type} {market} in {e.region}/{e.zone}, costs "
        f"${_price(o, e):.4f}/h per node, above max_hourly_cost ${o.max_hourly_cost:g}"
    )


_CHECKS: tuple[_Check, ...] = (
    _Check(
        lambda o: o.provider is not None, lambda o, e: e.provider == o.provider, _explain_provider
    ),
    _Check(lambda o: o.region is not None, lambda o, e: e.region == o.region, _explain_region),
    _Check(lambda o: o.zone is not None, lambda o, e: e.zone == o.zone, _explain_zone),
    _Check(
        lambda o: o.instance_type is not None,
        lambda o, e: e.instance_type == o.instance_type,
        _explain_instance_type,
    ),
    _Check(
        lambda o: o.accelerator is not None or o.instance_type is None,
        lambda o, e: (
            e.accelerator is None
            if o.accelerator is None
            else e.accelerator is not None and e.accelerator.lower() == o.accelerator.lower()
        ),
        _explain_accelerator,
    ),
    _Check(
        lambda o: o.accelerator is not None,
        lambda o, e: _same_count(e.accelerator_count, o.accelerator_count),
        _explain_count,
    ),
    _Check(
        lambda o: o.cpus is not None,
        lambda o, e: (
            (e.vcpus + _EPS >= (o.cpus or 0))
            if o.cpus_plus
            else math.isclose(e.vcpus, o.cpus or 0, abs_tol=_EPS)
        ),
        _explain_cpus,
    ),
    _Check(
        lambda o: o.memory_gb is not None,
        lambda o, e: (
            (e.memory_gb + _EPS >= (o.memory_gb or 0))
            if o.memory_plus
            else math.isclose(e.memory_gb, o.memory_gb or 0, abs_tol=_EPS)
        ),
        _explain_memory,
    ),
    _Check(
        lambda o: o.memory_per_cpu is not None,
        lambda o, e: e.memory_gb + _EPS >= (o.memory_per_cpu or 0) * e.vcpus,
        _explain_memory_per_cpu,
    ),
)

# Filters on the market and the price; kept apart from _CHECKS because ``candidates`` applies
# them while pricing, but explained in the same way.
_PRICE_CHECKS: tuple[_Check, ...] = (
    _Check(lambda o: o.use_spot, lambda o, e: e.spot_price is not None, _explain_market),
    _Check(
        lambda o: o.max_hourly_cost is not None,
        lambda o, e: _price(o, e) <= (o.max_hourly_cost or 0) + _EPS,
        _explain_price,
    ),
)


def _explain_option(option: ResourceOption, catalog: Sequence[CatalogEntry]) -> str | None:
    pool: Sequence[CatalogEntry] = catalog
    for check in (*_CHECKS, *_PRICE_CHECKS):
        if not check.applies(option):
            continue
        kept = [e for e in pool if check.accepts(option, e)]
        if not kept:
            return check.explain(option, pool)
        pool = kept
    return None
