"""Projects on the daemon's own host are kept apart from each other and from spotd.

Attacks, and what they met before and after:

- A job of project A reads project B's instance directory on the daemon host (B's
  ``agent.json`` holds B's agent token and B's secrets), or ``$SPOTD_HOME/state.db`` (every
  agent token, every project's jobs). Before: every job ran as the daemon's user, so file modes
  could not keep one project from another. After, with ``providers.local.run_as_project_users``:
  each project's agent and job run as ``spotd-p-<project>`` (created by the daemon with
  ``useradd --system``), the instance directory is that user's 0700, the home is 0711 with its
  files 0600: A's ``cat`` of either is "Permission denied" in A's own log.
- A project the admin did not allow on the daemon's host runs there anyway. Before: any project
  could place on the local provider. After: ``providers.local.projects`` lists who may (the
  admin's ``default`` always may); the local provider refuses any other, naming the setting.

Real users, created by the daemon's own code path, removed afterwards. The agents run under
a Python the project users can execute (``providers.local.python``; a venv under root's 0700
home is not): the same thin venv ``test_private_home`` builds.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spotd.providers.local_tenancy import (
    LocalTenancy,
    TenancyError,
    local_refusal,
    privilege_refusal,
    project_user,
)
from spotd.sdk.client import ApiError
from tests.conftest import DaemonProc, kill_instance_groups
from tests.e2e.helpers import logs, wait_job
from tests.security.test_private_home import nobody_python  # noqa: F401 - a fixture

TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}
USERS = ("spotd-p-a", "spotd-p-b")


def _can_make_users() -> str | None:
    """Why real users cannot be made here, None when they can."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("useradd", "userdel", "setpriv"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


@pytest.fixture
def real_users() -> Iterator[None]:
    """Fail under CI, skip elsewhere, where users cannot be made; remove the users made."""
    why = _can_make_users()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"tenant isolation must be tested in CI: {why}")
        pytest.skip(why)
    existed = set()
    for name in USERS:
        try:
            pwd.getpwnam(name)
            existed.add(name)
        except KeyError:
            pass
    try:
        yield
    finally:
        for name in set(USERS) - existed:
            subprocess.run(["userdel", name], capture_output=True, check=False)


@pytest.fixture
def tenant_daemon(real_users: None, nobody_python: str) -> Iterator[DaemonProc]:  # noqa: F811
    home = Path(f"/tmp/spotd-ti{os.getpid()}-{uuid.uuid4().hex[:6]}")
    local = {"projects": ["a", "b"], "run_as_project_users": True, "python": nobody_python}
    d = DaemonProc(home, {"SPOTD_PROVIDERS_JSON": json.dumps({"local": local})})
    d.start()
    try:
        yield d
    finally:
        d.stop()
        for meta in (home / "local" / "state").glob("*/meta.json"):
            with_pid = json.loads(meta.read_text())
            subprocess.run(["kill", "-9", f"-{with_pid['pid']}"], capture_output=True, check=False)
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)


async def _until(c: Any, job_id: int, statuses: set[str]) -> dict[str, Any]:
    job: dict[str, Any] = await wait_job(
        c, job_id, lambda j: j["status"] in statuses, timeout=90, what=f"job {job_id}"
    )
    return job


