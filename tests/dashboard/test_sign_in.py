"""Who may see and do what, in-process: sessions from a token or a one-time link, CSRF on every
action, the unix socket as the admin, and the API's own bearer tokens untouched."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from spotd.control.quota import hash_token, new_token
from spotd.dashboard.auth import (
    Identity,
    LoginLinks,
    Sessions,
    fingerprint,
    origin_allowed,
    still_valid,
)
from spotd.store import AsyncStore, SessionRow, Store
from spotd.types import JobStatus

from .conftest import ADMIN_TOKEN, Dash, seed_job


async def test_signed_out_pages_lead_to_the_login_page(dash: Dash) -> None:
    for path in ("/dashboard/", "/dashboard/fleet", "/dashboard/jobs/1", "/dashboard/cost"):
        r = await dash.tcp.get(path, allow_redirects=False)
        assert (r.status, r.headers["Location"]) == (303, "/dashboard/login"), path
    r = await dash.tcp.get("/dashboard/live/")
    assert r.status == 401  # a stream is not redirected


@pytest.mark.parametrize(
    ("token", "origin", "status", "says"),
    [
        ("wrong", "self", 401, "That token is not valid here."),
        ("", "self", 401, "That token is not valid here."),
        (ADMIN_TOKEN, "http://evil.example", 403, "Sign in from this page."),
        (ADMIN_TOKEN, None, 403, "Sign in from this page."),
        (ADMIN_TOKEN, "null", 403, "Sign in from this page."),
    ],
)
async def test_a_refused_sign_in_gets_the_login_page_back(
    dash: Dash, token: str, origin: str | None, status: int, says: str
) -> None:
    headers = {} if origin is None else {"Origin": dash.origin if origin == "self" else origin}
    r = await dash.tcp.post(
        "/dashboard/login", data={"token": token}, headers=headers, allow_redirects=False
    )
    assert r.status == status
    html = await r.text()
    assert says in html and 'name="token"' in html
    assert "spotd_dashboard" not in r.cookies


async def test_the_session_cookie_is_httponly_and_strict(dash: Dash) -> None:
    r = await dash.tcp.post(
        "/dashboard/login",
        data={"token": ADMIN_TOKEN},
        headers={"Origin": dash.origin},
        allow_redirects=False,
    )
    morsel = r.cookies["spotd_dashboard"]
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/dashboard"
    assert not morsel["secure"]  # plain HTTP on loopback; with TLS the cookie is Secure


async def test_actions_need_this_origin_and_the_session_csrf_token(dash: Dash) -> None:
    job = seed_job(dash.store.store)
    csrf = await dash.sign_in()
    url = f"/dashboard/jobs/{job.id}/cancel"
    cases = [
        ({"Origin": dash.origin}, {}),  # no CSRF token
        ({"Origin": dash.origin}, {"csrf": "guess"}),
        ({"Origin": "http://evil.example"}, {"csrf": csrf}),
        ({}, {"csrf": csrf}),  # no Origin
    ]
    for headers, form in cases:
        r = await dash.tcp.post(url, data=form, headers=headers, allow_redirects=False)
        assert r.status == 403, (headers, form)
    assert (await dash.store.get_job(job.id)).status == JobStatus.PENDING  # type: ignore[union-attr]
    r = await dash.tcp.post(
        url, data={"csrf": csrf}, headers={"Origin": dash.origin}, allow_redirects=False
    )
    assert r.status == 303 and "cancelling" in r.headers["Location"]
    assert (await dash.store.get_job(job.id)).status == JobStatus.CANCELLING  # type: ignore[union-attr]


async def test_a_session_does_not_open_the_api(dash: Dash) -> None:
    await dash.sign_in()
    assert (await dash.tcp.get("/v1/jobs")).status == 401, "the API wants its bearer token"
    ok = await dash.tcp.get("/v1/jobs", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert ok.status == 200


async def test_the_unix_socket_is_the_admin_and_gets_a_link_to_the_tcp_listener(
    dash: Dash,
) -> None:
    assert (await dash.unix.get("/dashboard/")).status == 200
    r = await dash.unix.post("/dashboard/login-link")
    body = await r.json()
    assert body["who"] == "admin"
    assert body["url"] == "http://127.0.0.1:1" + body["path"]
    # the link is redeemed on the TCP listener, once
    first = await dash.tcp.get(body["path"], allow_redirects=False)
    assert first.status == 200 and "spotd_dashboard" in first.cookies
    assert "Signed in" in await first.text()
    again = await dash.tcp.get(body["path"], allow_redirects=False)
    assert again.status == 401 and "used already or has expired" in await again.text()


async def test_a_link_over_tcp_speaks_for_its_token(dash: Dash) -> None:
    assert (await dash.tcp.post("/dashboard/login-link")).status == 401
    r = await dash.tcp.post(
        "/dashboard/login-link", headers={"Authorization": f"Bearer {dash.project_token}"}
    )
    body = await r.json()
    assert body["who"] == "project alpha"
    mine = seed_job(dash.store.store, project="alpha")
    seed_job(dash.store.store, project="default")
    await dash.tcp.get(body["path"])
    html = await (await dash.tcp.get("/dashboard/")).text()
    assert f'data-job="{mine.id}"' in html and html.count("<tr data-job=") == 1


async def test_the_live_stream_sends_the_parts_that_changed(dash: Dash) -> None:
    dash.dashboard.live_interval = 0.05
    job = seed_job(dash.store.store)
    r = await dash.unix.get(f"/dashboard/live/jobs/{job.id}")
    assert r.headers["Content-Type"] == "text/event-stream"

    async def next_update() -> dict[str, object]:
        lines: list[str] = []
        while True:
            line = (await r.content.readline()).decode().rstrip("\n")
            if line == "" and lines:
                break
            if line:
                lines.append(line)
        assert lines[0] == "event: update", lines
        return json.loads(lines[1].removeprefix("data: "))  # type: ignore[no-any-return]

    first = await next_update()
    parts = first["parts"]
    assert isinstance(parts, dict)
    assert set(parts) == {"job_actions", "job_summary", "timeline", "preemptions", "events", "log"}
    assert 'id="cancel-form"' in parts["job_actions"]
    await dash.store.transition_job(
        job.id, from_=[JobStatus.PENDING], to=JobStatus.CANCELLING, reason="test", now=1e6
    )
    # the next updates carry what changed: the status (and its event), never the log again
    for _ in range(50):
        update = await next_update()
        parts = update["parts"]
        assert isinstance(parts, dict) and "log" not in parts
        if "CANCELLING" in parts.get("job_summary", ""):
            break
    else:
        raise AssertionError("the status change never came")
    # once the job has ended, the stream takes its Cancel button away
    await dash.store.transition_job(
        job.id, from_=[JobStatus.CANCELLING], to=JobStatus.CANCELLED, reason="test", now=1e6 + 1
    )
    for _ in range(50):
        parts = (await next_update())["parts"]
        assert isinstance(parts, dict)
        if "job_actions" in parts:
            assert "cancel-form" not in parts["job_actions"], parts["job_actions"]
            break
    else:
        raise AssertionError("the Cancel button never went away")
    r.close()
    assert (await dash.unix.get("/dashboard/live/jobs/77")).status == 404


# -- the session store and the links, on their own -----------------------------------------


@pytest.fixture
async def astore(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    store = AsyncStore(Store.open(f"sqlite:///{tmp_path / 'signin.db'}"))
    yield store
    await store.close()


ADMIN_HASH = hash_token("the-admin-token")
ADMIN = Identity(credential=fingerprint(ADMIN_HASH))


async def test_sessions_are_bounded_in_number_and_time(astore: AsyncStore) -> None:
    s = Sessions(
        astore, admin_token_hash=ADMIN_HASH, max_sessions=2, session_ttl=10, session_max_age=100
    )
    a = await s.create(ADMIN, now=0)
    b = await s.create(ADMIN, now=1)
    assert await s.get(a.id, now=2) is not None  # a used: b is now the least recently used
    c = await s.create(ADMIN, now=3)
    assert await s.count() == 2 and await s.get(b.id, now=3) is None
    assert await s.get(c.id, now=12) is not None  # 9 s idle: alive, and used again
    assert await s.get(a.id, now=13) is None  # idle 11 s > ttl 10
    for t in range(20, 101, 9):  # kept busy, it still ends at its max age
        assert await s.get(c.id, now=t) is not None
    assert await s.get(c.id, now=104) is None
    assert await s.get("x" * 10_000, now=104) is None  # no id of ours: not even looked up


async def test_login_links_are_single_use_short_lived_and_bounded(astore: AsyncStore) -> None:
    links = LoginLinks(astore, ttl=60, max_pending=2)
    code = await links.issue(Identity("p"), now=0)
    assert await links.redeem(code, now=59) == Identity("p")
    assert await links.redeem(code, now=59) is None
    late = await links.issue(Identity(), now=0)
    assert await links.redeem(late, now=61) is None
    first = await links.issue(Identity(), now=0)
    for t in (1, 2):  # (links issued in one clock tick are dropped in no particular order)
        await links.issue(Identity(), now=t)
    assert await links.count() == 2 and await links.redeem(first, now=3) is None


async def test_a_changed_token_signs_its_sessions_out(astore: AsyncStore) -> None:
    """A session lasts only while the token it was signed in with is in force: the admin's
    (a restart with another ``api_token``), or its project's (changed, or the project gone)."""
    token = new_token()
    astore.store.create_project(name="p", gpu_quota=None, token_hash=hash_token(token), now=0)
    before = Sessions(astore, admin_token_hash=ADMIN_HASH)
    admin = await before.create(ADMIN, now=0)
    project = await before.create(Identity("p", fingerprint(hash_token(token))), now=0)
    forged = await before.create(Identity("p", fingerprint(hash_token("not-its-token"))), now=0)
    assert await before.get(admin.id, now=1) is not None
    assert await before.get(project.id, now=1) is not None
    assert await before.get(forged.id, now=1) is None

    after = Sessions(astore, admin_token_hash=hash_token("a-new-admin-token"))  # restarted
    assert await after.get(admin.id, now=2) is None
    assert await after.get(project.id, now=2) is not None  # its token did not change
    with astore.store.engine.begin() as conn:  # the project's token changed
        conn.execute(text("UPDATE project SET token_hash = 'x' WHERE name = 'p'"))
    assert await after.get(project.id, now=3) is None
    assert await after.count() == 0  # and the rows are gone


