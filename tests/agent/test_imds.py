"""The agent's IMDSv2 client: the token decision as a table, then the exchange against a small
metadata service on loopback that can require tokens, revoke them, or refuse to issue any."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from spotd.agent.imds import (
    RETRY_TOKEN_AFTER,
    TOKEN_HEADER,
    TTL_HEADER,
    Imds,
    TokenState,
    token_step,
)
from spotd.agent.main import Agent
from tests.factories import agent_config

HELD = TokenState(token="t", refresh_at=80.0, expires_at=100.0)


@pytest.mark.parametrize(
    ("state", "now", "step"),
    [
        (TokenState(), 0.0, "fetch"),  # none yet
        (HELD, 10.0, "use"),
        (HELD, 80.0, "fetch"),  # most of its life gone: renew before it expires
        (HELD, 99.0, "fetch"),
        (HELD, 100.0, "fetch"),  # expired
        # a PUT was refused: keep a token that still works, else go without until retry_at
        (TokenState(token="t", refresh_at=80.0, expires_at=100.0, retry_at=90.0), 85.0, "use"),
        (
            TokenState(token="t", refresh_at=80.0, expires_at=100.0, retry_at=150.0),
            120.0,
            "without",
        ),
        (TokenState(retry_at=60.0), 30.0, "without"),
        (TokenState(retry_at=60.0), 60.0, "fetch"),  # and then ask again
        (TokenState(token="", refresh_at=80.0, expires_at=100.0), 10.0, "fetch"),  # revoked
    ],
)
def test_token_step(state: TokenState, now: float, step: str) -> None:
    assert token_step(state, now) == step


@dataclass
class FakeImds:
    """``/latest/api/token`` and one metadata path, as an IMDSv2-required instance serves them."""

    issue: bool = True  # False: the PUT answers 405, as an IMDSv1-only service
    require: bool = True  # HttpTokens=required: a GET without a valid token is 401
    tokens: set[str] = field(default_factory=set)
    puts: list[int] = field(default_factory=list)  # TTLs asked for
    gets: list[str] = field(default_factory=list)  # the token each GET carried ("" none)
    url: str = ""

    async def put(self, request: web.Request) -> web.Response:
        if not self.issue:
            return web.Response(status=405)
        self.puts.append(int(request.headers[TTL_HEADER]))
        token = secrets.token_hex(8)
        self.tokens.add(token)
        return web.Response(text=token)

    async def get(self, request: web.Request) -> web.Response:
        token = request.headers.get(TOKEN_HEADER, "")
        self.gets.append(token)
        if self.require and token not in self.tokens:
            return web.Response(status=401)
        return web.Response(text="ok")


@pytest.fixture
async def imds() -> AsyncIterator[FakeImds]:
    fake = FakeImds()
    app = web.Application()
    app.router.add_put("/latest/api/token", fake.put)
    app.router.add_get("/m", fake.get)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield fake
    await runner.cleanup()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client(fake: FakeImds, clock: Clock, said: list[str], ttl: int = 100) -> Imds:
    return Imds(fake.url, say=said.append, ttl_seconds=ttl, clock=clock)


async def test_one_token_serves_many_gets_and_is_renewed_before_it_expires(
    imds: FakeImds,
) -> None:
    clock, said = Clock(), []
    c = client(imds, clock, said)
    async with aiohttp.ClientSession() as s:
        assert [await c.get(s, "/m") for _ in range(3)] == [(200, "ok")] * 3
        assert imds.puts == [100] and len(set(imds.gets)) == 1
        clock.now += 81  # past 80 % of its life, still valid
        assert await c.get(s, "/m") == (200, "ok")
    assert len(imds.puts) == 2 and len(set(imds.gets)) == 2
    assert said == []


async def test_a_revoked_token_is_replaced_and_the_get_retried_once(imds: FakeImds) -> None:
    clock, said = Clock(), []
    c = client(imds, clock, said)
    async with aiohttp.ClientSession() as s:
        assert await c.get(s, "/m") == (200, "ok")
        imds.tokens.clear()  # the instance was stopped and started: old tokens are void
        assert await c.get(s, "/m") == (200, "ok")
    assert len(imds.puts) == 2
    assert [bool(t) for t in imds.gets] == [True, True, True]


async def test_an_endpoint_that_issues_no_tokens_is_polled_without_and_asked_again(
    imds: FakeImds,
) -> None:
    imds.issue, imds.require = False, False  # an IMDSv1-only stand-in
    clock, said = Clock(), []
    c = client(imds, clock, said)
    async with aiohttp.ClientSession() as s:
        assert await c.get(s, "/m") == (200, "ok")
        assert await c.get(s, "/m") == (200, "ok")
        assert imds.gets == ["", ""]
        [line] = said
        assert "refused an IMDSv2 session token (HTTP 405)" in line and "IMDSv1" in line
        imds.issue, imds.require = True, True
        assert await c.get(s, "/m") == (401, "")  # before retry_at: still without
        clock.now += RETRY_TOKEN_AFTER
        assert await c.get(s, "/m") == (200, "ok")
    assert imds.gets[-1] in imds.tokens
    assert "IMDSv2 session token obtained" in said[-1]


async def test_required_tokens_that_cannot_be_had_are_said_once(imds: FakeImds) -> None:
    imds.issue = False  # e.g. the PUT's answer does not make it back (hop limit)
    clock, said = Clock(), []
    c = client(imds, clock, said)
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            assert (await c.get(s, "/m"))[0] == 401
    assert len(said) == 2 and "requires a session token (IMDSv2)" in said[1]


async def test_the_agent_polls_the_notice_with_a_token(imds: FakeImds, tmp_path: Path) -> None:
    """The agent's own poll, through ``Imds``: GCE's URL goes without (its own header)."""
    cfg = agent_config(
        notice_url=imds.url,
        checkpoint_store=str(tmp_path / "store"),
    )
    agent = Agent(cfg, tmp_path)
    assert agent.imds is not None
    assert Agent(replace(cfg, notice_url="gce+" + imds.url), tmp_path).imds is None
    async with aiohttp.ClientSession() as s:
        assert await agent._poll_notice(tmp_path / "notice.json", s) is None  # 404: no notice
    assert imds.puts == [21600] and imds.gets == []  # the path is not /m: nothing served
