"""Endpoint security at the LB, with a real client (aiohttp's; httpx is not installed) against
a real ``python -m spotd.lb`` process and a stub replica that echoes the headers it gets:

- TLS: with ``--tls-cert/--tls-key`` the proxy port answers HTTPS (checked against the CA
  that signed the certificate) and gives no HTTP answer to a plaintext request;
- API keys: a valid key 200, a missing or wrong one 401 (JSON), never proxied; the key's
  header does not reach the replica unless forwarded; rotation by ``PUT /-/api-keys`` takes
  effect at once in the same process (old key 401, new key 200);
- the ``service:`` section's ``tls`` and key settings, and their errors.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from spotd.lb.app import server_tls
from spotd.lb.auth import ApiKeyGuard, parse_keys, read_keys_file
from spotd.lb.control import ApiKeyAck, ApiKeySet
from spotd.ops.certs import build_ca, build_server_cert, cert_pem, key_pem, new_key
from spotd.spec import SpecError, load_task

from .conftest import ROOT, StubProc, free_port

TOKEN = "control-token"
KEY1, KEY2, KEY3 = "sk-one-1111", "sk-two-2222", "sk-three-3333"


# -- a certificate for 127.0.0.1, signed by a throwaway CA ------------------------------------


@dataclass
class Certs:
    ca: Path
    cert: Path
    key: Path

    def client_ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def make_certs(d: Path) -> Certs:
    """A CA and a certificate for 127.0.0.1 signed by it, as PEM files under ``d``."""
    now = dt.datetime.now(dt.UTC)
    ca_key = new_key()
    ca = build_ca(ca_key, common_name="test CA", now=now, days=2)
    srv_key = new_key()
    srv = build_server_cert(
        srv_key.public_key(), ca_cert=ca, ca_key=ca_key, hosts=["127.0.0.1"], now=now, days=1
    )
    out = Certs(d / "ca.pem", d / "cert.pem", d / "key.pem")
    out.ca.write_bytes(cert_pem(ca))
    out.cert.write_bytes(cert_pem(srv))
    out.key.write_bytes(key_pem(srv_key))
    out.key.chmod(0o600)
    return out


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


# -- the LB process ----------------------------------------------------------------------------


@dataclass
class LbProc:
    proc: subprocess.Popen[bytes]
    port: int
    control: str
    scheme: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"


async def _wait_health(control: str, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(400):
            if proc.poll() is not None:
                raise AssertionError(f"the LB exited: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                async with s.get(
                    f"{control}/-/health", headers={"Authorization": f"Bearer {TOKEN}"}
                ) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("the LB did not come up")


@pytest.fixture
async def start_lb(stubs: Callable[..., list[StubProc]]) -> AsyncIterator[Callable[..., Any]]:
    procs: list[subprocess.Popen[bytes]] = []
    (stub,) = stubs(1)

    async def start(*extra: str, keys: str = "", tls: Certs | None = None) -> LbProc:
        port, cport = free_port(), free_port()
        args = [
            sys.executable, "-m", "spotd.lb", "--port", str(port), "--control-port", str(cport),
            "--token", TOKEN, "--replica", f"{stub.id}={stub.url}", "--shutdown-timeout", "2",
            *extra,
        ]  # fmt: skip
        if tls is not None:
            args += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        env = {k: v for k, v in os.environ.items() if k != "SPOTD_LB_API_KEYS"}
        if keys:
            env["SPOTD_LB_API_KEYS"] = keys
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        procs.append(proc)
        control = f"http://127.0.0.1:{cport}"
        await _wait_health(control, proc)
        return LbProc(proc, port, control, "https" if tls else "http")

    yield start
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if p.stderr is not None:
            p.stderr.close()


def _session(certs: Certs | None = None) -> aiohttp.ClientSession:
    conn = aiohttp.TCPConnector(ssl=certs.client_ssl()) if certs else aiohttp.TCPConnector()
    return aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=10))


async def _echo(
    s: aiohttp.ClientSession, lb: LbProc, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with s.get(f"{lb.url}/echo/x?q=1", headers=headers) as r:
        return r.status, await r.json()


def _seen_headers(body: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in body["headers"].items()}


# -- TLS ---------------------------------------------------------------------------------------


async def test_tls_serves_https_and_refuses_plaintext(start_lb, certs: Certs) -> None:
    lb = await start_lb(tls=certs)
    async with _session(certs) as s:
        status, body = await _echo(s, lb, {})
        assert status == 200 and body["path"].startswith("/echo/x")
        async with s.post(f"{lb.url}/v1/completions", json={"prompt": "p", "max_tokens": 2}) as r:
            assert r.status == 200 and (await r.json())["usage"]["completion_tokens"] == 2
    # without the CA the certificate is not trusted: TLS is real, not a pass-through
    async with _session() as s:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await s.get(f"https://127.0.0.1:{lb.port}/echo/x")
        # plain HTTP to the TLS port: no HTTP answer (the handshake fails, the socket closes)
        with pytest.raises(aiohttp.ClientError):
            async with s.get(f"http://127.0.0.1:{lb.port}/echo/x") as r:
                pytest.fail(f"plaintext got an HTTP answer: {r.status}")
    # the same with bare bytes: whatever comes back is not HTTP
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    writer.write(b"GET /echo/x HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    try:
        got = await asyncio.wait_for(reader.read(1024), 5)
    except (ConnectionError, OSError):
        got = b""
    writer.close()
    assert not got.startswith(b"HTTP/"), got
    # the context it serves with: TLS 1.2 or later
    ctx = server_tls(str(certs.cert), str(certs.key))
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2


# -- API keys ----------------------------------------------------------------------------------

KEY_CASES = [
    pytest.param({"Authorization": f"Bearer {KEY1}"}, 200, id="valid"),
    pytest.param({"Authorization": f"bearer {KEY2}"}, 200, id="second-key-any-case-scheme"),
    pytest.param({}, 401, id="missing"),
    pytest.param({"Authorization": "Bearer sk-wrong"}, 401, id="wrong"),
    pytest.param({"Authorization": f"Bearer {KEY1}x"}, 401, id="prefix-of-a-longer-key"),
    pytest.param({"Authorization": f"Bearer {KEY1[:-1]}"}, 401, id="truncated"),
    pytest.param({"Authorization": f"Basic {KEY1}"}, 401, id="not-bearer"),
    pytest.param({"Authorization": "Bearer "}, 401, id="empty"),
    pytest.param({"X-Api-Key": KEY1}, 401, id="other-header"),
]


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_api_keys_with_and_without_tls(start_lb, certs: Certs, tls: bool) -> None:
    lb = await start_lb(keys=f"{KEY1},{KEY2}", tls=certs if tls else None)
    async with _session(certs if tls else None) as s:
        for case in KEY_CASES:
            headers, want = case.values
            async with s.get(f"{lb.url}/echo/x", headers=headers) as r:
                assert r.status == want, case.id
                body = await r.json()
                if want == 401:
                    assert body["error"]["code"] == 401, case.id
                    assert "API key" in body["error"]["message"]
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
                    assert "X-Replica-Id" not in r.headers  # never proxied
                else:
                    seen = _seen_headers(body)
                    assert "authorization" not in seen, "the key reached the replica"
        # the control API keeps its own token, not the client keys
        async with s.get(
            f"{lb.control}/-/replicas", headers={"Authorization": f"Bearer {KEY1}"}
        ) as r:
            assert r.status == 401
        async with s.get(
            f"{lb.control}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as r:
            assert "spotd_lb_unauthorized_total 7.0" in await r.text()


async def test_rotation_by_the_control_api_without_a_restart(start_lb) -> None:
    lb = await start_lb(keys=KEY1)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with _session() as s:

        async def status(key: str) -> int:
            async with s.get(f"{lb.url}/echo/x", headers={"Authorization": f"Bearer {key}"}) as r:
                return r.status

        assert (await status(KEY1), await status(KEY2)) == (200, 401)
        steps = [  # (keys pushed, {key: expected status})
            ((KEY1, KEY2), {KEY1: 200, KEY2: 200, KEY3: 401}),  # grace period: both
            ((KEY2,), {KEY1: 401, KEY2: 200, KEY3: 401}),  # the old key stops working
            ((KEY3,), {KEY1: 401, KEY2: 401, KEY3: 200}),
        ]
        for keys, want in steps:
            async with s.put(
                f"{lb.control}/-/api-keys", json=ApiKeySet(keys=keys).to_json(), headers=auth
            ) as r:
                assert r.status == 200
                ack = ApiKeyAck.from_json(await r.json())
                assert ack.count == len(keys) and KEY1 not in await r.text()
            assert {k: await status(k) for k in want} == want, keys
        async with s.get(f"{lb.control}/-/api-keys", headers=auth) as r:
            text = await r.text()
            assert r.status == 200 and KEY3 not in text and '"count": 1' in text
        # a malformed set is refused and the keys in force stay
        async with s.put(f"{lb.control}/-/api-keys", json={"keys": "x"}, headers=auth) as r:
            assert r.status == 400
        async with s.put(f"{lb.control}/-/api-keys", json={"keys": ["a b"]}, headers=auth) as r:
            assert r.status == 400
        assert await status(KEY3) == 200
        # an empty set turns keys off; the Authorization header then passes as any other
        async with s.put(f"{lb.control}/-/api-keys", json={"keys": []}, headers=auth) as r:
            assert r.status == 200
        assert await status("anything") == 200
    assert lb.proc.poll() is None  # the same process throughout


@pytest.mark.parametrize(
    ("extra", "headers", "forwarded"),
    [
        pytest.param((), {"Authorization": f"Bearer {KEY1}"}, None, id="stripped"),
        pytest.param(
            ("--forward-api-key",),
            {"Authorization": f"Bearer {KEY1}"},
            ("authorization", f"Bearer {KEY1}"),
            id="forwarded",
        ),
        pytest.param(("--api-key-header", "X-Api-Key"), {"X-Api-Key": KEY1}, None, id="own-header"),
        pytest.param(
            ("--api-key-header", "X-Api-Key", "--forward-api-key"),
            {"X-Api-Key": KEY1, "Authorization": "Bearer replica-own"},
            ("x-api-key", KEY1),
            id="own-header-forwarded",
        ),
    ],
)
async def test_the_key_reaches_the_replica_only_when_forwarded(
    start_lb, extra: tuple[str, ...], headers: dict[str, str], forwarded: tuple[str, str] | None
) -> None:
    lb = await start_lb(*extra, keys=KEY1)
    async with _session() as s:
        status, body = await _echo(s, lb, headers)
    assert status == 200
    seen = _seen_headers(body)
    if forwarded is None:
        assert not any(KEY1 in v for v in seen.values()), seen
    else:
        assert seen[forwarded[0]] == forwarded[1]


async def test_keys_file(start_lb, tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text(f"# clients\n{KEY1}\n\n  {KEY2}  \n")
    f.chmod(0o600)
    lb = await start_lb("--api-keys-file", str(f))
    async with _session() as s:
        for key, want in ((KEY1, 200), (KEY2, 200), ("# clients", 401)):
            async with s.get(f"{lb.url}/echo/x", headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == want, key


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        pytest.param(["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together",
                     id="half-tls"),
        pytest.param(["--tls-cert", "/nonexistent/c", "--tls-key", "/nonexistent/k"],
                     "No such file", id="no-files"),
        pytest.param(["--api-keys-file", "OPEN"], "readable by others", id="keys-file-0644"),
    ],
)  # fmt: skip
def test_the_lb_refuses_to_start(tmp_path: Path, args: list[str], phrase: str) -> None:
    open_file = tmp_path / "keys"
    open_file.write_text(KEY1 + "\n")
    open_file.chmod(0o644)
    args = [str(open_file) if a == "OPEN" else a for a in args]
    r = subprocess.run(
        [sys.executable, "-m", "spotd.lb", "--port", str(free_port()), "--control-port",
         str(free_port()), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 2 and phrase in r.stderr, r.stderr


# -- the guard and the records, in process -------------------------------------------------------


def test_guard_parsing_and_records(tmp_path: Path) -> None:
    g = ApiKeyGuard()
    assert not g.enabled and g.allows({}) and g.drop is None
    g.replace([KEY1, " ", KEY1, KEY2])
    assert (g.count, g.enabled, g.drop, g.version) == (2, True, "authorization", 1)
    assert g.allows({"Authorization": f"Bearer {KEY2}"})
    assert not g.allows({"Authorization": KEY2})
    g.replace([KEY1], header="X-Key", forward=True)
    assert g.drop is None and g.allows({"X-Key": KEY1}) and not g.allows({"X-Key": KEY2})
    with pytest.raises(ValueError, match="header name"):
        g.replace([KEY1], header="Bad Header")
    with pytest.raises(ValueError, match="whitespace"):
        parse_keys(["a\tb"])
    assert parse_keys([" a ", "", "a", "b"]) == ("a", "b")
    f = tmp_path / "k"
    f.write_text("a\n")
    f.chmod(0o640)
    with pytest.raises(ValueError, match="chmod 600"):
        read_keys_file(f)
    raw = ApiKeySet(keys=(KEY1,), header="X-Key", forward=True).to_json()
    assert ApiKeySet.from_json(raw) == ApiKeySet(keys=(KEY1,), header="X-Key", forward=True)
    assert KEY1 not in repr(ApiKeySet(keys=(KEY1,)))
    for bad in ([], {"keys": [1]}, {"keys": [], "forward": "yes"}):
        with pytest.raises(ValueError):
            ApiKeySet.from_json(bad)


# -- the service section -------------------------------------------------------------------------

SERVICE = "run: x\nsecrets: {API_KEYS: null}\nservice:\n  readiness_probe: /\n"


def test_service_section_parses_tls_and_keys() -> None:
    t = load_task(
        "t.yaml",
        text=SERVICE + "  tls: {keyfile: k.pem, certfile: c.pem}\n  api_keys_env: API_KEYS\n"
        "  api_key_header: X-Api-Key\n  forward_api_key: true\n",
        env_overrides={"API_KEYS": f"{KEY1},{KEY2}"},
    )
    spec = t.service
    assert spec is not None and spec.tls is not None
    assert (spec.tls.keyfile, spec.tls.certfile) == ("k.pem", "c.pem")
    assert (spec.api_keys_env, spec.api_key_header, spec.forward_api_key) == (
        "API_KEYS", "X-Api-Key", True,
    )  # fmt: skip
    from spotd.control.lbkeeper import api_keys_of

    assert api_keys_of(t) == ApiKeySet(keys=(KEY1, KEY2), header="X-Api-Key", forward=True)
    assert KEY1 not in str(t.redacted())
    plain = load_task("t.yaml", text=SERVICE, env_overrides={"API_KEYS": "x"})
    assert plain.service is not None and plain.service.tls is None
    assert api_keys_of(plain) == ApiKeySet()


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        pytest.param("  tls: {keyfile: k.pem}\n", "(`certfile` is missing)", id="no-certfile"),
        pytest.param("  tls: {certfile: c.pem}\n", "(`keyfile` is missing)", id="no-keyfile"),
        pytest.param("  tls: {}\n", "tls needs `keyfile` and `certfile`", id="empty"),
        pytest.param("  tls: c.pem\n", "tls is a mapping", id="not-a-mapping"),
        pytest.param("  tls: {keyfile: k, certfile: c, ca: x}\n", "unknown key", id="unknown-key"),
        pytest.param("  api_keys_env: sk-123\n", "the keys themselves do not go", id="key-as-name"),
        pytest.param("  api_key_header: 'X Key'\n", "HTTP header name", id="bad-header"),
    ],
)  # fmt: skip
def test_service_section_errors(extra: str, phrase: str) -> None:
    with pytest.raises(SpecError) as info:
        load_task("t.yaml", text=SERVICE + extra, env_overrides={"API_KEYS": "x"})
    assert phrase in str(info.value), str(info.value)