@pytest.mark.parametrize(
    ("project", "credential", "admin_hash", "project_hash", "valid"),
    [
        (None, fingerprint("A"), "A", None, True),  # the admin, token unchanged
        (None, fingerprint("A"), "B", None, False),  # the admin token changed
        (None, "", "A", None, False),  # a session with no fingerprint at all
        ("p", fingerprint("P"), "A", "P", True),  # a project, token unchanged
        ("p", fingerprint("P"), "A", "Q", False),  # its token changed
        ("p", fingerprint("P"), "A", None, False),  # the project is gone
        ("p", fingerprint("A"), "A", "P", False),  # signed in with the admin's: not the project
    ],
)
def test_still_valid(
    project: str | None, credential: str, admin_hash: str, project_hash: str | None, valid: bool
) -> None:
    row = SessionRow("h", project, credential, "csrf", 0.0, 0.0, project_hash)
    assert still_valid(row, admin_token_hash=admin_hash) is valid


@pytest.mark.parametrize(
    ("origin", "ok"),
    [
        ("http://127.0.0.1:8470", True),
        ("http://127.0.0.1:8470/", True),
        ("HTTP://127.0.0.1:8470", True),
        ("https://127.0.0.1:8470", False),
        ("http://127.0.0.1:8471", False),
        ("http://evil.example", False),
        ("null", False),
        (None, False),
        ("", False),
    ],
)
def test_origin_must_be_this_listener(origin: str | None, ok: bool) -> None:
    assert origin_allowed(origin, scheme="http", host="127.0.0.1:8470") is ok
