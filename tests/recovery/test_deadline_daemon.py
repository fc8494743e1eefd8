"""A DEADLINE job on a real daemon (local provider): paced by the progress its checkpoints
report, it goes to on-demand when a spot outage puts it behind the uniform-progress line and
comes back to spot once it is on the line again and a spot launch is accepted, making before
it breaks: the on-demand attempt ends only after the spot one was launched.

One zone, so the timeline is fixed: 80 s of work due in 320 s (the line: 0.25 s of work per
second), a declared restart of 8 s. Spot is preempted about 4 s in, with 3 s of work saved,
and stays stocked out for 60 s: the job waits for spot while it is ahead, goes on-demand once
it trails the line by more than a restart (3 + 8 < 0.25 t from t = 44 s), and is within a
restart of it again at its first checkpoint there. It then tries spot beside the on-demand
attempt at each checkpoint; the first try (about t = 45 s, the stockout lasting until about
64 s) is refused and the job stays on on-demand, the zone is held for 30 s, and the next try
(about t = 76 s, 46 s of work left) is accepted. About two and a half
minutes: slow.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProc, kill_instance_groups
from tests.e2e.helpers import logs, wait_job, wait_log

pytestmark = pytest.mark.slow

CATALOG = """
provider: local
regions:
  local-east:
    zones:
      local-east-a: {}
instance_types:
  - name: cpu-1
    vcpus: 1
    memory_gb: 4
    accelerator: null
    accelerator_count: 0
    prices:
      local-east: {ondemand: 0.0480, spot: 0.0144}
"""


def _job(*, steps: int, deadline: int, gate: str = "") -> str:
    """``steps`` steps of 0.5 s, due in ``deadline`` s; a checkpoint (and its progress file)
    after every step, while the file ``gate`` exists (if given)."""
    return f"""
name: paced
resources:
  cpus: 1+
  use_spot: true
