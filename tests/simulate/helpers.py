"""Synthetic traces with answers worked out by hand."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from spotd.sim.traces import ZoneTrace, load_trace_dir
from spotd.types import ZoneKey


def zone(name: str) -> ZoneKey:
    return ZoneKey("sim", f"r-{name}", name)


def write_traces(
    folder: Path,
    zones: dict[str, Sequence[int]],
    *,
    gap_seconds: float,
    prices: dict[str, Sequence[float]] | None = None,
) -> list[ZoneTrace]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in zones.items():
        body: dict[str, object] = {"metadata": {"gap_seconds": gap_seconds}, "data": list(data)}
        if prices and name in prices:
            body["prices"] = list(prices[name])
        (folder / f"{name}_v100_1.json").write_text(json.dumps(body))
    return load_trace_dir(folder)


def alternating(period: int, total: int, *, up: int, start_up: bool) -> list[int]:
    """``up`` for ``period`` ticks, then 0 for ``period``, ... (or the other way round)."""
    return [up if ((t // period) % 2 == 0) == start_up else 0 for t in range(total)]
