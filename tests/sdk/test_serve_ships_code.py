"""``spotd.sdk.serve.up`` ships a Task's workdir and file_mounts as ``spotctl serve up`` does:
the replicas run the uploaded code, even once the folders on this machine are gone."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

import spotd
from spotd.sdk import serve
from tests.services.shipping import remove_sources, write_sources

from .test_serve_against_daemon import service, svc_conn, wait_ready  # noqa: F401


@pytest.mark.slow
def test_sdk_serve_up_ships_workdir_and_mounts(
    svc_conn: spotd.Connection,  # noqa: F811
    service: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    write_sources(tmp_path, "sdk")
    target = tmp_path / "restored"
    task = spotd.Task(
        name=service,
        run="exec python server.py",
        workdir=str(tmp_path / "app"),
        file_mounts={str(target): str(tmp_path / "mount")},
        envs={"NOTE_FILE": str(target / "note.txt")},
        service=spotd.Service(readiness_probe="/health", replicas=1),
    ).set_resources(spotd.Resources(cpus="1+"))
    serve.up(task, connection=svc_conn)
    remove_sources(tmp_path)
    svc = wait_ready(service, svc_conn)
    with urllib.request.urlopen(f"{svc.endpoint}/", timeout=10) as resp:
        assert resp.read().decode() == "code-sdk note-sdk"
