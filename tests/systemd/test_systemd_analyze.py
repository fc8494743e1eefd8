"""systemd itself reads the rendered units: ``systemd-analyze verify`` and ``security``.

``systemd-analyze verify`` parses unit files offline (no systemd as PID 1 needed): unknown
keys, bad values and a missing ExecStart binary are reported. The units are rendered with
executables that exist here (this venv's ``spotd`` and Python), since verify checks them.

Where the tool is missing the test is skipped, except in CI (``$CI`` set), where it is first
installed with ``apt-get install systemd`` and the skip only happens when that is impossible
(no apt-get, not root, or the install failed). If the tool is present but cannot verify even a
trivial unit here, that is a skip outside CI and a failure in CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spotd.ops import units

IN_CI = bool(os.environ.get("CI"))


def _install_systemd() -> str:
    """Try to install systemd-analyze (CI only); the reason when it could not be done."""
    if not shutil.which("apt-get"):
        return "no apt-get to install systemd with"
    if os.geteuid() != 0:
        return "not root, cannot apt-get install systemd"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "systemd"],
    ):
        proc = subprocess.run(
            cmd, check=False, env=env, capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0:
            return f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}"
    return ""


@pytest.fixture(scope="module")
def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if not IN_CI:
        pytest.skip(
            "systemd-analyze is not installed (apt-get install systemd); CI installs it itself"
        )
    why = _install_systemd()
    found = shutil.which("systemd-analyze")
    if not found:
        pytest.skip(f"systemd-analyze is missing and could not be installed: {why}")
    return found


def _run(analyze: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [analyze, *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, analyze: str) -> Path:
    """The units rendered for this machine, plus one instance of the LB template."""
    d = tmp_path_factory.mktemp("units")
    # The canary: if even a trivial unit fails, the tool cannot work in this environment.
    (d / "canary.service").write_text("[Service]\nExecStart=/bin/true\n")
    proc = _run(analyze, "verify", "--man=no", "canary.service", cwd=d)
    if proc.returncode != 0:
        reason = f"systemd-analyze verify cannot run here: {proc.stderr.strip()[-500:]}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    (d / "canary.service").unlink()
    spotd_bin = Path(sys.executable).parent / "spotd"
    units.install_units(
        d,
        exec_path=str(spotd_bin if spotd_bin.exists() else "/bin/true"),
        python=sys.executable,
    )
    shutil.copy(d / "spotd-lb@.service", d / "spotd-lb@8080.service")
    return d


@pytest.mark.timeout(900)  # a CI run may install systemd first
@pytest.mark.parametrize("unit", ["spotd.service", "spotd-lb@.service", "spotd-lb@8080.service"])
def test_systemd_accepts_the_unit(analyze: str, rendered: Path, unit: str) -> None:
    proc = _run(analyze, "verify", "--man=no", unit, cwd=rendered)
    # Unknown keys are only warnings (exit code 0), so the output must not mention our units.
    complaints = [line for line in proc.stderr.splitlines() if "spotd" in line]
    assert proc.returncode == 0 and not complaints, proc.stderr


def _exposure(analyze: str, rendered: Path, unit: str) -> float:
    proc = _run(analyze, "security", "--offline=yes", "--no-pager", unit, cwd=rendered)
    if proc.returncode != 0 and "offline" in proc.stderr:
        pytest.skip(f"systemd-analyze security --offline unsupported: {proc.stderr.strip()}")
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    return float(m.group(1))


@pytest.mark.timeout(900)
def test_hardening_does_not_regress(analyze: str, rendered: Path) -> None:
    """systemd's own exposure score (0 best, 10 worst). The LB is a plain proxy and is locked
    down; the daemon keeps what user jobs need (devices, JIT, any syscall), hence MEDIUM."""
    assert _exposure(analyze, rendered, "spotd-lb@8080.service") <= 2.5
    assert _exposure(analyze, rendered, "spotd.service") <= 6.0
