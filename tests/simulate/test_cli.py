"""``spotctl simulate``: options reach the simulators, ``-o json`` has one object per policy."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from spotd.cli.main import main
from tests.simulate.helpers import write_traces


def _json(output: str) -> list[dict[str, object]]:
    return json.loads(output[output.index("[") : output.rindex("]") + 1])  # type: ignore[no-any-return]


def test_jobs_json(tmp_path: Path) -> None:
    write_traces(
        tmp_path / "t", {"us-east-1a": [1] * 2000, "us-west-2a": [0] * 2000}, gap_seconds=60
    )
    result = CliRunner().invoke(
        main,
        [
            "simulate",
            "jobs",
            "--trace",
            str(tmp_path / "t"),
            "--job-hours",
            "2",
            "--deadline-hours",
            "3",
            "--windows",
            "2",
            "--restart-overhead-seconds",
            "0",
            "--checkpoint-seconds",
            "0",
            "-o",
            "json",
            "--plot",
            str(tmp_path / "jobs.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "jobs.png").stat().st_size > 10_000
    rows = {r["policy"]: r for r in _json(result.output)}
    assert set(rows) == {
        "eager-next-region",
        "failover",
        "deadline",
        "greedy",
        "uniform-progress",
        "on-demand",
        "omniscient",
    }
    assert rows["on-demand"]["cost"] == 6.0 and rows["on-demand"]["cost_vs_ondemand"] == 1.0
    for spot_all_along in ("eager-next-region", "deadline", "greedy", "uniform-progress"):
        assert rows[spot_all_along]["cost"] == 2.0  # zone a never goes down
    assert all(r["deadline_misses"] == 0 for r in rows.values())


def test_serve_table(tmp_path: Path) -> None:
    write_traces(tmp_path / "t", {"us-east-1a": [4] * 40, "us-west-2a": [4] * 40}, gap_seconds=30)
    result = CliRunner().invoke(
        main,
        [
            "simulate",
            "serve",
            "--trace",
            str(tmp_path / "t"),
            "--window-ticks",
            "20",
            "--windows",
            "1",
            "--policy",
            "round-robin",
            "--policy",
            "on-demand",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "round-robin" in result.output and "on-demand" in result.output
    assert "0.3333" in result.output  # 3 spot replica-ticks per 9 on-demand


def test_trace_too_short_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    write_traces(tmp_path / "t", {"us-east-1a": [1] * 10}, gap_seconds=60)
    result = CliRunner().invoke(main, ["simulate", "jobs", "--trace", str(tmp_path / "t")])
    assert result.exit_code == 1
    assert "too short" in result.output


def test_serve_json_has_the_notice_variants(tmp_path: Path) -> None:
    write_traces(
        tmp_path / "t",
        {"us-east-1a": [4] * 20 + [0] * 20, "us-west-2a": [4] * 40},
        gap_seconds=30,
    )
    args = ["simulate", "serve", "--trace", str(tmp_path / "t"), "--window-ticks", "40"]
    args += ["--windows", "1", "-o", "json", "--notice-lead", "60", "90"]
    for p in ("spotd", "spothedge", "spotd+notice", "spothedge+notice"):
        args += ["--policy", p]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = _json(result.output)
    assert [r["policy"] for r in rows] == ["spotd", "spothedge", "spotd+notice", "spothedge+notice"]
    for row in rows:
        assert 0 < float(row["cost_vs_ondemand"]) < 1  # type: ignore[arg-type]
        assert 0 < float(row["availability"]) <= 1  # type: ignore[arg-type]


def test_serve_bad_notice_model_and_mixed_shapes_are_errors(tmp_path: Path) -> None:
    write_traces(tmp_path / "t", {"us-east-1a": [4] * 40}, gap_seconds=30)
    base = ["simulate", "serve", "--trace", str(tmp_path / "t"), "--window-ticks", "20"]
    result = CliRunner().invoke(main, [*base, "--notice-lead", "120", "60"])
    assert result.exit_code == 1
    assert "min <= max" in result.output
    result = CliRunner().invoke(main, [*base, "--base-ondemand", "4"])
    assert result.exit_code == 1
    assert "base_ondemand must be between 0 and the target" in result.output
    (tmp_path / "t" / "us-east-1a_k80_1.json").write_text(
        json.dumps({"metadata": {"gap_seconds": 30}, "data": [1] * 40})
    )
    result = CliRunner().invoke(main, base)
    assert result.exit_code == 1
    assert "choose a shape (k80_1, v100_1)" in result.output
    result = CliRunner().invoke(main, [*base, "--shape", "k80_1", "--policy", "round-robin"])
    assert result.exit_code == 0, result.output
