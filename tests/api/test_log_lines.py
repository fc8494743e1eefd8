"""A multi-node job's log as ``spotctl jobs logs --follow`` shows it: each line prefixed by its
node once, though the agents ship the log in chunks that end anywhere."""

from __future__ import annotations

from pathlib import Path

from spotd.api.logs import HELD_LINE_MAX, _drain


def _nodes(tmp_path: Path) -> list[Path]:
    files = [tmp_path / "node-0.log", tmp_path / "node-1.log"]
    for f in files:
        f.write_bytes(b"")
    return files


def test_a_line_shipped_in_two_chunks_is_prefixed_once_while_followed(tmp_path: Path) -> None:
    n0, n1 = files = _nodes(tmp_path)
    offsets: dict[Path, int] = {}
    n0.write_bytes(b"epoch 1: loss=")  # the first chunk ends mid-line
    n1.write_bytes(b"ready\n")
    assert _drain(files, offsets, whole=False) == b"(node-1) ready\n"
    with n0.open("ab") as f:
        f.write(b"0.42\nepoch 2")
    assert _drain(files, offsets, whole=False) == b"(node-0) epoch 1: loss=0.42\n"
    # the attempt ended (or the log is read, not followed): what is left goes, unfinished
    assert _drain(files, offsets, whole=True) == b"(node-0) epoch 2"
    assert _drain(files, offsets, whole=True) == b""


def test_one_node_and_endless_lines_are_not_held(tmp_path: Path) -> None:
    one = tmp_path / "node-0.log"
    one.write_bytes(b"progress 10%\rprogress 20%")  # one node: no prefix, nothing to hold
    assert _drain([one], {}, whole=False) == b"progress 10%\rprogress 20%"
    files = _nodes(tmp_path)
    files[0].write_bytes(b"x" * HELD_LINE_MAX)  # a line too long to wait for
    assert _drain(files, {}, whole=False) == b"(node-0) " + b"x" * HELD_LINE_MAX
