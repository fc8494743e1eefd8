"""Spot traces: one JSON file per zone, read into per-zone availability over time.

The format is that of ``skypilot-org/spot-traces`` and ``MaoZiming/spothedge_ae`` (see
``traces/README.md``)::

    {"metadata": {"gap_seconds": 300}, "data": [0, 0, 4, 4, ...], "prices": [0.918, ...]}

``data[i]`` is how many spot instances of the shape were obtainable during
``[i * gap, (i + 1) * gap)``; ``prices`` (optional) the spot price in USD/hour there. The gap
differs between files (30 s to 600 s), so nothing here assumes one: a simulator asks for the
value at a *time* (``available_at(seconds)``), or resamples to its own tick with ``ticks``.

A file ``us-east-2a_v100_1.json`` is zone ``us-east-2a`` of region ``us-east-2``; the region is
the zone name without its trailing letter (AWS ``us-east-2a``, GCP ``us-central1-a``).

``LegacyRandom`` reproduces ``numpy.random.RandomState(seed).randint`` without numpy: the
SpotHedge artifact draws its window offsets that way, and drawing the same offsets is what
makes our reproduction of its numbers comparable window for window.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from spotd.types import ZoneKey

__all__ = [
    "LegacyRandom",
    "TraceError",
    "ZoneTrace",
    "load_trace_dir",
    "load_zone_trace",
    "zone_key_of",
]

_ZONE_RE = re.compile(r"^(?P<region>[a-z]+(?:-[a-z]+)*-?\d+)-?(?P<letter>[a-z])$")


class TraceError(ValueError):
    """A trace file or folder that cannot be used; the message names the file."""


@dataclass(frozen=True, slots=True)
class ZoneTrace:
    """Spot availability (and perhaps prices) of one instance shape in one zone."""

    name: str  # the file name without .json, e.g. "us-east-2a_v100_1"
    zone: ZoneKey
    shape: str  # the rest of the file name, e.g. "v100_1"
    gap_seconds: float
    data: tuple[int, ...]
    prices: tuple[float, ...] | None = None  # spot USD/hour per point, when the file has them

    @property
    def binary(self) -> bool:
        """Every value is 0 or 1: a single-node trace (did one instance launch or run?)."""
        return all(v <= 1 for v in self.data)

    @property
    def duration_seconds(self) -> float:
        return self.gap_seconds * len(self.data)

    def index_at(self, seconds: float) -> int:
        """The data point covering ``seconds`` since the start of the trace (wrapping)."""
        return int(seconds // self.gap_seconds) % len(self.data)

    def available_at(self, seconds: float) -> int:
        return self.data[self.index_at(seconds)]

    def price_at(self, seconds: float) -> float | None:
        if self.prices is None:
            return None
        return self.prices[self.index_at(seconds)]

    def ticks(self, tick_seconds: float) -> tuple[int, ...]:
        """Availability resampled to ``tick_seconds``: the value at the start of every tick
        that fits in the trace (for a 300 s gap and a 30 s tick, each point 10 times)."""
        n = int(self.duration_seconds // tick_seconds)
        return tuple(self.available_at(i * tick_seconds) for i in range(n))


def zone_key_of(stem: str, *, provider: str = "aws") -> tuple[ZoneKey, str]:
    """``"us-east-2a_v100_1"`` → (aws/us-east-2/us-east-2a, ``"v100_1"``)."""
    zone, _, shape = stem.partition("_")
    m = _ZONE_RE.match(zone)
    region = m.group("region") if m else zone
    return ZoneKey(provider, region, zone), shape


def load_zone_trace(path: str | Path, *, provider: str | None = None) -> ZoneTrace:
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TraceError(f"{p}: cannot read a trace: {exc}") from exc
    try:
        gap = float(raw["metadata"]["gap_seconds"])
        data = tuple(int(v) for v in raw["data"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceError(f"{p}: expected metadata.gap_seconds and data: {exc!r}") from exc
    if not gap > 0 or not data:
        raise TraceError(f"{p}: gap_seconds must be > 0 and data non-empty")
    if any(v < 0 for v in data):
        raise TraceError(f"{p}: negative availability in data")
    prices = None
    if raw.get("prices") is not None:
        prices = tuple(float(v) for v in raw["prices"])
        if len(prices) != len(data):
            raise TraceError(f"{p}: {len(prices)} prices for {len(data)} data points")
    if provider is None:
        provider = "gcp" if "gcp" in str(p).lower() else "aws"
    zone, shape = zone_key_of(p.stem, provider=provider)
    return ZoneTrace(p.stem, zone, shape, gap, data, prices)


def load_trace_dir(
    path: str | Path, *, provider: str | None = None, shape: str | None = None
) -> list[ZoneTrace]:
    """Every ``*.json`` in ``path`` (not its subfolders), sorted by file name; with
    ``shape`` (``"v100_1"``), only the files of that shape: a folder holding several shapes
    per zone (``availability/1-node``) needs one."""
    p = Path(path)
    if not p.is_dir():
        raise TraceError(f"{p}: not a folder of trace files")
    files = sorted(f for f in p.iterdir() if f.suffix == ".json" and f.is_file())
    if not files:
        raise TraceError(f"{p}: no *.json trace files")
    traces = [load_zone_trace(f, provider=provider) for f in files]
    if shape is not None:
        traces = [t for t in traces if t.shape == shape]
        if not traces:
            raise TraceError(f"{p}: no trace file of shape {shape!r}")
    seen: dict[ZoneKey, str] = {}
    for t in traces:
        if t.zone in seen:
            shapes = ", ".join(sorted({x.shape for x in traces}))
            raise TraceError(
                f"{p}: {t.name} and {seen[t.zone]} are the same zone {t.zone}; "
                f"choose a shape ({shapes})"
            )
        seen[t.zone] = t.name
    return traces


class LegacyRandom:
    """``numpy.random.RandomState(seed)``'s ``randint(low, high)``, in pure Python.

    numpy's legacy seeding fills the Mersenne Twister key with Knuth's recurrence
    (``init_genrand``), not Python's ``init_by_array``; its bounded integers draw 32-bit words
    masked to the next power of two and reject those above the range. Python's
    ``random.Random`` runs the same generator, so we load the key into it and draw words with
    ``getrandbits(32)``.
    """

    def __init__(self, seed: int) -> None:
        if not 0 <= seed < 2**32:
            raise ValueError("seed must be in [0, 2**32)")
        key = [seed]
        for i in range(1, 624):
            prev = key[-1]
            key.append((1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF)
        self._mt = random.Random()
        self._mt.setstate((3, (*key, 624), None))

    def randint(self, low: int, high: int) -> int:
        """An integer in ``[low, high)``, as numpy draws it."""
        if high <= low:
            raise ValueError("high must be > low")
        rng = high - low - 1
        if rng == 0:
            return low
        if rng > 0xFFFFFFFF:
            raise ValueError("ranges above 2**32 are not needed here")
        mask = (1 << rng.bit_length()) - 1
        while True:
            v = self._mt.getrandbits(32) & mask
            if v <= rng:
                return low + v


def window_offsets(length_ticks: int, window_ticks: int, windows: int, *, seed: int) -> list[int]:
    """``windows`` start ticks in ``[0, length - window)``, drawn as the SpotHedge artifact
    draws them (``np.random.seed(seed)``; ``randint(0, length - window)`` per window)."""
    if window_ticks >= length_ticks:
        if window_ticks > length_ticks:
            raise TraceError(
                f"a window of {window_ticks} ticks is longer than the trace ({length_ticks})"
            )
        return [0] * windows
    rng = LegacyRandom(seed)
    return [rng.randint(0, length_ticks - window_ticks) for _ in range(windows)]


def common_ticks(traces: Sequence[ZoneTrace], tick_seconds: float) -> int:
    """Ticks that every trace covers (the shortest trace bounds the windows)."""
    return min(math.floor(t.duration_seconds / tick_seconds) for t in traces)
