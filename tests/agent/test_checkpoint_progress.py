"""The progress a job writes beside its checkpoint (``spotd-progress``), as the agent reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotd.agent.checkpoints import PROGRESS, parse_progress, read_progress


@pytest.mark.parametrize(
    ("text", "fraction"),
    [
        ("0.42", 0.42),
        ("0.42\n", 0.42),
        ("42%", 0.42),
        ("420/1000", 0.42),
        ("1000/1000", 1.0),
        ("0", 0.0),
        ("1", 1.0),
        ("", None),  # a file opened but not yet written
        ("0.4", 0.4),
        ("abc", None),
        ("1.5", None),  # more than done
        ("-0.1", None),
        ("5/0", None),  # no total
        ("1200/1000", None),
        ("nan", None),
    ],
)
def test_parse_progress(text: str, fraction: float | None) -> None:
    got = parse_progress(text)
    assert got == (pytest.approx(fraction) if fraction is not None else None)


def test_read_progress_from_the_checkpoint_directory(tmp_path: Path) -> None:
    assert read_progress(tmp_path) is None  # a job that never writes it
    (tmp_path / PROGRESS).write_text("3/4")
    assert read_progress(tmp_path) == 0.75
    (tmp_path / PROGRESS).write_bytes(b"\xff\xfe")
    assert read_progress(tmp_path) is None
