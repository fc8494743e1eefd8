"""The daemon's ``providers.fleet`` section: checked at start, and a fleet started on demand."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from spotd.config import load_settings
from spotd.providers.fleet import FleetProvider
from spotd.server import ProviderConfigError, build_providers


@pytest.mark.parametrize(
    ("cfg", "words"),
    [
        ({"launch_seconds": -1}, "launch_seconds must be a finite number"),
        ({"preempt_rate_per_hour": "often"}, "preempt_rate_per_hour must be a number"),
        ({"trace": "/nonexistent/trace"}, "does not exist"),
        ({"speed": 3}, "unknown keys ['speed']"),
    ],
)
def test_a_bad_fleet_section_stops_the_daemon_with_a_message(
    tmp_path: Path, cfg: dict[str, object], words: str
) -> None:
    settings = load_settings(tmp_path, env={}).with_overrides(providers={"fleet": cfg})
    with pytest.raises(ProviderConfigError) as exc:
        build_providers(settings)
    assert words in str(exc.value)


async def test_without_a_url_the_provider_starts_its_own_fleet_and_a_second_adopts_it() -> None:
    root = Path(f"/tmp/spotd-fc{os.getpid()}-{time.monotonic_ns() % 10**8}")
    first = FleetProvider.from_config({"launch_seconds": 0.1}, default_root=root)
    second = FleetProvider.from_config({"launch_seconds": 0.1}, default_root=root)
    try:
        assert await first.list_instances() == []
        pid = int((root / "fleet.pid").read_text())
        assert await second.list_instances() == []  # the same fleet, not a second process
        assert int((root / "fleet.pid").read_text()) == pid
    finally:
        await first.close()
        await second.close()
        pidfile = root / "fleet.pid"
        if pidfile.exists():
            os.killpg(int(pidfile.read_text()), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        import shutil

        shutil.rmtree(root, ignore_errors=True)
