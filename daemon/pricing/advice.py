"""Placement advice for ``spotctl check``: why a task cannot be placed with the enabled
providers, and which provider spotd knows of would serve it.

``check`` validates a file without placing it, so a task that no *enabled* provider can run is
valid, with a warning naming what would serve it::

    no enabled provider offers L4; aws g6 does — enable aws

Everything here is a pure function of the request and the catalogs it is given: ``enabled``
is what the enabled providers sell, ``known`` is every packaged catalog (the local provider's
and the AWS snapshot), and ``unknown_providers`` are enabled providers whose offer is not in a
packaged catalog (Kubernetes, Slurm): an option they could serve gets no warning, since only
the daemon can tell.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from collections.abc import Collection, Sequence
from collections.abc import Set as AbstractSet

from spotd.pricing.catalog import parse_catalog
from spotd.recovery import placement
from spotd.types import CatalogEntry, ResourceOption, ResourceRequest

__all__ = ["SPOTD_PROVIDERS", "packaged_catalog", "placement_warnings"]

_PACKAGED = ("data/local_catalog.yaml", "data/aws_catalog.yaml")
SPOTD_PROVIDERS = frozenset({"local", "aws", "k8s", "slurm"})


def packaged_catalog() -> list[CatalogEntry]:
    """Every catalog shipped with spotd (local, and the AWS snapshot), as one list."""
    entries: list[CatalogEntry] = []
    for name in _PACKAGED:
        res = importlib.resources.files("spotd").joinpath(name)
        entries += parse_catalog(res.read_text(encoding="utf-8"), source=f"spotd:{name}")
    return entries


def _family(instance_type: str) -> str:
    return instance_type.split(".")[0]


def _who_serves(
    option: ResourceOption, known: Sequence[CatalogEntry], nodes: int, enabled: AbstractSet[str]
) -> str:
    elsewhere = option.provider is not None and option.provider not in SPOTD_PROVIDERS
    if elsewhere:
        option = dataclasses.replace(option, provider=None, region=None, zone=None)
    if option.provider is not None and option.provider not in {e.provider for e in known}:
        # Kubernetes, Slurm: what they offer is known only once a daemon reaches them
        return f"{option.provider} may serve it — enable {option.provider}"
    found = placement.candidates(ResourceRequest((option,)), known, num_nodes=nodes)
    if not found:
        why = placement.explain_infeasible(ResourceRequest((option,)), known)
        return f"nor in any catalog spotd ships: {why}"
    if elsewhere:
        return "elsewhere, " + _who_serves(option, known, nodes, enabled)
    by_provider: dict[str, list[str]] = {}
    for c in found:
        families = by_provider.setdefault(c.provider, [])
        if _family(c.instance_type) not in families:
            families.append(_family(c.instance_type))
    parts = [
        f"{p} {', '.join(sorted(f)[:3])} does" + ("" if p in enabled else f" — enable {p}")
        for p, f in by_provider.items()
    ]
    return "; ".join(parts)


def _why_not(option: ResourceOption, enabled: Sequence[CatalogEntry]) -> str:
    offered = {e.provider for e in enabled}
    if option.provider is not None and option.provider not in SPOTD_PROVIDERS:
        return f"spotd has no provider for {option.provider}"
    if option.provider is not None and option.provider not in offered:
        return f"provider {option.provider} is not enabled"
    if option.accelerator is not None and not any(
        e.accelerator == option.accelerator for e in enabled
    ):
        return f"no enabled provider offers {option.accelerator}"
    return placement.explain_infeasible(ResourceRequest((option,)), enabled)


def placement_warnings(
    request: ResourceRequest,
    enabled: Sequence[CatalogEntry],
    known: Sequence[CatalogEntry],
    *,
    num_nodes: int = 1,
    unknown_providers: Collection[str] = (),
) -> list[str]:
    """One warning per option that cannot be placed, or none when any option can.

    An option that an enabled provider without a packaged catalog may serve (``provider`` is
    unset or names it) counts as placeable: ``check`` cannot tell, ``--dry-run`` can.
    """
    if not request.options:
        return []
    if placement.candidates(request, enabled, num_nodes=num_nodes):
        return []
    for option in request.options:
        if unknown_providers and (option.provider is None or option.provider in unknown_providers):
            return []
    several = len(request.options) > 1
    warnings: list[str] = []
    for i, option in enumerate(request.options):
        serves = _who_serves(option, known, num_nodes, {e.provider for e in enabled})
        text = f"{_why_not(option, enabled)}; {serves}"
        label = placement.option_label(option)
        where = "/".join(x for x in (option.provider, option.region, option.zone) if x)
        head = f"option {i + 1} ({label}{' @' + where if where else ''}): " if several else ""
        warnings.append(head + text)
    return warnings
