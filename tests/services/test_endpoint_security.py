"""The daemon's path to endpoint security: a service whose YAML has ``tls:`` and
``api_keys_env`` gets an HTTPS LB that checks client keys; ``serve update`` with other keys
rotates them in the same LB process (old key 401, new key 200); a YAML whose TLS files or key
variable are missing is refused at ``serve up``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from spotd.sdk.client import ApiError
from spotd.sdk.client_serve import serve_down, serve_up, serve_update, wait_service
from tests.lb.test_endpoint_security import make_certs

from .conftest import ready, stub_yaml

SECRETS = "secrets:\n  API_KEYS: null\n"


def _yaml(certs_dir: Path, *, keyfile: str = "key.pem") -> str:
    service = (
        "replicas: 1\n"
        f"  tls: {{certfile: {certs_dir / 'cert.pem'}, keyfile: {certs_dir / keyfile}}}\n"
        "  api_keys_env: API_KEYS"
    )
    return stub_yaml(name="sec", replicas=service, extra_envs=SECRETS)


async def test_tls_and_keys_from_the_service_section_and_rotation(serve_daemon, tmp_path):
    certs = make_certs(tmp_path)
    text = _yaml(tmp_path)
    async with serve_daemon.client() as c:
        # half-usable settings are refused before anything starts
        for bad, env, phrase in (
            (_yaml(tmp_path, keyfile="nope.pem"), {"API_KEYS": "k"}, "service.tls"),
            (text.replace("api_keys_env: API_KEYS", "api_keys_env: OTHER"), {"API_KEYS": "k"},
             "no secret or env named OTHER"),
            (text, {"API_KEYS": " , "}, "holds no key"),
        ):  # fmt: skip
            with pytest.raises(ApiError) as e:
                await serve_up(c, bad, filename="sec.yaml", env=env)
            assert e.value.status == 400 and phrase in e.value.message, e.value.message

        await serve_up(c, text, filename="sec.yaml", env={"API_KEYS": "old-1,old-2"})
        svc = await wait_service(c, "sec", ready(1), timeout=40, what="1 READY replica")
        endpoint = svc["endpoint"]
        assert endpoint.startswith("https://127.0.0.1:"), endpoint
        lb_pid = svc["lb"]["pid"]
        assert "old-1" not in str(svc)  # the keys are not shown back

        conn = aiohttp.TCPConnector(ssl=certs.client_ssl())
        async with aiohttp.ClientSession(connector=conn) as s:

            async def status(key: str | None) -> int:
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                async with s.get(f"{endpoint}/echo/x", headers=headers) as r:
                    if r.status == 200:
                        seen = {k.lower() for k in (await r.json())["headers"]}
                        assert "authorization" not in seen
                    return r.status

            assert [await status(k) for k in ("old-1", "old-2", None, "nope")] == [
                200, 200, 401, 401,
            ]  # fmt: skip
            async with aiohttp.ClientSession() as plain:
                with pytest.raises(aiohttp.ClientError):
                    await plain.get(endpoint.replace("https://", "http://") + "/echo/x")

            # rotation: an update with the new key; the old ones stop working, no LB restart
            await serve_update(c, "sec", text, filename="sec.yaml", env={"API_KEYS": "new-1"})
            deadline = time.monotonic() + 15
            while (await status("old-1"), await status("new-1")) != (401, 200):
                assert time.monotonic() < deadline, "the new key did not take over"
                await asyncio.sleep(0.1)
            assert await status("old-2") == 401
        svc = await wait_service(c, "sec", lambda s: True)
        assert svc["lb"]["pid"] == lb_pid
        await serve_down(c, "sec")
        await wait_service(c, "sec", lambda s: s["status"] == "DOWN", timeout=30)
