"""examples/sdk_quickstart.py, run as a user would, against a real daemon."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_quickstart_launches_a_job_from_python(daemon) -> None:
    env = dict(daemon.env)  # SPOTD_HOME of the test daemon, no SPOTD_URL
    r = subprocess.run(
        [sys.executable, "examples/sdk_quickstart.py"],
        check=False,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "  any_of:\n" in r.stdout  # the set of Resources, as YAML
    assert "  | DIGEST " in r.stdout  # the job's own output, streamed
    assert " SUCCEEDED on local/" in r.stdout
    # the service half runs where the daemon has services, and is skipped (said so) otherwise
    assert "GET http" in r.stdout or "services: skipped" in r.stdout
    assert "No daemon was running" not in r.stderr  # it used the test daemon
