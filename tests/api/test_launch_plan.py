"""The one launch request (``spotd.control.submit``): every refusal, table-driven, and the
property that matters most: a launch stores exactly the plan its dry run showed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from spotd.api.app import refusal_status
from spotd.control.submit import (
    InvalidRequest,
    LaunchRequest,
    NotPermitted,
    Plan,
    QuotaExceeded,
    Refused,
    UnknownProject,
    check_files,
    check_runnable,
    launch_project,
    parse_deadline,
    parse_task,
    place,
    plan_submission,
    submit,
)
from spotd.pricing.catalog import default_local_catalog
from spotd.spec import load_task
from spotd.store import AsyncStore

CATALOG = default_local_catalog()
NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("yaml", "infra", "phrase"),
    [
        ("run: [unclosed", None, "invalid task YAML"),
        ("resources: {acclerators: A100}\nrun: x", None, "invalid task YAML"),
        ("run: a\n---\nrun: b\n", None, "expected one task, the file has 2"),
        ("run: x", "aws//x", "--infra 'aws//x'"),
    ],
)
async def test_a_task_that_cannot_be_read_is_invalid(
    yaml: str, infra: str | None, phrase: str
) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await parse_task(LaunchRequest(yaml=yaml, infra=infra))
    assert phrase in exc.value.message


async def test_yaml_issues_come_with_key_path_and_line() -> None:
    with pytest.raises(InvalidRequest) as exc:
        await parse_task(
            LaunchRequest(yaml="name: x\nresources:\n  acclerators: A100:1\nrun: echo\n")
        )
    [issue] = exc.value.details
    assert issue["line"] == 3 and "accelerators" in issue["message"]


@pytest.mark.parametrize(
    ("yaml", "phrase"),
    [
        ("name: x", "`run` is required"),
        ("run: x\nservice: {readiness_probe: /}\n", "use `spotctl serve up`"),
    ],
)
def test_only_a_runnable_job_is_a_managed_job(yaml: str, phrase: str) -> None:
    with pytest.raises(InvalidRequest, match=phrase):
        check_runnable(load_task("t.yaml", text=yaml))


def test_placement_is_cheapest_first_or_refused_naming_why() -> None:
    cands = place(
        load_task("t.yaml", text="resources: {cpus: 1+, use_spot: true}\nrun: x"),
        CATALOG,
        enabled_providers=["local"],
    )
    assert len(cands) > 1
    assert [c.expected_cost for c in cands] == sorted(c.expected_cost for c in cands)
    with pytest.raises(InvalidRequest, match=r"no feasible placement: .*A100"):
        place(
            load_task("t.yaml", text="resources: {accelerators: A100:16}\nrun: x"),
            CATALOG,
            enabled_providers=["local"],
        )


@pytest.mark.parametrize(
    ("asked", "scope", "expected"),
    [
        ("default", None, "default"),  # the admin: wherever it asks
        ("ml", None, "ml"),
        ("default", "ml", "ml"),  # a project token: "default" means its own project
        ("ml", "ml", "ml"),
        ("cv", "ml", NotPermitted),
    ],
)
def test_a_project_token_launches_only_into_its_project(
    asked: str, scope: str | None, expected: str | type[Exception]
) -> None:
    if isinstance(expected, str):
        assert launch_project(asked, scope) == expected
    else:
        with pytest.raises(expected, match="a token of project ml cannot launch into project cv"):
            launch_project(asked, scope)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("6h", NOW + 6 * 3600),
        ("90s", NOW + 90),
        ("2030-01-02T03:04:05+00:00", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()),
        ("2030-01-02T03:04:05", datetime(2030, 1, 2, 3, 4, 5).astimezone().timestamp()),
        ("soon", InvalidRequest),
    ],
)
def test_a_deadline_is_a_duration_from_now_or_a_time(
    raw: str, expected: float | type[Exception]
) -> None:
    if isinstance(expected, float):
        assert parse_deadline(raw, NOW) == pytest.approx(expected)
    else:
        with pytest.raises(expected, match="deadline must be a duration"):
            parse_deadline(raw, NOW)


@pytest.mark.parametrize(
    ("yaml", "phrase"),
    [
        ("workdir: nowhere\nrun: x", "workdir: {base}/nowhere is not a directory"),
        (
            "file_mounts: {/data: missing.txt}\nrun: x",
            "file_mounts: /data: {base}/missing.txt: no such file or directory",
        ),
        (
            "file_mounts: {/etc: present.txt}\nrun: x",
            "file_mounts: /etc: would overwrite a system directory",
        ),
    ],
)
def test_bad_local_paths_are_refused_naming_the_path(
    tmp_path: Path, yaml: str, phrase: str
) -> None:
    (tmp_path / "present.txt").write_text("x")
    with pytest.raises(InvalidRequest) as exc:
        check_files(load_task("t.yaml", text=yaml), tmp_path)
    assert phrase.format(base=tmp_path) in exc.value.message


def test_relative_paths_resolve_against_the_clients_directory(tmp_path: Path) -> None:
    (tmp_path / "wd").mkdir()
    (tmp_path / "present.txt").write_text("x")
    task = load_task("t.yaml", text="workdir: wd\nfile_mounts: {/data: present.txt}\nrun: x")
    check_files(task, tmp_path)  # no refusal


@pytest.mark.parametrize(
    ("refusal", "status"),
    [
        (InvalidRequest("x"), 400),
        (NotPermitted("x"), 403),
        (QuotaExceeded("x"), 403),
        (UnknownProject("x"), 404),
        (Refused("x"), 400),
    ],
)
def test_each_kind_of_refusal_has_its_http_status(refusal: Refused, status: int) -> None:
    assert refusal_status(refusal) == status


# -- plan and submit against a store in memory -------------------------------------------


async def _project(store: AsyncStore, name: str, **limits: Any) -> None:
    await store.create_project(
        name=name,
        gpu_quota=limits.pop("gpu_quota", None),
        token_hash=f"hash-{name}",
        now=NOW,
        **limits,
    )


@dataclass(frozen=True)
class _Settings:
    home: Path
    home_tag: str = "t"

    @property
    def cas_dir(self) -> Path:
        return self.home / "cas"


GPU_JOB = "resources: {accelerators: T4:1, use_spot: true}\nrun: x\n"


async def _plan(store: AsyncStore, yaml: str, **kw: Any) -> Plan:
    req = LaunchRequest(yaml=yaml, **kw)
    return await plan_submission(
        req, scope=None, catalog=CATALOG, providers={}, store=store, now=NOW
    )


async def _submit(plan: Plan, store: AsyncStore, home: Path, started: list[int]) -> Any:
    return await submit(plan, settings=_Settings(home), store=store, start=started.append)


async def test_a_launch_stores_the_plan_its_dry_run_showed(
    store: AsyncStore, tmp_path: Path
) -> None:
    dry = await _plan(store, GPU_JOB, name="mine", deadline="2h")
    plan = await _plan(store, GPU_JOB, name="mine", deadline="2h")
    assert plan == dry  # same request, same store: the same plan
    started: list[int] = []
    job = await _submit(plan, store, tmp_path, started)
    [created] = await store.list_jobs()
    assert started == [job.id] == [created.id]
    stored = (created.name, created.project, created.deadline, created.submitted_at)
    assert stored == ("mine", "default", NOW + 7200, NOW)
    assert created.resources == plan.task.resources_summary()
    assert created.gpus == plan.gpus == 1  # sim-t4-1: one T4


async def test_quota_is_checked_when_planning_and_again_when_storing(
    store: AsyncStore, tmp_path: Path
) -> None:
    await _project(store, "ml", gpu_quota=1)
    first = await _plan(store, GPU_JOB, project="ml")
    second = await _plan(store, GPU_JOB, project="ml")  # planned while nothing is active
    await _submit(first, store, tmp_path, [])
    with pytest.raises(QuotaExceeded, match="project ml: GPU quota 1, 1 in use by 1 active job"):
        await _submit(second, store, tmp_path, [])
    assert len(await store.list_jobs()) == 1
    with pytest.raises(QuotaExceeded) as exc:
        await _plan(store, GPU_JOB, project="ml")
    assert exc.value.details == {
        "project": "ml",
        "limit": "gpu_quota",
        "gpu_quota": 1,
        "gpus_in_use": 1.0,
        "active_jobs": 1,
        "gpus_requested": 1.0,
    }


@pytest.mark.parametrize(
    ("limits", "yaml", "phrase"),
    [
        ({"max_nodes_per_job": 2}, "num_nodes: 3\nrun: x\n", "at most 2 nodes per job"),
        ({"max_jobs": 1}, "run: x\n", "at most 1 active jobs, 1 active"),
        ({"gpu_quota": 8}, "resources: {instance_type: sim-a100-8}\nrun: x\n", "GPU quota 8"),
    ],
)
async def test_every_limit_is_refused_when_planning_and_when_storing(
    store: AsyncStore, tmp_path: Path, limits: dict[str, Any], yaml: str, phrase: str
) -> None:
    """One job is in; the admin then sets the limit: a job planned before is refused by the
    store's insert, and a new plan is refused too."""
    await _project(store, "ml")
    running = await _plan(store, yaml, project="ml")
    planned = await _plan(store, yaml, project="ml")
    await _submit(running, store, tmp_path, [])
    await store.update_project("ml", now=NOW, **limits)
    with pytest.raises(QuotaExceeded, match=phrase):
        await _submit(planned, store, tmp_path, [])
    with pytest.raises(QuotaExceeded, match=phrase):
        await _plan(store, yaml, project="ml")
    assert len(await store.list_jobs()) == 1


async def test_an_unknown_project_is_refused_but_default_needs_no_row(store: AsyncStore) -> None:
    assert (await _plan(store, GPU_JOB)).project == "default"
    with pytest.raises(UnknownProject, match="no project 'ml': create it"):
        await _plan(store, GPU_JOB, project="ml")
