"""A project runs on the operator's own machines (local, Slurm) only where the admin allows it.

Attack: a project the admin did not allow on the daemon's host or on the operator's Slurm
cluster gets its work there anyway. Before: only ``providers.local.projects`` existed, and only
the launch plan and the local provider read it; Slurm had no list, and a relaunch (the job
controller) or a service replica (the replica planner) was placed without knowing the project
at all. After: ``providers.<local|slurm>.projects`` (alias ``allow_projects``; ``default``
always allowed) is one rule, ``spotd.providers.allowlist.barred_providers``, read by the launch
plan (a barred provider's capacity is no choice; a launch only it could place is a 403 naming
the setting), every relaunch (``Controller.placeable``) and the replica planner
(``ServiceController.plan_for``).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from spotd.config import load_settings
from spotd.control.jobs import Controller
from spotd.control.services import ServiceController
from spotd.control.submit import LaunchRequest, NotPermitted, Plan, plan_submission
from spotd.metrics import DaemonMetrics
from spotd.pricing.catalog import default_local_catalog
from spotd.providers.allowlist import (
    allowlist_errors,
    barred_providers,
    provider_refusal,
    without_barred,
)
from spotd.providers.local_tenancy import LocalTenancy, TenancyError
from spotd.recovery import strategies
from spotd.sdk.client import ApiError
from spotd.spec import load_task
from spotd.store import AsyncStore, Store
from spotd.types import CatalogEntry, RecoveryStrategy
from tests.conftest import FAST_ENV, DaemonProc, kill_instance_groups
from tests.e2e.helpers import wait_job

TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}


def _entry(provider: str, price: float) -> CatalogEntry:
    return CatalogEntry(
        provider=provider,
        region=f"{provider}-r",
        zone=f"{provider}-z",
        instance_type=f"{provider}-cpu-8",
        vcpus=8,
        memory_gb=32,
        accelerator=None,
        accelerator_count=0,
        ondemand_price=price,
        spot_price=None,
    )


SLURM = _entry("slurm", 0.10)  # the operator's own cluster: cheapest, so chosen when allowed
AWS = _entry("aws", 0.40)
CPU_TASK = "resources: {cpus: 4+}\nrun: echo hi\n"


# -- the rule, table-driven -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configs", "project", "barred"),
    [
        ({}, "b", set()),  # nothing configured: nothing barred
        ({"local": {}, "slurm": {}}, "b", set()),  # no list: every project (as before)
        ({"local": {"projects": ["a"]}}, "a", set()),
        ({"local": {"projects": ["a"]}}, "b", {"local"}),
        ({"local": {"projects": ["a"]}}, "default", set()),  # the admin's project always
        ({"slurm": {"projects": ["a"]}}, "b", {"slurm"}),
        ({"slurm": {"allow_projects": ["a"]}}, "b", {"slurm"}),  # the alias
        ({"slurm": {"allow_projects": ["a"]}}, "a", set()),
        ({"local": {"projects": []}, "slurm": {"projects": []}}, "a", {"local", "slurm"}),
        ({"local": {"projects": []}, "slurm": {"projects": []}}, "default", set()),
        ({"local": {"projects": ["a"]}, "slurm": {"projects": ["b"]}}, "a", {"slurm"}),
        ({"local": {"projects": ["a"]}, "slurm": {"projects": ["b"]}}, "b", {"local"}),
        ({"aws": {"projects": ["a"]}, "k8s": {"projects": ["a"]}}, "b", set()),  # rented: no list
        ({"slurm": {"projects": "a"}}, "a", {"slurm"}),  # malformed: fail closed
        ({"slurm": {"projects": [1]}}, "default", set()),  # ... but default still runs
    ],
)
def test_barred_providers(
    configs: dict[str, dict[str, Any]], project: str, barred: set[str]
) -> None:
    got = barred_providers(project, configs)
    assert set(got) == barred
    for provider, why in got.items():
        assert f"providers.{provider}.projects" in why and f"project {project} " in why


def test_a_refusal_names_who_is_allowed() -> None:
    why = provider_refusal("b", "slurm", {"projects": ["a"]})
    assert why is not None
    assert "Slurm" in why and "a, default" in why and "providers.slurm.projects" in why


def test_without_barred_drops_only_the_barred_providers_entries() -> None:
    catalog = [SLURM, AWS, *default_local_catalog()]
    kept = without_barred(catalog, {"slurm": "no"})
    assert SLURM not in kept and AWS in kept and len(kept) == len(catalog) - 1


@pytest.mark.parametrize(
    ("configs", "bad"),
    [
        ({"local": {"projects": ["a"]}, "slurm": {"allow_projects": ["b"]}}, []),
        ({"slurm": {"projects": "a"}}, ["providers.slurm.projects"]),
        ({"local": {"allow_projects": [""]}}, ["providers.local.projects"]),
        ({"aws": {"projects": "ignored"}}, []),
    ],
)
def test_malformed_allowlists_are_named(configs: dict[str, Any], bad: list[str]) -> None:
    errors = allowlist_errors(configs)
    assert len(errors) == len(bad)
    for err, setting in zip(errors, bad, strict=True):
        assert setting in err


def test_local_tenancy_reads_the_same_list() -> None:
    assert LocalTenancy.from_config({"allow_projects": ["a"]}).projects == frozenset({"a"})
    with pytest.raises(TenancyError, match=r"providers\.local\.projects"):
        LocalTenancy.from_config({"projects": "a"})


# -- the launch plan --------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    s = await AsyncStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        for name in ("a", "b"):
            await s.create_project(name=name, gpu_quota=None, token_hash=f"h-{name}", now=0.0)
        yield s
    finally:
        await s.close()


async def _plan(
    store: AsyncStore,
    project: str,
    configs: dict[str, dict[str, Any]],
    catalog: list[CatalogEntry],
) -> Plan:
    return await plan_submission(
        LaunchRequest(yaml=CPU_TASK, project=project),
        scope=None,
        catalog=catalog,
        providers=dict.fromkeys({e.provider for e in catalog}),  # type: ignore[arg-type]
        store=store,
        now=0.0,
        provider_configs=configs,
    )


async def test_a_barred_slurm_is_no_choice_at_launch(store: AsyncStore) -> None:
    configs: dict[str, dict[str, Any]] = {"slurm": {"projects": ["a"]}, "aws": {}}
    allowed = await _plan(store, "a", configs, [SLURM, AWS])
    assert allowed.candidates[0].provider == "slurm"
    barred = await _plan(store, "b", configs, [SLURM, AWS])
    assert {c.provider for c in barred.candidates} == {"aws"}


async def test_a_launch_only_a_barred_slurm_could_place_is_403_naming_the_setting(
    store: AsyncStore,
) -> None:
    configs: dict[str, dict[str, Any]] = {"slurm": {"projects": ["a"]}}
    with pytest.raises(NotPermitted, match=r"providers\.slurm\.projects"):
        await _plan(store, "b", configs, [SLURM])
    # local is enabled too, but its simulated types are no stand-in for a barred Slurm
    local = [e for e in default_local_catalog() if not e.accelerator]
    with pytest.raises(NotPermitted, match=r"providers\.slurm\.projects"):
        await _plan(store, "b", configs, [SLURM, *local])


# -- every relaunch, and the replica planner --------------------------------------------------


class _FakeProvider:
    def __init__(self, entries: list[CatalogEntry]) -> None:
        self._entries = entries

    def catalog(self) -> list[CatalogEntry]:
        return self._entries


@pytest.fixture
async def controllers(tmp_path: Path) -> AsyncIterator[tuple[Controller, ServiceController]]:
    providers_cfg = {"slurm": {"projects": ["a"]}, "aws": {}}
    settings = load_settings(
        tmp_path, env={**FAST_ENV, "SPOTD_PROVIDERS_JSON": json.dumps(providers_cfg)}
    )
    store = AsyncStore(Store.open(settings.db_url))
    metrics = DaemonMetrics()
    providers: dict[str, Any] = {"slurm": _FakeProvider([SLURM]), "aws": _FakeProvider([AWS])}
    ctl = Controller(settings=settings, store=store, providers=providers, metrics=metrics)
    svc = ServiceController(settings=settings, store=store, observer=ctl.observer, metrics=metrics)
    try:
        yield ctl, svc
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("project", "provider", "never"), [("a", "slurm", set()), ("b", "aws", {"slurm"})]
)
def test_a_relaunch_never_chooses_a_barred_provider(
    controllers: tuple[Controller, ServiceController],
    project: str,
    provider: str,
    never: set[str],
) -> None:
    ctl, _ = controllers
    task = load_task("t.yaml", text=CPU_TASK)
    catalog = ctl.placeable(project, task)  # what Controller._place hands next_placement
    view = strategies.JobView(
        strategy=RecoveryStrategy.EAGER_NEXT_REGION,
        request=task.resource_request(),
        num_nodes=1,
        submitted_at=0.0,
    )
    decision = strategies.next_placement(view, catalog=catalog, history=[], now=10.0)
    assert isinstance(decision, strategies.Relaunch), decision
    assert decision.candidate.provider == provider
    assert not {c.provider for c in (decision.candidate, *decision.runner_ups)} & never
    assert not {e.provider for e in catalog} & never


@pytest.mark.parametrize(("project", "providers"), [("a", {"slurm", "aws"}), ("b", {"aws"})])
def test_the_replica_planner_never_chooses_a_barred_provider(
    controllers: tuple[Controller, ServiceController], project: str, providers: set[str]
) -> None:
    _, svc = controllers
    task = load_task("t.yaml", text=CPU_TASK)
    plan = svc.plan_for(task, project)
    assert {z.zone.provider for z in plan.zones} == providers
    assert {k.provider for k, _market in plan.places} == providers


# -- end to end: a real daemon ----------------------------------------------------------------


@pytest.fixture
def allowlist_daemon() -> Iterator[DaemonProc]:
    home = Path(f"/tmp/spotd-al{os.getpid()}-{uuid.uuid4().hex[:6]}")
    d = DaemonProc(home, {"SPOTD_PROVIDERS_JSON": json.dumps({"local": {"projects": ["a"]}})})
    d.start()
    try:
        yield d
    finally:
        d.stop()
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)


async def test_only_an_allowed_project_runs_on_the_local_provider(
    allowlist_daemon: DaemonProc,
) -> None:
    d = allowlist_daemon
    async with d.client() as c:
        for name in ("a", "b"):
            await c.create_project(name)
        with pytest.raises(ApiError) as refused:
            await c.launch("name: b\nrun: echo b\n", filename="b.yaml", project="b")
        assert refused.value.status == 403
        assert "providers.local.projects" in str(refused.value)  # it names the setting
        assert await c.jobs() == []
        with pytest.raises(ApiError) as refused_svc:  # nor does a service of b
            await c.request(
                "POST",
                "/v1/services",
                json={
                    "yaml": "name: s\nservice: {readiness_probe: /}\nrun: sleep 60\n",
                    "project": "b",
                },
            )
        assert refused_svc.value.status == 403
        assert "providers.local.projects" in str(refused_svc.value)
        a = await c.launch("name: a\nrun: echo from-a\n", filename="a.yaml", project="a")
        done = await wait_job(
            c, a["id"], lambda j: j["status"] in TERMINAL, timeout=60, what="job of a"
        )
    assert done["status"] == "SUCCEEDED", done
