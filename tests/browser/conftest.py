"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright for Python.

Playwright's own browser download cannot work here; it drives the system Chromium, which
``scripts/browser.sh`` installs with apt-get when it is missing (a fresh machine needs nothing
by hand). Without a browser (or the ``playwright`` package) the tests skip — except under
``CI=true``, where a missing browser fails them.

Every test gets a real daemon with its TCP listener on loopback (and an admin token), so the
browser signs in exactly as a user's does. Screenshots go to ``build/screenshots/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import DaemonProc, kill_instance_groups
from tests.services.conftest import SERVE_ENV, cleanup_services

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "screenshots"
TOKEN = "dashboard-admin-token-for-tests"
T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run an SDK coroutine from a test that drives Playwright's sync API (which holds this
    thread's event loop): on a thread of its own."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def wait_until(check: Callable[[], bool], *, timeout: float = 30.0, what: str = "it") -> None:
    """Poll ``check`` (which reads the page through Playwright) until it holds. Not
    ``page.wait_for_function``: its polling evaluates a string in the page, which the
    dashboard's Content-Security-Policy (no ``unsafe-eval``) forbids, as it should."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def _missing(what: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: the browser tests need {what}")
    pytest.skip(f"needs {what}")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "browser.sh")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    path = r.stdout.strip()
    if r.returncode != 0 or not path:
        _missing(f"Debian's chromium (scripts/browser.sh: {r.stderr.strip()[-300:]})")
    return path


# module-scoped, not session-scoped: while Playwright's sync API runs, its event loop is this
# thread's running loop, and the async tests of other modules (run after these in one session)
# could not start theirs
@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package (pip install -e '.[test]')")
    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
    try:
        yield b
    finally:
        b.close()
        pw.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    p = context.new_page()
    p.set_default_timeout(60_000)  # generous: CI machines and shared ones are slow at times
    try:
        yield p
    finally:
        context.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WebDaemon(DaemonProc):
    """A daemon with its TCP listener (plain HTTP on loopback) and an admin token."""

    def __init__(self, home: Path) -> None:
        self.port = _free_port()
        super().__init__(
            home, {**SERVE_ENV, "SPOTD_TCP": f"127.0.0.1:{self.port}", "SPOTD_API_TOKEN": TOKEN}
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/dashboard"

    def login_link(self) -> str:
        """``spotctl dashboard --no-browser``: the one-time link it prints."""
        r = self.spotctl("dashboard", "--no-browser")
        assert r.returncode == 0, r.stderr
        m = re.search(r"http://\S+/dashboard/login/\S+", r.stdout)
        assert m, r.stdout
        return m.group(0)


@pytest.fixture
def web_daemon(request: pytest.FixtureRequest) -> Iterator[WebDaemon]:
    home = Path(f"/tmp/spotd-w{os.getpid()}-{time.monotonic_ns() % 10**9}")
    d = WebDaemon(home)
    d.start()
    try:
        yield d
    finally:
        d.stop()
        SHOTS.mkdir(parents=True, exist_ok=True)  # the daemon's log, beside the screenshots
        with contextlib.suppress(OSError):
            shutil.copyfile(home / "spotd.log", SHOTS / f"{request.node.name}.spotd.log")
        cleanup_services(home)
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def shot(page: Any) -> Callable[[str], Path]:
    """Save a full-page screenshot as a test artifact: ``build/screenshots/NAME.png``."""
    SHOTS.mkdir(parents=True, exist_ok=True)

    def take(name: str) -> Path:
        path = SHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
