"""Small builders for recovery tests: a three-region catalog, requests, zone events."""

from __future__ import annotations

from typing import Any

from spotd.recovery.history import ZoneEvent
from spotd.types import CatalogEntry, ResourceOption, ResourceRequest, ZoneEventKind, ZoneKey

PROVIDER = "p"
# spot: r1 < r2 < r3, zone b 5% dearer than zone a; on-demand: r2 < r1 < r3
SPOT = {"r1": 0.10, "r2": 0.20, "r3": 0.30}
ONDEMAND = {"r1": 1.00, "r2": 0.90, "r3": 1.10}


def entry(
    region: str,
    zone: str,
    instance_type: str = "cpu-1",
    *,
    ondemand: float = 1.0,
    spot: float | None = 0.3,
    vcpus: float = 1,
    memory_gb: float = 4,
    accelerator: str | None = None,
    accelerator_count: float = 0,
    provider: str = PROVIDER,
) -> CatalogEntry:
    return CatalogEntry(
        provider=provider,
        region=region,
        zone=zone,
        instance_type=instance_type,
        vcpus=vcpus,
        memory_gb=memory_gb,
        accelerator=accelerator,
        accelerator_count=accelerator_count,
        ondemand_price=ondemand,
        spot_price=spot,
    )


def three_regions(instance_type: str = "cpu-1", scale: float = 1.0) -> list[CatalogEntry]:
    """r1..r3, zones a/b each; spot r1a < r1b < r2a < r2b < r3a < r3b."""
    out = []
    for r in ("r1", "r2", "r3"):
        for z, m in (("a", 1.0), ("b", 1.05)):
            out.append(
                entry(
                    r,
                    f"{r}{z}",
                    instance_type,
                    ondemand=ONDEMAND[r] * scale,
                    spot=round(SPOT[r] * m * scale, 6),
                )
            )
    return out


def zk(zone: str, provider: str = PROVIDER) -> ZoneKey:
    """ZoneKey from a zone name of the form r1a (region = name minus the last letter)."""
    return ZoneKey(provider, zone[:-1], zone)


def req(*, ordered: bool = False, **kw: Any) -> ResourceRequest:
    return ResourceRequest((ResourceOption(**kw),), ordered=ordered)


def ev(kind: ZoneEventKind, zone: str, at: float, seconds: float = 0.0) -> ZoneEvent:
    return ZoneEvent(zk(zone), kind, at, seconds=seconds)


PREEMPTED = ZoneEventKind.PREEMPTED
LAUNCH_FAILED = ZoneEventKind.LAUNCH_FAILED
LAUNCHED = ZoneEventKind.LAUNCHED
RAN = ZoneEventKind.RAN
