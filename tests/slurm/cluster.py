"""The real one-node Slurm cluster the ``slurm`` tier runs against, started once per session.

``scripts/slurm.sh start`` installs Debian's slurm-wlm and munge if they are missing and starts
munged, slurmctld and slurmd on loopback. If that cannot be done the tier is skipped with the
reason — except under ``CI=1``, where a tier that silently skips is a tier that never runs, so
it fails instead. The fixture stops the daemons at the end only if it was the one that started
them.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "slurm.sh"
NODE = "localhost"

# Both partitions of the test cluster share its one node. They are configured as preemptible
# ("spot"), with different notional prices, so that a relaunch after a preemption can move
# to the other partition (EAGER_NEXT_REGION).
PARTITIONS: dict[str, dict[str, Any]] = {
    "debug": {"cpus": 1, "memory_gb": 0.25, "price": 0.01, "preemptible": True},
    "batch": {"cpus": 1, "memory_gb": 0.25, "price": 0.02, "preemptible": True},
}


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the slurm tier cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"no Slurm cluster: {reason}")


def run(*argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


@dataclass
class SlurmCluster:
    node: str
    started_here: bool
    start_seconds: float

    def node_state(self) -> str:
        res = run("sinfo", "--noheader", "--nodes", self.node, "--format=%T")
        return res.stdout.strip()  # raw: "idle*" (not responding) is not ready

    def node_down(self, reason: str = "spotd-test") -> None:
        """Take the node DOWN: Slurm ends its running jobs as NODE_FAIL (a lost machine)."""
        res = run("scontrol", "update", f"nodename={self.node}", "state=down", f"reason={reason}")
        assert res.returncode == 0, res.stderr

    def node_resume(self, timeout: float = 60.0) -> None:
        """Bring the node back and wait until it takes jobs again (bounded)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.node_state()
            if state in ("idle", "mixed", "allocated"):
                return
            if state.startswith(("down", "drain")):
                # the node may return by itself (ReturnToService=2): a failed resume is fine
                run("scontrol", "update", f"nodename={self.node}", "state=resume")
            time.sleep(0.3)
        raise AssertionError(f"node {self.node} did not come back within {timeout}s: {state!r}")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    t0 = time.monotonic()
    try:
        res = run("bash", str(SCRIPT), "start", timeout=600)
    except subprocess.TimeoutExpired:
        _unavailable(f"{SCRIPT} start did not finish within 600s")
        raise  # unreachable: _unavailable raises
    if res.returncode != 0:
        _unavailable(f"{SCRIPT} start failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
    cluster = SlurmCluster(
        node=NODE,
        started_here=res.stdout.strip().endswith("started") and "already" not in res.stdout,
        start_seconds=time.monotonic() - t0,
    )
    cluster.node_resume()  # a node left DOWN by an interrupted run is brought back
    try:
        yield cluster
    finally:
        if cluster.started_here and not os.environ.get("SPOTD_KEEP_SLURM"):
            run("bash", str(SCRIPT), "stop", timeout=120)
