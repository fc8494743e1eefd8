"""The agent sees a provider's advance notice: GCE's `preempted` metadata and EC2's
`spot/instance-action`, each served by a small HTTP server on loopback playing the metadata
service, and the local notice file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from spotd.agent.main import Agent
from tests.factories import agent_config


def _agent(tmp_path: Path, notice_url: str) -> Agent:
    cfg = agent_config(
        notice_url=notice_url,
        checkpoint_store=str(tmp_path / "store"),
    )
    return Agent(cfg, tmp_path)


class _Server:
    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner, self.port = runner, port


async def _serve(routes: dict[str, web.Response]) -> tuple[_Server, dict[str, bool]]:
    app = web.Application()
    state = {"on": False}

    async def handler(request: web.Request) -> web.StreamResponse:
        if not state["on"]:
            return web.Response(status=404, text="not found")
        return routes[request.path]

    for path in routes:
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return _Server(runner, port), state


async def test_gce_preempted_metadata(tmp_path):
    server, state = await _serve(
        {
            "/computeMetadata/v1/instance/preempted": web.Response(text="TRUE"),
        }
    )
    agent = _agent(tmp_path, f"gce+http://127.0.0.1:{server.port}")
    async with aiohttp.ClientSession() as s:
        assert await agent._poll_notice(tmp_path / "notice.json", s) is None
        state["on"] = True
        deadline = await agent._poll_notice(tmp_path / "notice.json", s)
    await server.runner.cleanup()
    assert deadline is not None and 25 < deadline - time.time() <= 30


async def test_ec2_instance_action_metadata(tmp_path):
    when = "2030-01-01T00:02:00Z"
    server, state = await _serve(
        {
            "/latest/meta-data/spot/instance-action": web.json_response(
                {"action": "terminate", "time": when}
            ),
        }
    )
    agent = _agent(tmp_path, f"http://127.0.0.1:{server.port}")
    async with aiohttp.ClientSession() as s:
        assert await agent._poll_notice(tmp_path / "notice.json", s) is None
        state["on"] = True
        deadline = await agent._poll_notice(tmp_path / "notice.json", s)
    await server.runner.cleanup()
    assert deadline == 1893456120.0


async def test_local_notice_file(tmp_path):
    agent = _agent(tmp_path, "")
    assert await agent._poll_notice(tmp_path / "notice.json", None) is None
    (tmp_path / "notice.json").write_text(json.dumps({"deadline": 123.0}))
    assert await agent._poll_notice(tmp_path / "notice.json", None) == 123.0


def test_final_sync_of_an_empty_checkpoint_still_marks_it_final(tmp_path):
    """A notice before the job wrote any checkpoint: the replacement must not wait for the
    whole notice period for a snapshot that will never come."""
    from spotd.agent.checkpoints import CheckpointStore

    empty = tmp_path / "ckpt"
    empty.mkdir()
    store = CheckpointStore(tmp_path / "store" / "task", attempt=2)
    assert store.final_from() == 0
    assert store.sync(empty) is False  # a periodic sync of nothing writes nothing
    assert store.sync(empty, final=True) is True
    assert store.final_from() == 2
    assert store.restore(tmp_path / "restored") is True
    assert list((tmp_path / "restored").iterdir()) == []
