"""Over TLS the session cookie is ``Secure``, and a POST must come from the ``https://`` origin
(a real TLS listener on loopback, with a certificate from ``spotd tls init``'s code)."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from spotd.api.app import make_app
from spotd.config import load_settings
from spotd.control.jobs import Controller
from spotd.dashboard import Dashboard, mount_dashboard
from spotd.metrics import DaemonMetrics
from spotd.ops.tls import client_context, server_context
from spotd.ops.tls_init import TlsFiles, init_tls
from spotd.store import AsyncStore, Store

from .conftest import ADMIN_TOKEN


@pytest.fixture
async def tls_base(tmp_path: Path) -> AsyncIterator[tuple[str, TlsFiles]]:
    files = TlsFiles(tmp_path / "tls")
    init_tls(
        files.directory,
        hosts=("127.0.0.1",),
        days=1,
        force=False,
        now=dt.datetime.now(dt.UTC),
    )
    settings = load_settings(tmp_path, env={"SPOTD_API_TOKEN": ADMIN_TOKEN})
    store = AsyncStore(Store.open(f"sqlite:///{tmp_path / 'state.db'}"))
    metrics = DaemonMetrics()
    ctl = Controller(settings=settings, store=store, providers={}, metrics=metrics)
    app = make_app(settings=settings, store=store, controller=ctl, metrics_=metrics, tcp=True)
    mount_dashboard(
        app, Dashboard(settings=settings, store=store, controller=ctl, services=None), tcp=True
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = server_context(files.server_cert, files.server_key)
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    try:
        yield f"https://127.0.0.1:{port}", files
    finally:
        await runner.cleanup()
        await store.close()


async def test_the_cookie_is_secure_over_tls(tls_base: tuple[str, TlsFiles]) -> None:
    base, files = tls_base
    conn = aiohttp.TCPConnector(ssl=client_context(ca_file=files.ca_cert))
    async with aiohttp.ClientSession(connector=conn) as s:
        plain_origin = base.replace("https://", "http://")
        async with s.post(
            base + "/dashboard/login",
            data={"token": ADMIN_TOKEN},
            headers={"Origin": plain_origin},
            allow_redirects=False,
        ) as r:
            assert r.status == 403, "the http:// origin is another origin"
        async with s.post(
            base + "/dashboard/login",
            data={"token": ADMIN_TOKEN},
            headers={"Origin": base},
            allow_redirects=False,
        ) as r:
            assert r.status == 303
            morsel = r.cookies["spotd_dashboard"]
            assert morsel["secure"] and morsel["httponly"] and morsel["samesite"] == "Strict"