job_recovery:
  strategy: DEADLINE
  deadline: {deadline}s
  expected_duration: {steps // 2}s
  restart_overhead: 8s
  safety_margin: 2s
run: |
  python3 - <<'EOF'
  import os, time
  d = os.environ["SPOTD_CHECKPOINT_DIR"]
  gate = {gate!r}
  os.makedirs(d, exist_ok=True)
  path = os.path.join(d, "step")
  step = int(open(path).read()) if os.path.exists(path) else 0
  print(f"attempt {{os.environ.get('SPOTD_ATTEMPT')}} from step {{step}}", flush=True)
  def put(name, text):
      with open(os.path.join(d, name + ".tmp"), "w") as f:
          f.write(text)
      os.replace(os.path.join(d, name + ".tmp"), os.path.join(d, name))
  while step < {steps}:
      time.sleep(0.5)
      step += 1
      if not gate or os.path.exists(gate):
          put("step", str(step))
          put("spotd-progress", f"{{step}}/{steps}")
      print(f"step {{step}}", flush=True)
  print("done", flush=True)
  EOF
"""


JOB = _job(steps=160, deadline=320)

TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}


@pytest.fixture
def one_zone_daemon() -> Iterator[DaemonProc]:
    yield from _one_zone({})


@pytest.fixture
def backing_off_daemon() -> Iterator[DaemonProc]:
    """Refused returns back off 80 s (not 10 min doubling to an hour) after two rounds."""
    backoff = {"SPOTD_RETURN_BACKOFF_SECONDS": "80", "SPOTD_RETURN_BACKOFF_CAP_SECONDS": "80"}
    yield from _one_zone(backoff)


def _one_zone(env: dict[str, str]) -> Iterator[DaemonProc]:
    home = Path(f"/tmp/spotd-dl{time.monotonic_ns() % 10**9}")
    home.mkdir(parents=True)
    catalog = home / "catalog.yaml"
    catalog.write_text(CATALOG)
    d = DaemonProc(home, extra_env={"SPOTD_LOCAL_CATALOG": str(catalog), **env})
    d.start()
    try:
        yield d
    finally:
        d.stop()
        kill_instance_groups(home)
        import shutil

        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.timeout(330)
async def test_deadline_job_goes_on_demand_when_behind_and_back_to_spot_when_ahead(
    one_zone_daemon: DaemonProc,
) -> None:
    async with one_zone_daemon.client() as c:
        job = await c.launch(JOB, filename="paced.yaml")
        jid = job["id"]
        await wait_log(c, jid, "step 6\n", attempt=1)
        # the API shows the pace the checkpoints report (progress file: step/160)
        early = await wait_job(
            c, jid, lambda j: (j["pace"] or {}).get("progress_from") == "checkpoint", timeout=30
        )
        await c.chaos("stockout", target="local-east", seconds=60, market="spot")
        await c.chaos("preempt", target=str(jid))
        # between the refused return and the accepted one the job runs on on-demand, and
        # says so: not the market of the refused spot attempt numbered after it
        between = await wait_job(c, jid, _refused_beside_on_demand, timeout=150)
        job = await wait_job(c, jid, lambda j: j["status"] in TERMINAL, timeout=300)
        text = await logs(c, jid)
        events = await c.events(jid)
    assert (between["market"], between["status"]) == ("on-demand", "RUNNING"), between
    assert job["status"] == "SUCCEEDED", job
    assert job["ended_at"] <= job["deadline"], job
    assert 0.0 < early["pace"]["progress"] < 0.5, early["pace"]
    assert job["pace"]["progress"] == 1.0 and job["pace"]["progress_from"] == "checkpoint"
    ran = [a for a in job["attempts"] if a["end_reason"] != "LAUNCH_FAILED"]
    t0 = job["submitted_at"]
    seen = [(a["market"], a["end_reason"], round(a["created_at"] - t0, 1)) for a in ran]
    seen_all = " | ".join(f"{round(e['at'] - t0, 1)} {e['message']}" for e in events)
    assert [a["market"] for a in ran] == ["spot", "on-demand", "spot"], (seen, seen_all)
    assert [a["end_reason"] for a in ran] == ["PREEMPTED", "MIGRATED", "SUCCEEDED"], seen
    # the relaunches resumed from the checkpoints: nothing ran twice from scratch
    assert text.count("from step 0") == 1, text[-2000:]
    messages = " | ".join(e["message"] for e in events)
    assert "behind the uniform-progress line" in messages, messages
    assert "spot launched beside on-demand attempt" in messages, messages
    # make before break: the on-demand attempt ended only once the spot one was launched
    od, back = ran[1], ran[2]
    assert back["created_at"] <= od["ended_at"], (seen, seen_all)
    # the first return was refused during the stockout, and the job stayed on on-demand
    between = [a for a in job["attempts"] if od["attempt"] < a["attempt"] < back["attempt"]]
    assert between and all(a["end_reason"] == "LAUNCH_FAILED" for a in between), seen_all
    assert all(a["created_at"] < od["ended_at"] for a in between), seen_all
    assert "staying on on-demand" in messages, messages


def _refused_beside_on_demand(job: dict) -> bool:
    """An on-demand attempt still runs, and a spot attempt numbered after it was refused."""
    return bool(_rounds(job))


def _ahead(job: dict) -> float:
    """Seconds of checkpointed work the job is ahead of its uniform-progress line."""
    return float((job["pace"] or {}).get("ahead_of_line_seconds", 0.0))


def _running_on_demand(job: dict) -> int | None:
    """The number of the job's on-demand attempt still running, if any."""
    live = [a for a in job["attempts"] if a["market"] == "on-demand" and a["ended_at"] is None]
    return live[-1]["attempt"] if live else None


@pytest.mark.timeout(330)
async def test_a_restarted_daemon_returns_to_spot_only_at_a_fresh_checkpoint(
    one_zone_daemon: DaemonProc,
) -> None:
    """A return to spot moves the job at the first checkpoint after the decision, so that it
    resumes from work just saved. A restarted daemon has seen no checkpoint of the running
    on-demand attempt, and the agent's heartbeats repeat its last sync from before the restart:
    that sync must not pass for the fresh one. The job stops checkpointing (its gate file gone)
    while the daemon is down; after the restart the return rule holds (the job is within a
    restart of the line) and the stockout is over, yet the job stays on on-demand until it
    checkpoints again, and the spot attempt resumes from there.

    120 s of work due in 360 s (the line: 1/3 s of work per second), restart 8 s: spot
    preempted about 4 s in and stocked out, on-demand from about t = 35 s, the first return
    refused at once (the job a restart behind the line); once its checkpoints put it 5 s ahead
    (it gains 2/3 s a second on the line: about 20 s later) the gate goes, before the zone's
    30-s hold lets a second round try, and with no newer checkpoint none can: the restarted
    daemon reads back one refused round, which sets no back-off (two would hold the next try
    for 10 min, ``returns.backoff``). Down until that hold is over; the saved work then stays
    within a restart of the line until about 60 s after the refusal, time for the restarted
    daemon to decide. About two minutes: slow."""
    d = one_zone_daemon
    gate = d.home / "checkpoints-on"
    gate.touch()
    async with d.client() as c:
        job = await c.launch(_job(steps=240, deadline=360, gate=str(gate)), filename="p.yaml")
        jid = job["id"]
        await wait_log(c, jid, "step 6\n", attempt=1)
        await c.chaos("stockout", target="local-east", seconds=600, market="spot")
        await c.chaos("preempt", target=str(jid))
        job = await wait_job(c, jid, lambda j: _running_on_demand(j) is not None, timeout=120)
        od = _running_on_demand(job)
        await wait_job(c, jid, _refused_beside_on_demand, timeout=60)
        # the checkpoints put the job 5 s of work ahead of the line (about 20 s on)
        await wait_job(c, jid, lambda j: _ahead(j) >= 5.0, timeout=60)
        gate.unlink()  # no checkpoint from here until the gate is back
        await asyncio.sleep(1.0)  # a sync in flight lands
        await c.chaos("stockout", target="local-east", seconds=0, market="spot")
        job = await c.job(jid)
    refused = [
        a["ended_at"] or a["created_at"]
        for a in job["attempts"]
        if a["end_reason"] == "LAUNCH_FAILED"
    ]
    assert len(_rounds(job)) == 1, ("killed after more than one refused round", job["attempts"])
    d.kill9()
    # down until a refused return no longer holds the zone: the first step after the restart
    # may decide the return
    await asyncio.sleep(max(1.0, max(refused, default=0.0) + 31.0 - time.time()))
    restarted_at = time.time()
    d.start()
    async with d.client() as c:
        # the restarted daemon decides the return (so the rule does hold: the test is not
        # passing for want of it) ...
        decided = "trying spot beside the on-demand attempt at the next checkpoint"
        while not any(
            decided in e["message"] and e["at"] >= restarted_at for e in await c.events(jid)
        ):
            if time.time() > restarted_at + 60:  # the pace says whether the rule held
                raise AssertionError(("no return decided after the restart", await c.job(jid)))
            await asyncio.sleep(0.2)
        # ... and the agent's heartbeats (every 0.2 s here) repeat the old sync, which moved the
        # job within a second or two before the fix: no event says that nothing happened
        await asyncio.sleep(4.0)
        job = await c.job(jid)
        assert _running_on_demand(job) == od, job["attempts"]
        launched = [a for a in job["attempts"] if a["created_at"] >= restarted_at]
        assert not launched, launched
        assert job["pace"]["progress_from"] == "checkpoint", job["pace"]
        before = await logs(c, jid, od)
        resumable = max(int(n) for n in re.findall(r"^step (\d+)$", before, re.M))
        gate.touch()
        go_at = time.time()
        job = await wait_job(c, jid, lambda j: j["status"] in TERMINAL, timeout=200)
        text = await logs(c, jid)
    assert job["status"] == "SUCCEEDED", job
    assert job["ended_at"] <= job["deadline"], job
    ran = [a for a in job["attempts"] if a["end_reason"] != "LAUNCH_FAILED"]
    assert [a["market"] for a in ran] == ["spot", "on-demand", "spot"], ran
    assert [a["end_reason"] for a in ran] == ["PREEMPTED", "MIGRATED", "SUCCEEDED"], ran
    back = ran[2]
    assert ran[1]["attempt"] == od  # re-adopted across the restart, not relaunched
    assert back["created_at"] >= go_at, (back, go_at)
    [start] = re.findall(rf"attempt {back['attempt']} from step (\d+)", text)
    # it resumed from work the on-demand attempt saved after the gate opened
    assert int(start) > resumable, (start, resumable)


@pytest.mark.timeout(300)
async def test_a_restarted_daemon_keeps_backing_off(backing_off_daemon: DaemonProc) -> None:
    """Through a stockout a job on on-demand tries spot at a checkpoint, is refused, tries
    again once the zone's 30-s hold is over, is refused again: two rounds, so the next waits
    80 s from the second (this daemon's ``return_backoff_seconds``; a checkpoint up to 30 s
    early counts, so 50 s). The daemon is killed right after the second round and restarted at
    once: it reads the two rounds back from the attempt rows and waits, where with its memory
    gone and no read-back it would try again as soon as the hold was over, 30 s after the
    second round. The job checkpoints every 0.5 s, so the rounds come as soon as they may.

    300 s of work due in 900 s (the line: 1/3 s of work per second), restart 8 s: spot is
    preempted about 3 s in and stays stocked out; on-demand from about t = 35 s, within a
    restart of the line and then ahead of it, so the return rule holds throughout; rounds at
    about 36, 66 and (the restarted daemon) 116 s. About two and a half minutes: slow."""
    d = backing_off_daemon
    async with d.client() as c:
        job = await c.launch(_job(steps=600, deadline=900), filename="p.yaml")
        jid = job["id"]
        await wait_log(c, jid, "step 6\n", attempt=1)
        await c.chaos("stockout", target="local-east", seconds=600, market="spot")
        await c.chaos("preempt", target=str(jid))
        job = await wait_job(c, jid, lambda j: len(_rounds(j)) >= 2, timeout=150)
    d.kill9()
    restarted_at = time.time()
    d.start()
    async with d.client() as c:
        job = await wait_job(c, jid, lambda j: len(_rounds(j)) >= 3, timeout=120)
        events = await c.events(jid)
        await c.cancel(jid)
    rounds = _rounds(job)
    t0 = job["submitted_at"]
    seen = [round(r - t0, 1) for r in rounds]
    assert len(rounds) == 3 and rounds[1] < restarted_at < rounds[2], (seen, restarted_at - t0)
    assert rounds[1] - rounds[0] >= 29.0, seen  # the zone's hold: the second round
    # the third waits for the back-off (80 s less the 30 s a checkpoint may come early), not
    # for the hold (30 s), and not much longer: the restarted daemon still tries
    assert 49.0 <= rounds[2] - rounds[1] <= 60.0, seen
    said = "at least 80 s after the last refused one (2 returns in a row refused)"
    after = [e["message"] for e in events if e["at"] >= restarted_at]
    assert any(said in m for m in after), after  # the decision after the restart says so


def _rounds(job: dict) -> list[float]:
    """When each refused round beside the running on-demand attempt was made (its tries
    share one ``created_at``)."""
    od = _running_on_demand(job)
    return sorted(
        {
            a["created_at"]
            for a in job["attempts"]
            if od is not None and a["attempt"] > od and a["end_reason"] == "LAUNCH_FAILED"
        }
    )