async def test_a_projects_job_cannot_read_anothers_files_or_spotds_state(
    tenant_daemon: DaemonProc,
) -> None:
    d = tenant_daemon
    async with d.client() as c:
        for name in ("a", "b"):
            await c.create_project(name)
        b = await c.launch(
            "name: b\nsecrets:\n  B_SECRET: the-secret-of-b\nrun: sleep 60\n",
            filename="b.yaml",
            project="b",
        )
        b = await _until(c, b["id"], {"RUNNING", *TERMINAL})
        assert b["status"] == "RUNNING", (b, await c.request("GET", f"/v1/jobs/{b['id']}/events"))
        b_dirs = [
            p.parent
            for p in (d.home / "local" / "instances").glob("*/agent.json")
            if json.loads(p.read_text())["job_id"] == b["id"]
        ]
        assert len(b_dirs) == 1
        b_dir = b_dirs[0]
        assert b_dir.stat().st_uid == pwd.getpwnam("spotd-p-b").pw_uid
        assert b_dir.stat().st_mode & 0o777 == 0o700
        snoop = (
            "name: snoop\n"
            "envs:\n"
            f"  B_DIR: {b_dir}\n"
            f"  DB: {d.home / 'state.db'}\n"
            "run: |\n"
            '  echo "runs as $(id -un)"\n'
            '  cat "$B_DIR/agent.json" || echo "b: refused"\n'
            '  cat "$DB" || echo "db: refused"\n'
            f'  ls {d.home} || echo "home: not listable"\n'
        )
        a = await c.launch(snoop, filename="a.yaml", project="a")
        a = await _until(c, a["id"], TERMINAL)
        text = await logs(c, a["id"])
        await c.cancel(b["id"])
    assert a["status"] == "SUCCEEDED", (a, text)
    assert "runs as spotd-p-a" in text
    assert "b: refused" in text and "db: refused" in text and "home: not listable" in text
    assert text.count("Permission denied") >= 3, text
    assert "the-secret-of-b" not in text and "SQLite format" not in text


async def test_a_project_not_allowed_on_the_local_provider_does_not_run_there(
    tenant_daemon: DaemonProc,
) -> None:
    d = tenant_daemon
    async with d.client() as c:
        await c.create_project("c")
        with pytest.raises(ApiError) as refused:
            await c.launch("name: c\nrun: id -un\n", filename="c.yaml", project="c")
        assert await c.jobs() == []
    assert refused.value.status == 403
    assert "providers.local.projects" in str(refused.value)  # it names the setting
    assert not list((d.home / "local" / "instances").glob("*/agent.json"))


# -- the rules, as pure functions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("projects", "project", "allowed"),
    [
        (None, "anyone", True),
        (["a"], "a", True),
        (["a"], "default", True),  # the admin's own project always runs here
        (["a"], "b", False),
        ([], "a", False),
    ],
)
def test_local_refusal(projects: list[str] | None, project: str, allowed: bool) -> None:
    tenancy = LocalTenancy.from_config({} if projects is None else {"projects": projects})
    refusal = local_refusal(project, tenancy)
    assert (refusal is None) == allowed
    if refusal:
        assert "providers.local.projects" in refusal and project in refusal


@pytest.mark.parametrize(
    ("project", "user"),
    [
        ("a", "spotd-p-a"),
        ("ml-team_2", "spotd-p-ml-team_2"),
        ("ML", None),  # changed to be a user name: a hash keeps it apart from "ml"
        ("x" * 40, None),  # too long: cut, and a hash
    ],
)
def test_project_user(project: str, user: str | None) -> None:
    got = project_user(project)
    assert len(got) <= 32 and got.startswith("spotd-p-")
    if user is not None:
        assert got == user
    else:
        assert got != project_user(project.lower()[:20])


@pytest.mark.parametrize(
    "cfg",
    [
        {"projects": "a"},
        {"projects": [1]},
        {"run_as_project_users": "yes"},
        {"python": 3},
    ],
)
def test_bad_tenancy_config_is_refused(cfg: dict[str, Any]) -> None:
    with pytest.raises(TenancyError, match=r"providers\.local"):
        LocalTenancy.from_config(cfg)


def test_running_as_project_users_needs_privilege_to_switch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenancy = LocalTenancy(run_as_project_users=True)
    assert privilege_refusal(LocalTenancy()) is None
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr("spotd.providers.local_tenancy._effective_caps", lambda: 0)
    refusal = privilege_refusal(tenancy)
    assert refusal is not None and "root" in refusal and "CAP_SETUID" in refusal
