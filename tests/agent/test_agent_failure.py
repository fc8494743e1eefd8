"""An agent that cannot go on leaves, saying why in the job's log, instead of heartbeating a
phase that is over for ever (the daemon then sees its instance go and recovers the job); and an
image without bash runs ``setup`` and ``run`` with ``/bin/sh``."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
from aiohttp import web

from spotd.agent import main as agent_main
from spotd.agent.groups import group_gone
from spotd.agent.main import Agent
from spotd.types import AgentConfig
from tests.factories import agent_config


def _config(tmp_path: Path, daemon_url: str = "", run: str = "true") -> AgentConfig:
    return agent_config(
        run=run,
        checkpoint_store=str(tmp_path / "store" / "task"),
        daemon_url=daemon_url,
        heartbeat_seconds=0.05,
    )


async def test_an_agent_whose_job_task_fails_says_so_and_leaves(tmp_path: Path) -> None:
    """Before, ``_serve`` awaited the reporter, which reports until a final phase that never
    came: the daemon was told ``starting`` for ever while nothing ran."""
    phases: list[str] = []

    async def heartbeat(request: web.Request) -> web.Response:
        body = await request.json()
        phases.append(body["phase"])
        return web.json_response({"log_offset": body["log_offset"]})

    app = web.Application()
    app.router.add_post("/agent/v1/heartbeat", heartbeat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        agent = Agent(_config(tmp_path, f"http://127.0.0.1:{port}"), tmp_path / "instance")

        async def broken() -> bool | None:
            raise RuntimeError("a bug in the agent")

        agent.syncer.restore = broken  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="a bug in the agent"):
            await asyncio.wait_for(agent_main._serve(agent), 20)
    finally:
        await runner.cleanup()
    assert "the agent failed: RuntimeError('a bug in the agent')" in agent.log_path.read_text()
    assert set(phases) <= {"starting"}


async def test_an_image_without_bash_runs_the_script_with_sh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task's own ``image_id`` needs only ``/bin/sh`` (the Kubernetes provider's pod); the
    agent ran ``bash`` and failed to start the job at all."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("touch", "echo"):  # a PATH with the job's tools and no bash
        os.symlink(shutil.which(tool) or f"/usr/bin/{tool}", bin_dir / tool)
    monkeypatch.setenv("PATH", str(bin_dir))
    agent = Agent(_config(tmp_path, run='touch ran; echo "shell $0"'), tmp_path / "instance")
    await asyncio.wait_for(agent.run_job(), 20)
    assert (agent.phase, agent.exit_code) == ("exited", 0)
    assert (agent.work / "ran").exists()
    log = agent.log_path.read_text()
    assert "no bash in this image: setup and run go to /bin/sh" in log
    assert "shell /bin/sh" in log


TRAINER = """python3 -c '
import os, signal, sys, time
d = os.environ["SPOTD_CHECKPOINT_DIR"]
def term(*_):
    time.sleep(1.0)  # saving takes a while
    open(os.path.join(d, "saved"), "w").write("at SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
open(os.path.join(d, "started"), "w").write("1")
while True:
    time.sleep(0.05)
' | cat"""


async def test_a_notice_waits_for_the_trainer_not_only_its_shell(tmp_path: Path) -> None:
    """``run`` piped into another command: bash dies at SIGTERM at once while the trainer
    saves for a second. Before, the agent took that for the run's end: the final snapshot was
    made without the trainer's SIGTERM checkpoint and marked final."""
    agent = Agent(_config(tmp_path, run=TRAINER), tmp_path / "instance")
    job = asyncio.create_task(agent.run_job())
    try:
        for _ in range(400):  # the trainer is up (a file it writes), 20 s at most
            if (agent.checkpoint / "started").exists():
                break
            await asyncio.sleep(0.05)
        agent.notice_deadline = time.time() + 20
        agent.notice.set()
        await asyncio.wait_for(agent.on_notice(), 20)
    finally:
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        agent.kill_job()
    assert agent.phase == "preempted"
    restored = tmp_path / "restored"
    assert await agent.ckpt.restore(restored)
    assert (restored / "saved").read_text() == "at SIGTERM"
    assert await agent.ckpt.final_from() == 1


async def test_a_run_that_left_nothing_leaves_no_group_to_signal_later(tmp_path: Path) -> None:
    """The group's number is its shell's pid: once nothing of it is left, the number may be
    another process group's, and the agent's last SIGKILL (as it leaves) must not reach it. A
    run that left a process behind is still killed then."""
    done = Agent(_config(tmp_path, run="true"), tmp_path / "done")
    await asyncio.wait_for(done.run_job(), 20)
    assert done.phase == "exited" and done.group is None
    left = Agent(_config(tmp_path, run="sleep 30 & echo started"), tmp_path / "left")
    await asyncio.wait_for(left.run_job(), 20)
    group = left.group
    assert left.phase == "exited" and group is not None
    left.kill_job()
    assert await group_gone(group, 10)
