"""A job's page in a real browser: a preemption (``spotctl chaos``) appears live — the second
attempt's band and the notice marker, without a reload — and the job is cancelled from the
page."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.helpers import train_yaml, wait_job, wait_log

from .conftest import run_async, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]


async def _launch_running(d: Any) -> int:
    async with d.client() as c:
        job = await c.launch(train_yaml(steps=2000, step_seconds=0.05), filename="t.yaml")
        await wait_job(c, job["id"], lambda j: j["status"] == "RUNNING", what="running")
        await wait_log(c, job["id"], "step 5 ", attempt=1)
        return int(job["id"])


async def _job(d: Any, job_id: int) -> dict[str, Any]:
    async with d.client() as c:
        job: dict[str, Any] = await c.job(job_id)
        return job


def test_preemption_appears_live_and_the_job_is_cancelled_from_the_page(web_daemon, page, shot):
    job_id = run_async(_launch_running(web_daemon))
    page.goto(web_daemon.login_link())
    page.wait_for_selector("h1:has-text('Jobs')")
    page.click(f"tr[data-job='{job_id}'] a >> nth=0")
    page.wait_for_selector(".band[data-attempt='1']")
    assert page.locator(".band[data-attempt='2']").count() == 0
    assert page.locator(".marker[data-kind='notice']").count() == 0
    wait_until(  # the live stream is on
        lambda: int(page.locator("body").get_attribute("data-updates") or 0) >= 1,
        what="the first live update",
    )

    r = web_daemon.spotctl("chaos", "preempt", str(job_id), "--notice", "2")
    assert r.returncode == 0, r.stderr
    # the page was not reloaded: the stream replaced the timeline
    page.wait_for_selector(".band[data-attempt='2']")
    page.wait_for_selector(".marker[data-kind='notice']")
    page.wait_for_selector(".marker[data-kind='resumed']")
    lanes = page.locator(".tl-lane").all_inner_texts()
    assert len([lane for lane in lanes if "·" in lane]) == 2, lanes  # a new zone after the notice
    assert page.locator("#preemptions tbody tr").count() == 1
    assert "yes" in page.locator("#preemptions tbody tr").inner_text()  # with a notice
    shot("job-preempted")

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("text=Cancel job")
    page.wait_for_selector(".flash:has-text('cancelling job')")
    page.wait_for_selector("#job-status:has-text('CANCELLED')", timeout=60_000)
    job = run_async(_job(web_daemon, job_id))
    assert job["status"] == "CANCELLED", json.dumps(job)[:500]
    # the Cancel button goes once the job has ended, whether the page after the POST was
    # rendered before the cancel finished (the stream removes it) or after
    page.wait_for_selector("#cancel-form", state="detached")
    shot("job-cancelled")
