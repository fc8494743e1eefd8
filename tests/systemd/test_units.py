"""Rendering and installing the unit files; the ones in systemd/ are the rendered defaults."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from spotd.ops import units
from tests.systemd.units_text import settings

REPO = Path(__file__).resolve().parents[2]


def test_the_files_in_systemd_are_the_rendered_defaults() -> None:
    """Edit the templates in spotd/ops/units.py, then regenerate:
    python -m spotd.ops.units --dir systemd --exec /usr/local/bin/spotd \
    --python /usr/bin/python3."""
    rendered = units.render_units()
    on_disk = {p.name: p.read_text() for p in (REPO / "systemd").glob("*.service")}
    assert on_disk == rendered


def test_daemon_unit_is_a_notify_service_with_a_watchdog() -> None:
    svc = settings(units.render_units()["spotd.service"])["Service"]
    assert svc["Type"] == ["notify"]
    assert svc["NotifyAccess"] == ["main"]
    assert svc["WatchdogSec"] == ["30"]
    assert svc["Restart"] == ["on-failure"]
    assert svc["RestartSec"] == ["2"]
    assert svc["ExecStart"] == ["/usr/local/bin/spotd"]
    assert (svc["User"], svc["Group"]) == (["spotd"], ["spotd"])
    assert "SPOTD_HOME=/var/lib/spotd" in svc["Environment"]
    assert svc["StateDirectory"] == ["spotd"]


def test_jobs_survive_a_daemon_restart() -> None:
    """Only the daemon is signalled on stop/restart, and nothing else that a restart tears down
    (a private /tmp, a runtime directory, the OOM policy) can take running jobs with it."""
    svc = settings(units.render_units()["spotd.service"])["Service"]
    assert svc["KillMode"] == ["process"]
    assert svc["PrivateTmp"] == ["no"]
    assert "RuntimeDirectory" not in svc
    assert svc["OOMPolicy"] == ["continue"]


def test_daemon_sandbox_leaves_jobs_what_they_need() -> None:
    svc = settings(units.render_units()["spotd.service"])["Service"]
    for on in (
        "NoNewPrivileges",
        "ProtectKernelTunables",
        "ProtectControlGroups",
        "RestrictSUIDSGID",
        "LockPersonality",
    ):
        assert svc[on] == ["yes"], on
    assert svc["ProtectSystem"] == ["strict"]
    assert svc["ProtectHome"] == ["read-only"]
    assert svc["ReadWritePaths"] == ["/var/lib/spotd /tmp /var/tmp"]
    # GPUs and JITs: these would break jobs.
    for off in (
        "PrivateDevices",
        "DevicePolicy",
        "ProtectClock",
        "MemoryDenyWriteExecute",
        "SystemCallFilter",
    ):
        assert off not in svc, off


def test_load_balancer_template() -> None:
    svc = settings(units.render_units()["spotd-lb@.service"])["Service"]
    assert svc["ExecStart"] == ["/usr/bin/python3 -m spotd.lb --port %i $SPOTD_LB_ARGS"]
    assert svc["Type"] == ["exec"]
    assert svc["Restart"] == ["always"]
    assert svc["PrivateTmp"] == ["yes"]
    assert svc["PrivateDevices"] == ["yes"]
    assert svc["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "RemoveIPC" not in svc  # would delete the shared memory of jobs (same user)


def test_custom_values_are_substituted() -> None:
    out = units.render_units(
        exec_path="/opt/spotd/.venv/bin/spotd",
        python="/opt/spotd/.venv/bin/python",
        user="gpuops",
        home="/var/lib/spotd/prod",
    )
    svc = settings(out["spotd.service"])["Service"]
    assert svc["ExecStart"] == ["/opt/spotd/.venv/bin/spotd"]
    assert (svc["User"], svc["Group"]) == (["gpuops"], ["gpuops"])
    assert "SPOTD_HOME=/var/lib/spotd/prod" in svc["Environment"]
    assert svc["StateDirectory"] == ["spotd/prod"]
    assert svc["ReadWritePaths"] == ["/var/lib/spotd/prod /tmp /var/tmp"]
    lb = settings(out["spotd-lb@.service"])["Service"]
    assert lb["ExecStart"][0].startswith("/opt/spotd/.venv/bin/python -m spotd.lb --port %i")
    assert lb["User"] == ["gpuops"]


def test_a_home_outside_var_lib_gets_no_state_directory() -> None:
    svc = settings(units.render_units(home="/srv/spotd")["spotd.service"])["Service"]
    assert "StateDirectory" not in svc
    assert svc["ReadWritePaths"] == ["/srv/spotd /tmp /var/tmp"]


def test_percent_signs_are_escaped_as_literals() -> None:
    svc = settings(units.render_units(home="/var/lib/spot%d")["spotd.service"])["Service"]
    assert "SPOTD_HOME=/var/lib/spot%%d" in svc["Environment"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"exec_path": "bin/spotd"},  # relative
        {"exec_path": "/opt/my spotd/bin/spotd"},  # whitespace
        {"home": "/var/lib/spotd\nExecStartPre=/bin/rm"},  # a line injected into the unit
        {"home": "/var/lib/../etc"},
        {"python": "/usr/bin/python3 -X dev"},
        {"user": "root"},
        {"user": "Spot D"},
        {"user": ""},
    ],
)
def test_unsafe_values_are_refused(kwargs: dict[str, str]) -> None:
    with pytest.raises(units.UnitError):
        units.render_units(**kwargs)


def test_install_writes_readable_units(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "systemd" / "system"
    written = units.install_units(target, exec_path="/opt/s/bin/spotd", user="svc")
    assert sorted(p.name for p in written) == ["spotd-lb@.service", "spotd.service"]
    for p in written:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert "ExecStart=/opt/s/bin/spotd\n" in (target / "spotd.service").read_text()
    units.install_units(target, exec_path="/opt/s/bin/spotd", user="svc")  # again: overwrites
    assert sorted(p.name for p in target.iterdir()) == ["spotd-lb@.service", "spotd.service"]


def test_install_units_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        units.install_units_command,
        [
            "--dir",
            str(tmp_path),
            "--user",
            "svc",
            "--exec",
            "/opt/s/bin/spotd",
            "--python",
            "/opt/s/bin/python",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'spotd.service'}" in result.output
    assert "systemctl daemon-reload" in result.output
    text = (tmp_path / "spotd-lb@.service").read_text()
    assert "ExecStart=/opt/s/bin/python -m spotd.lb --port %i" in text


def test_install_units_command_defaults_to_this_environment(tmp_path: Path) -> None:
    import sys

    result = CliRunner().invoke(units.install_units_command, ["--print"])
    assert result.exit_code == 0, result.output
    assert f"ExecStart={sys.executable} -m spotd.lb" in result.output
    sibling = Path(sys.executable).parent / "spotd"
    expected = sibling if sibling.exists() else Path(units.DEFAULT_EXEC)
    assert f"ExecStart={expected}\n" in result.output


def test_install_units_command_rejects_a_bad_user(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        units.install_units_command, ["--dir", str(tmp_path), "--user", "root"]
    )
    assert result.exit_code == 2
    assert "root" in result.output
    assert list(tmp_path.iterdir()) == []
