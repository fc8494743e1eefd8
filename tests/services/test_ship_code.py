"""Services ship their code like jobs: `serve up` / `serve update` pack the workdir and local
file_mounts on the client, upload what the daemon lacks, and every replica restores them
before its run, never reading the client's (or the daemon's) path again.

Real daemon, real replicas on the local provider: each replica runs ``server.py`` from its
workdir, which imports a module shipped beside it and reads a mounted file, and answers with
both. The sources are deleted right after the upload, so a replica that served them can only
have read the package; a rolling update with changed files moves every replica onto the new
package.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

from spotd.sdk.client import ApiError
from spotd.sdk.client_serve import (
    serve_down,
    serve_events,
    serve_status,
    serve_up,
    serve_update,
    wait_service,
)

from .conftest import ready
from .shipping import answers, remove_sources, spec_text, write_sources


@pytest.mark.slow
async def test_replicas_serve_the_uploaded_workdir_and_mount_and_roll_onto_new_code(
    serve_daemon, tmp_path, monkeypatch
):
    d = serve_daemon
    monkeypatch.chdir(tmp_path)  # relative workdir and mount source: the client's cwd
    write_sources(tmp_path, "v1")
    async with d.client() as c:
        svc = await serve_up(c, spec_text(tmp_path), filename="shipped.yaml")
        # two packages travelled: the workdir (2 files) and the mount (1 file)
        assert svc["upload"]["packages"] == 2 and svc["upload"]["files"] == 3, svc["upload"]
        remove_sources(tmp_path)  # from here on, only the packages exist
        svc = await wait_service(c, "shipped", ready(2), timeout=60, what="2 READY replicas (v1)")
        assert await answers(svc["endpoint"]) == {"code-v1 note-v1"}
        for r in svc["replicas"]:  # each agent was handed packages, not the client's paths
            agent_json = d.home / "local" / "instances" / r["instance_id"] / "agent.json"
            cfg = json.loads(agent_json.read_text())
            assert cfg["workdir"].startswith("cas:"), cfg["workdir"]
            assert [v[:4] for v in cfg["file_mounts"].values()] == ["cas:"], cfg["file_mounts"]

        # a rolling update with changed files: every replica ends up on the new package
        write_sources(tmp_path, "v2")
        upd = await serve_update(c, "shipped", spec_text(tmp_path), filename="shipped.yaml")
        assert upd["version"] == 2 and upd["upload"]["uploaded_blobs"] >= 2, upd
        remove_sources(tmp_path)

        def rolled(s: dict) -> bool:
            live = [r for r in s["replicas"] if r["ended_at"] is None]
            return ready(2, version=2)(s) and all(r["version"] == 2 for r in live)

        svc = await wait_service(c, "shipped", rolled, timeout=90, what="v2 replicas only")
        assert await answers(svc["endpoint"]) == {"code-v2 note-v2"}
        events = [e["message"] for e in await serve_events(c, "shipped")]
        await serve_down(c, "shipped")
        await wait_service(c, "shipped", lambda s: s["status"] == "DOWN", timeout=30)
    # each version's packages are in the service's events, as a job's are in its own
    assert any(m.startswith("v1 workdir: 2 files") for m in events), events
    assert any(m.startswith("v2 file_mounts ") and ": 1 files" in m for m in events), events


async def test_a_daemon_host_workdir_is_refused_unless_uploaded(serve_daemon, tmp_path):
    """A service may not name a path on the daemon's host (``/root/.aws`` as a workdir) unless
    the admin allowed it under ``file_roots``: 403, nothing stored."""
    d = serve_daemon
    secret_dir = tmp_path / "daemon-side"
    secret_dir.mkdir()
    (secret_dir / "credentials").write_text("hunter2\n")
    yaml = spec_text(tmp_path).replace("workdir: app", f"workdir: {secret_dir}")
    async with d.client() as c:
        with pytest.raises(ApiError) as info:
            await serve_up(c, yaml, filename="x.yaml", host_paths=True)
        assert info.value.status == 403, info.value
        assert "outside its file_roots" in str(info.value)
        assert await serve_status(c) == []


async def test_a_missing_workdir_fails_on_the_client_before_any_request(serve_daemon, tmp_path):
    d = serve_daemon
    r = _spotctl(d, tmp_path, "serve", "up", str(_spec(tmp_path)))
    assert r.returncode == 1
    assert "workdir" in r.stderr and "is not a directory" in r.stderr, r.stderr
    async with d.client() as c:
        assert await serve_status(c) == []


def _spec(tmp: Path) -> Path:
    spec = tmp / "shipped.yaml"
    spec.write_text(spec_text(tmp))
    return spec


def _spotctl(d, cwd: Path, *args: str):
    return subprocess.run(
        [sys.executable, "-m", "spotd.cli.main", *args],
        env=d.env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
async def test_spotctl_serve_up_uploads_and_reports_it(serve_daemon, tmp_path):
    """The CLI path: `spotctl serve up -o json` from the project's folder uploads the files
    (the JSON says what travelled) and the replicas serve them."""
    d = serve_daemon
    write_sources(tmp_path, "cli")
    r = _spotctl(d, tmp_path, "serve", "up", str(_spec(tmp_path)), "-o", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["upload"]["packages"] == 2, data
    remove_sources(tmp_path)
    async with d.client() as c:
        svc = await wait_service(c, "shipped", ready(2), timeout=60, what="2 READY replicas")
        assert await answers(svc["endpoint"], 4) == {"code-cli note-cli"}
        await serve_down(c, "shipped")
        await wait_service(c, "shipped", lambda s: s["status"] == "DOWN", timeout=30)


def _on_a_terminal(d, cwd: Path, *args: str) -> tuple[int, str, str]:
    """``spotctl`` with its stderr on a pseudo-terminal (stdout piped, as a script reads it):
    (exit code, stdout, everything written to the terminal)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in d.env.items() if k not in ("NO_COLOR", "TERM")} | {"TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "spotd.cli.main", *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        stdout, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(10)
        os.close(master)
    return proc.returncode, stdout.decode(), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
async def test_spotctl_shows_progress_on_a_terminal_plain_lines_in_a_pipe_none_for_json(
    serve_daemon, tmp_path
):
    d = serve_daemon
    spec = str(_spec(tmp_path))
    write_sources(tmp_path, "tty")
    rc, stdout, screen = _on_a_terminal(d, tmp_path, "serve", "up", spec, "--wait")
    assert rc == 0, (stdout, screen)
    assert "packing workdir" in screen and "replicas READY" in screen, screen
    assert "\x1b[" in screen  # drawn, not printed
    assert "Service shipped is READY: 2 replica(s)" in stdout

    # stderr to a pipe (a CI log): one plain line per phase and per change, no escapes
    write_sources(tmp_path, "pipe")
    r = _spotctl(d, tmp_path, "serve", "update", "shipped", spec, "--wait")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith("Packing workdir, "), lines
    assert lines[1].startswith("Uploading "), lines
    assert lines[-1] == "shipped: 2/2 READY (2 READY)", lines
    assert "version 2 is READY" in r.stdout
    async with d.client() as c:
        svc = await serve_status(c, "shipped")
        assert await answers(svc["endpoint"], 4) == {"code-pipe note-pipe"}

    # -o json: stdout is the JSON alone, stderr stays empty; the same files travel no more
    r = _spotctl(d, tmp_path, "serve", "update", "shipped", spec, "--wait", "-o", "json")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    data = json.loads(r.stdout)
    assert data["version"] == 3 and data["upload"]["uploaded_blobs"] == 0, data
    async with d.client() as c:
        await serve_down(c, "shipped")
        await wait_service(c, "shipped", lambda s: s["status"] == "DOWN", timeout=30)
