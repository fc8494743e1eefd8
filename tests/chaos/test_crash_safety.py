"""The crash-safety suite (chaos/crash_safety.py --quick) as a slow-tier test: CI runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_crash_safety_quick() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "chaos/crash_safety.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=580,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "PASS" in r.stdout
