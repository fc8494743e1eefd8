"""Dashboard sign-ins in the database: every daemon on it knows a session, a restart signs
nobody out, a login link is spent once whoever redeems it, and the database holds neither a
session id nor a link code (only their SHA-256)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from sqlalchemy import text

from spotd.control.quota import hash_token, new_token
from spotd.dashboard.auth import Identity, LoginLinks, Sessions, fingerprint
from spotd.store import AsyncStore, SessionRow, Store
from spotd.store.signin import session_fate

ADMIN_HASH = hash_token("the-admin-token")
ADMIN = Identity(credential=fingerprint(ADMIN_HASH))


def _everything_in(store: Store) -> str:
    with store.engine.connect() as conn:
        rows = [
            *conn.execute(text("SELECT * FROM dashboard_session")),
            *conn.execute(text("SELECT * FROM login_link")),
        ]
    return repr(rows)


async def test_two_daemons_on_one_database_share_sessions_and_spend_a_link_once(
    open_store: Callable[[], Store],
) -> None:
    one, other = AsyncStore(open_store()), AsyncStore(open_store())
    token_hash = hash_token(new_token())
    one.store.create_project(name="alpha", gpu_quota=None, token_hash=token_hash, now=0)
    alpha = Identity("alpha", fingerprint(token_hash))
    s = await Sessions(one, admin_token_hash=ADMIN_HASH).create(alpha, now=100)
    seen = await Sessions(other, admin_token_hash=ADMIN_HASH).get(s.id, now=101)
    assert seen is not None and (seen.who, seen.csrf) == (Identity("alpha"), s.csrf)

    codes = [await LoginLinks(one).issue(Identity(), now=100) for _ in range(5)]
    for code in codes:  # both daemons open the same link at once: one of them signs in
        redeemed = await asyncio.gather(
            LoginLinks(one).redeem(code, now=101), LoginLinks(other).redeem(code, now=101)
        )
        assert sorted(redeemed, key=str) == [Identity(), None]

    dump = _everything_in(one.store)
    assert s.id not in dump and s.csrf in dump
    assert not any(code in dump for code in codes)

    await Sessions(other, admin_token_hash=ADMIN_HASH).end(
        s.id
    )  # signing out on one daemon ends it on both
    assert await Sessions(one, admin_token_hash=ADMIN_HASH).get(s.id, now=102) is None


async def test_a_restart_signs_nobody_out(open_store: Callable[[], Store]) -> None:
    before = AsyncStore(open_store())
    s = await Sessions(before, admin_token_hash=ADMIN_HASH).create(ADMIN, now=100)
    code = await LoginLinks(before).issue(Identity("alpha"), now=100)
    before.store.close()
    after = AsyncStore(open_store())
    assert await Sessions(after, admin_token_hash=ADMIN_HASH).get(s.id, now=200) is not None
    assert await LoginLinks(after).redeem(code, now=130) == Identity("alpha")


@pytest.mark.parametrize(
    ("created", "used", "now", "fate"),
    [
        (0, 0, 30, "fresh"),  # used within touch_after (60): no write
        (0, 0, 61, "touch"),  # used longer ago: its last use moves to now
        (0, 0, 3601, "expired"),  # idle longer than 3600
        (0, 86_000, 86_401, "expired"),  # kept busy, still older than max_age 86400
        (0, 86_000, 86_030, "fresh"),
    ],
)
def test_session_fate(created: float, used: float, now: float, fate: str) -> None:
    row = SessionRow("h", None, "c", "csrf", created, used)
    got = session_fate(row, now=now, idle=3600, max_age=86_400, touch_after=60)
    assert got == fate
