"""``spotctl catalog show|refresh`` and ``spotctl check --providers``.

They read the same configuration the daemon reads (``$SPOTD_HOME/config.yaml``,
``SPOTD_PROVIDERS_JSON``) and build the providers the way the daemon does, so what they say is
what a daemon started now would do. No daemon is needed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import click
from rich.table import Table

from spotd.cli.common import err, out, print_json
from spotd.providers.capabilities import Disableable

__all__ = ["built_providers", "catalog", "check_providers"]


def _settings() -> Any:
    import logging

    import structlog

    from spotd.config import ConfigError, load_settings

    # the factories log what the daemon should log; here the one-line reasons say it
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

    try:
        return load_settings()
    except ConfigError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(2)


def built_providers(
    settings: Any, only: str | None = None
) -> Iterator[tuple[str, Any, str | None]]:
    """(name, provider or None, why it is not usable or None) for every provider in the config
    (``local`` always), or for ``only``, built with its defaults if the config leaves it out."""
    from spotd.server import PROVIDER_FACTORIES  # the whole daemon: only when a command runs

    wanted: dict[str, dict[str, Any]] = dict(settings.providers)
    wanted.setdefault("local", {})
    if only is not None:
        wanted = {only: wanted.get(only, {})}
    for name, cfg in wanted.items():
        if cfg.get("enabled", True) is False:
            yield name, None, "disabled in the config (enabled: false)"
            continue
        factory = PROVIDER_FACTORIES.get(name)
        if factory is None:
            yield name, None, f"unknown provider (known: {', '.join(sorted(PROVIDER_FACTORIES))})"
            continue
        try:
            provider = factory(settings, {k: v for k, v in cfg.items() if k != "enabled"})
        except Exception as exc:  # noqa: BLE001 - any factory failure is its one-line reason
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            yield name, None, f"{type(exc).__name__}: {first}"
            continue
        try:
            off = provider.disabled_reason if isinstance(provider, Disableable) else None
            yield name, provider, off
        finally:
            asyncio.run(provider.close())


def check_providers() -> None:
    """One line per provider: enabled (with what it offers), or why not."""
    for name, provider, reason in built_providers(_settings()):
        if reason is not None or provider is None:
            out.print(f"{name}: disabled: {reason}", markup=False)
            continue
        entries = provider.catalog()
        regions = {e.region for e in entries}
        types = {e.instance_type for e in entries}
        out.print(
            f"{name}: enabled ({len(types)} instance types in {len(regions)} "
            f"region{'s' if len(regions) != 1 else ''})",
            markup=False,
        )


def _gpu_filter(gpu: str | None) -> tuple[str | None, float | None]:
    if not gpu:
        return None, None
    name, _, count = gpu.partition(":")
    try:
        return name.lower(), float(count) if count else None
    except ValueError as exc:
        raise click.BadParameter(
            f"expected NAME or NAME:COUNT, got {gpu!r}", param_hint="--gpu"
        ) from exc


@click.group()
def catalog() -> None:
    """Instance types and prices of every configured provider."""


@catalog.command("show")
@click.option("--gpu", default=None, help="Only this accelerator: A100, or A100:8.")
@click.option("--provider", default=None, help="Only this provider (aws, local, ...).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def catalog_show(gpu: str | None, provider: str | None, output: str) -> None:
    """One row per (provider, region, instance type): the cheapest zone's spot price and the
    on-demand price, in USD per hour."""
    name_want, count_want = _gpu_filter(gpu)
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    notes = []
    for name, p, reason in built_providers(_settings(), provider):
        if p is None:
            notes.append(f"{name}: disabled: {reason}")
            continue
        entries = p.snapshot if reason and isinstance(p, Disableable) else p.catalog()
        if reason:
            notes.append(f"{name}: disabled: {reason} (showing its snapshot)")
        for e in entries or []:
            if name_want and (e.accelerator or "").lower() != name_want:
                continue
            if count_want is not None and e.accelerator_count != count_want:
                continue
            key = (e.provider, e.region, e.instance_type)
            row = rows.setdefault(
                key,
                {
                    "provider": e.provider,
                    "region": e.region,
                    "instance_type": e.instance_type,
                    "accelerator": e.accelerator,
                    "accelerator_count": e.accelerator_count,
                    "vcpus": e.vcpus,
                    "memory_gb": e.memory_gb,
                    "spot_price": None,
                    "spot_zone": None,
                    "ondemand_price": e.ondemand_price,
                },
            )
            row["ondemand_price"] = min(row["ondemand_price"], e.ondemand_price)
            if e.spot_price is not None and (
                row["spot_price"] is None or e.spot_price < row["spot_price"]
            ):
                row["spot_price"], row["spot_zone"] = e.spot_price, e.zone
    ordered = sorted(
        rows.values(),
        key=lambda r: (
            r["accelerator"] or "~",
            r["accelerator_count"],
            r["spot_price"] if r["spot_price"] is not None else r["ondemand_price"],
            r["provider"],
            r["region"],
        ),
    )
    for n in notes:
        err.print(n, markup=False)
    if output == "json":
        print_json(ordered)
        return
    t = Table()
    for col in (
        "PROVIDER",
        "INSTANCE TYPE",
        "GPU",
        "vCPUs",
        "MEM GiB",
        "REGION",
        "SPOT $/h (zone)",
        "ON-DEMAND $/h",
    ):
        t.add_column(col)
    for r in ordered:
        acc = f"{r['accelerator']}:{r['accelerator_count']:g}" if r["accelerator"] else "-"
        spot = f"{r['spot_price']:.4f} ({r['spot_zone']})" if r["spot_price"] is not None else "-"
        t.add_row(
            r["provider"],
            r["instance_type"],
            acc,
            f"{r['vcpus']:g}",
            f"{r['memory_gb']:g}",
            r["region"],
            spot,
            f"{r['ondemand_price']:.4f}",
        )
    out.print(t)
    if not ordered:
        err.print("no instance type matches")


@catalog.command("refresh")
def catalog_refresh() -> None:
    """Replace the snapshot's spot prices with live ones where credentials exist (AWS:
    DescribeSpotPriceHistory); the daemon reads the result when it next starts."""
    from spotd.providers.base import ProviderError

    settings = _settings()
    for name, _p, reason in built_providers(settings, "aws"):
        if reason is not None:
            out.print(f"{name}: disabled: {reason}", markup=False)
            sys.exit(1)
    from spotd.providers.aws import refresh_catalog

    cfg = {k: v for k, v in settings.providers.get("aws", {}).items() if k != "enabled"}
    try:
        result = asyncio.run(refresh_catalog(settings, cfg))
    except ProviderError as exc:
        err.print(f"aws: {type(exc).__name__}: {exc}", markup=False)
        sys.exit(1)
    for line in result.lines:
        out.print(f"aws: {line}", markup=False)
    others = sorted(set(settings.providers) - {"aws"} | {"local"})
    out.print(f"{', '.join(others)}: no live prices to refresh", markup=False)
