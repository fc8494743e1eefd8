"""Preemptions from a spot trace: a drop in availability reclaims that share of a region.

The files are those of ``skypilot-org/spot-traces`` (``traces/README.md``):
``{"metadata": {"gap_seconds": G}, "data": [n0, n1, ...]}``, ``data[i]`` how many spot instances
of the shape were obtainable during tick ``i``. The fleet gives each of its regions one file
(the folder's files in name order, cycled) and plays them ``speedup`` times faster than real
time: where ``data`` falls from ``a`` to ``b`` it reclaims ``(a - b) / a`` of that region's running
spot instances, and while it reads 0 its spot launches stock out. (``spotd.sim.traces`` reads
the same files for the offline simulator; providers may not import it, and this needs only the
two fields.)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RegionTrace", "TraceStep", "load_region_traces", "steps_between"]


@dataclass(frozen=True, slots=True)
class RegionTrace:
    region: str
    name: str  # the file's name, for the operator
    gap_seconds: float
    data: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TraceStep:
    """What the trace does to one region at one tick."""

    region: str
    reclaim_share: float  # of the running spot instances, 0..1
    available: bool  # False: spot launches stock out until the next tick


def load_region_traces(path: Path, regions: Sequence[str]) -> list[RegionTrace]:
    """One trace per region from a file or a folder of files (cycled over the regions)."""
    files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"fleet trace: no .json files in {path}")
    out = []
    for n, region in enumerate(regions):
        f = files[n % len(files)]
        try:
            raw = json.loads(f.read_text())
            gap = float(raw["metadata"]["gap_seconds"])
            data = tuple(int(x) for x in raw["data"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"fleet trace {f}: not a spot trace ({exc})") from exc
        if not data or not math.isfinite(gap) or gap <= 0:
            raise ValueError(f"fleet trace {f}: empty, or gap_seconds is not positive")
        out.append(RegionTrace(region=region, name=f.name, gap_seconds=gap, data=data))
    return out


def steps_between(trace: RegionTrace, t0: float, t1: float) -> list[TraceStep]:
    """The ticks of ``trace`` entered in ``(t0, t1]`` (trace seconds; it loops at its end)."""
    out = []
    first, last = math.floor(t0 / trace.gap_seconds) + 1, math.floor(t1 / trace.gap_seconds)
    for tick in range(max(first, 1), last + 1):
        before = trace.data[(tick - 1) % len(trace.data)]
        now = trace.data[tick % len(trace.data)]
        share = (before - now) / before if before > now > -1 and before > 0 else 0.0
        out.append(TraceStep(trace.region, reclaim_share=share, available=now > 0))
    return out
