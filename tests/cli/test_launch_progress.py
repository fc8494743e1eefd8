"""``spotctl jobs launch`` reports its upload on stderr as plain lines when stderr is not a
terminal, and says nothing beside ``-o json`` (the terminal rendering: test_progress.py and
tests/services/test_ship_code.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import DaemonProc

TASK = """
name: shipped-job
resources: {cpus: 1+}
workdir: app
run: cat data.txt
"""


def launch(d: DaemonProc, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spotd.cli.main", "jobs", "launch", "task.yaml", "-d", "-y", *args],
        env=d.env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_jobs_launch_progress_is_plain_in_a_pipe_and_absent_for_json(
    daemon: DaemonProc, tmp_path: Path
) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "data.txt").write_text("x" * 200_000)
    (tmp_path / "task.yaml").write_text(TASK)
    r = launch(daemon, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["Packing workdir", "Uploading 0.2 MB (what the daemon lacks)"]
    assert "Files: 1 in 1 package(s)" in r.stdout  # the summary stays on stdout

    r = launch(daemon, tmp_path, "-o", "json")  # the same files again: nothing travels
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert json.loads(r.stdout)["upload"]["uploaded_blobs"] == 0
