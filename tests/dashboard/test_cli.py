"""``spotctl dashboard --no-browser`` against a real daemon: it prints a one-time link that
signs a browser in once; without a TCP listener it says what to configure."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.browser.conftest import TOKEN, WebDaemon
from tests.conftest import DaemonProc, kill_instance_groups


@pytest.fixture
def web_daemon() -> Iterator[WebDaemon]:
    d = WebDaemon(Path(f"/tmp/spotd-c{os.getpid()}-{time.monotonic_ns() % 10**9}"))
    d.start()
    try:
        yield d
    finally:
        d.stop()
        kill_instance_groups(d.home)
        shutil.rmtree(d.home, ignore_errors=True)


async def test_the_printed_link_signs_in_once(web_daemon: WebDaemon) -> None:
    urls = []
    for args in (("dashboard", "--no-browser"), ("--url", web_daemon.base[: -len("/dashboard")],
                                                   "dashboard", "--no-browser")):  # fmt: skip
        web_daemon.env["SPOTD_API_TOKEN"] = TOKEN
        r = web_daemon.spotctl(*args)
        assert r.returncode == 0, r.stderr
        (url,) = re.findall(r"http://127\.0\.0\.1:\d+/dashboard/login/\S+", r.stdout)
        assert "One sign-in as admin" in r.stderr
        urls.append(url)
    async with aiohttp.ClientSession() as s:
        for url in urls:
            async with s.get(url, allow_redirects=False) as first:
                assert first.status == 200 and "spotd_dashboard" in first.cookies
            async with s.get(url, allow_redirects=False) as again:
                assert again.status == 401


def test_without_a_tcp_listener_it_says_what_to_set(daemon: DaemonProc) -> None:
    r = daemon.spotctl("dashboard", "--no-browser")
    assert r.returncode == 1
    assert "tcp_host and tcp_port" in r.stderr
