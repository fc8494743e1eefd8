"""The dashboard behind several daemons: a browser signed in through one daemon is signed in on
every daemon of the cluster, stays signed in when that daemon is killed and restarted, and is
signed out everywhere by signing out on one.

Two real daemons (A and B) on one PostgreSQL, spoken to over HTTP on loopback as a browser
would behind one address (cookies are per host, not per port, so one cookie jar holds what a
browser holds). Until sessions moved into the database, B did not know A's sessions and a
restart signed everyone out.
"""

from __future__ import annotations

import asyncio
import re

import pytest
import requests

from tests.ha.conftest import Cluster, cluster

pytestmark = [pytest.mark.slow, pytest.mark.ha, pytest.mark.postgres, pytest.mark.timeout(300)]


def _page(c: Cluster, browser: requests.Session, daemon_id: str, path: str) -> requests.Response:
    return browser.get(c.api_url(daemon_id) + path, allow_redirects=False, timeout=30)


def _signed_in(c: Cluster, browser: requests.Session, daemon_id: str) -> bool:
    r = _page(c, browser, daemon_id, "/dashboard/fleet")
    if r.status_code == 303:
        assert r.headers["Location"] == "/dashboard/login", r.headers
        return False
    assert r.status_code == 200 and "<h1>Fleet" in r.text, (r.status_code, r.text[:300])
    return True


async def test_one_sign_in_holds_on_every_daemon_and_through_a_restart(pg_url: str) -> None:
    fleet_config = {"launch_seconds": 0.5, "forget_seconds": 3600, "seed": 7}
    with cluster(pg_url, ["A", "B"], lease_seconds=5.0, fleet_config=fleet_config) as c:
        await asyncio.to_thread(c.start, "A")
        c.wait_schema()
        await asyncio.to_thread(c.start, "B")
        browser = requests.Session()
        assert not _signed_in(c, browser, "A") and not _signed_in(c, browser, "B")

        # `spotctl dashboard` asks daemon A for a link; the browser's request lands on B
        r = requests.post(
            c.api_url("A") + "/dashboard/login-link",
            headers={"Authorization": f"Bearer {c.token}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        path = r.json()["path"]
        opened = _page(c, browser, "B", path)
        assert opened.status_code == 200 and "Signed in" in opened.text, opened.text[:300]
        assert _page(c, requests.Session(), "A", path).status_code == 401, "a spent link"
        assert _signed_in(c, browser, "A") and _signed_in(c, browser, "B")

        c.kill9("A")  # the daemon that made the link dies; B and the session live on
        assert _signed_in(c, browser, "B")
        await asyncio.to_thread(c.start, "A")
        assert _signed_in(c, browser, "A"), "a restart signed the browser out"

        # signing out on B (a POST from B's own page, with its CSRF token) ends it on A too:
        # the old cookie, sent again as a stolen copy would be, no longer signs anyone in
        cookie = browser.cookies.get("spotd_dashboard")
        assert cookie
        page = _page(c, browser, "B", "/dashboard/fleet").text
        m = re.search(r'data-csrf="([^"]+)"', page)
        assert m, page[:300]
        out = browser.post(
            c.api_url("B") + "/dashboard/logout",
            data={"csrf": m.group(1)},
            headers={"Origin": c.api_url("B")},
            allow_redirects=False,
            timeout=30,
        )
        assert out.status_code == 303, out.text[:300]
        stolen = requests.Session()
        stolen.cookies.set("spotd_dashboard", cookie, domain="127.0.0.1", path="/dashboard")
        assert not _signed_in(c, stolen, "A") and not _signed_in(c, stolen, "B")
