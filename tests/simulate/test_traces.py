"""Loading traces, resampling them, and drawing the artifact's window offsets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spotd.sim.traces import (
    LegacyRandom,
    TraceError,
    load_trace_dir,
    window_offsets,
    zone_key_of,
)
from spotd.types import ZoneKey
from tests.simulate.helpers import write_traces


@pytest.mark.parametrize(
    ("stem", "zone", "shape"),
    [
        ("us-east-2a_v100_1", ZoneKey("aws", "us-east-2", "us-east-2a"), "v100_1"),
        ("us-central1-a_c3-88", ZoneKey("aws", "us-central1", "us-central1-a"), "c3-88"),
        ("us-east-1f_intel_64", ZoneKey("aws", "us-east-1", "us-east-1f"), "intel_64"),
    ],
)
def test_zone_names(stem: str, zone: ZoneKey, shape: str) -> None:
    assert zone_key_of(stem) == (zone, shape)


def test_gcp_folders_are_gcp(tmp_path: Path) -> None:
    traces = write_traces(tmp_path / "gcp-04-30-2023", {"us-central1-a": [1]}, gap_seconds=30)
    assert traces[0].zone.provider == "gcp"


def test_resampling_reads_the_gap(tmp_path: Path) -> None:
    (t,) = write_traces(tmp_path, {"us-east-1a": [0, 4, 2]}, gap_seconds=90)
    assert t.ticks(30) == (0, 0, 0, 4, 4, 4, 2, 2, 2)
    assert t.ticks(60) == (0, 0, 4, 2)  # values at 0, 60, 120, 180 s
    assert t.available_at(270) == 0  # wraps


def test_bad_files_name_themselves(tmp_path: Path) -> None:
    (tmp_path / "us-east-1a_x.json").write_text(json.dumps({"data": [1]}))
    with pytest.raises(TraceError, match=r"us-east-1a_x\.json"):
        load_trace_dir(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TraceError, match=r"no \*.json"):
        load_trace_dir(tmp_path / "empty")


def test_prices_must_match_data(tmp_path: Path) -> None:
    (tmp_path / "us-east-1a_x.json").write_text(
        json.dumps({"metadata": {"gap_seconds": 30}, "data": [1, 1], "prices": [0.9]})
    )
    with pytest.raises(TraceError, match="1 prices for 2"):
        load_trace_dir(tmp_path)


def test_offsets_are_numpys_legacy_draws() -> None:
    # numpy.random.RandomState(0).randint(0, 28680) ten times: the SpotHedge artifact's AWS1
    # windows (31,560 ticks - 2,880)
    assert window_offsets(31560, 2880, 10, seed=0) == [
        2732,
        10799,
        9845,
        19648,
        13123,
        21243,
        9225,
        24275,
        20757,
        22258,
    ]


def test_legacy_random_matches_numpy_when_installed() -> None:
    np = pytest.importorskip("numpy")
    for seed in (0, 1, 42, 2**32 - 1):
        ours, theirs = LegacyRandom(seed), np.random.RandomState(seed)
        for high in (2, 3, 1000, 28680, 2**31, 2**32):
            assert ours.randint(0, high) == int(theirs.randint(0, high, dtype=np.int64))
