"""A checkpoint report reaching a daemon that does not run the job (several daemons on one
database: an agent reports to whichever daemon its ``daemon_url`` reaches): the controller
records it on the job's row for the daemon that runs the job, wakes that daemon's worker for
it (a fresh checkpoint is what a decided return waits for), and keeps nothing of a job it
does not run but the report's time (``Controller.checkpointed``)."""

from __future__ import annotations

import json
from pathlib import Path

from spotd.config import load_settings
from spotd.control.jobs import Controller
from spotd.metrics import DaemonMetrics
from spotd.store import AsyncStore, Store

TASK = {
    "run": "x",
    "job_recovery": {"strategy": "DEADLINE", "expected_duration": "1000s", "deadline": "1h"},
}


async def test_a_report_for_a_job_run_elsewhere_lands_on_its_row(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, env={"SPOTD_OBSERVE_INTERVAL": "3600"})
    store = AsyncStore(Store.open(f"sqlite:///{tmp_path / 'state.db'}"))
    ctl = Controller(settings=settings, store=store, providers={}, metrics=DaemonMetrics())
    try:
        job = await store.create_job(
            name="j",
            task_id_prefix="spotd-abcd-j",
            spec_json=json.dumps(TASK),
            spec_redacted_json=json.dumps(TASK),
            resources="cpu",
            submitted_at=0.0,
        )
        assert not ctl.workers.runs(job.id)  # another daemon runs it
        woken: list[tuple[str, int]] = []
        ctl.elsewhere = lambda kind, target: woken.append((kind, target))  # NOTIFY's seam
        await ctl.checkpointed(job.id, 1, 0.3, 100.0, now=101.5)
        # the daemon that runs it is woken (a decided return moves at this checkpoint)...
        assert woken == [("j", job.id)]
        await ctl.checkpointed(job.id, 1, 0.3, 100.0, now=106.5)
        assert woken == [("j", job.id)]  # ...and not by a keep-alive repeating the sync
        row = await store.require_job(job.id)
        seen = (row.checkpoint_attempt, row.checkpoint_synced_at, row.checkpoint_received_at)
        assert seen == (1, 100.0, 101.5)
        assert row.work_done_seconds == 300.0
        assert ctl.memory.known(job.id) is None  # its task parsed, not kept here
    finally:
        await ctl.shutdown()
        await store.close()
