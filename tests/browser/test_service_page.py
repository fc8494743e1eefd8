"""A service's page in a real browser, under load from the services tests' load generator:
its QPS chart moves (live, without a reload) and the autoscaler's decision is drawn on it;
a replica is drained from the page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spotd.sdk.client_serve import serve_up, wait_service
from tests.services.conftest import Load, ready, stub_yaml

from .conftest import run_async, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCALING = """replica_policy:
    min_replicas: 1
    max_replicas: 2
    target_qps_per_replica: 4
    upscale_delay_seconds: 1
    downscale_delay_seconds: 600"""


async def _up(d: Any) -> dict[str, Any]:
    async with d.client() as c:
        await serve_up(c, stub_yaml(replicas=SCALING), filename="svc.yaml")
        svc: dict[str, Any] = await wait_service(c, "svc", ready(1), timeout=40, what="READY")
        return svc


async def _wait_ready(d: Any, n: int) -> dict[str, Any]:
    async with d.client() as c:
        svc: dict[str, Any] = await wait_service(c, "svc", ready(n), timeout=40, what=f"{n}")
        return svc


def _chart_max(page: Any, name: str) -> float:
    raw = page.locator(f"[data-chart='{name}']").get_attribute("data-max") or "0"
    return float(raw)


def test_qps_chart_moves_under_load_and_a_replica_drains(web_daemon, page, shot, tmp_path: Path):
    svc = run_async(_up(web_daemon))
    page.goto(web_daemon.login_link())
    # the signed-in page moves on by itself (a meta refresh): wait for it, or that refresh can
    # land after the next navigation and take the page back to the overview
    page.wait_for_selector("h1:has-text('Jobs')")
    page.goto(web_daemon.base + "/services")
    page.click("a:has-text('svc')")
    page.wait_for_selector("[data-chart='traffic'] canvas")
    before = _chart_max(page, "traffic")
    assert before < 1.0, "no load yet"
    load = Load(
        svc["endpoint"],
        tmp_path,
        "--concurrency",
        "4",
        "--schedule",
        "10:20",
        "--max-seconds",
        "30",
        "--max-requests",
        "400",
    )
    try:
        # the stream redraws the chart: no reload
        wait_until(lambda: _chart_max(page, "traffic") > 4, what="the QPS chart to move")
        run_async(_wait_ready(web_daemon, 2))  # the autoscaler went 1 → 2 on that load
        page.wait_for_selector("#service-events:has-text('autoscaler: target 1 → 2')")
        wait_until(lambda: page.locator("#replicas tr[data-replica]").count() == 2)
        shot("service-under-load")
        result = load.finish(timeout=40)
    finally:
        load.kill()
    assert result["failed"] == 0, result["errors"]
    assert _chart_max(page, "traffic") > 4

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#replicas tr[data-replica] button:has-text('Drain')").first.click()
    page.wait_for_selector(".flash:has-text('draining replica')")
    page.wait_for_selector("#service-events:has-text('drained from the dashboard')")

    # scale: the autoscaler's target, within the policy's bounds (1–2)
    page.fill("#target", "1")
    page.click("#scale-form button")
    page.wait_for_selector(".flash:has-text('target 2 → 1')")
    page.wait_for_selector("#service-events:has-text('set from the dashboard')")
