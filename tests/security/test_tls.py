"""TLS for the TCP API: certificates from ``spotd tls init``, a real daemon serving them on
127.0.0.1, and clients that trust only the CA they are given.

Before: the TCP API spoke plaintext HTTP on any address, so the admin token crossed the network
in clear text; clients had no way to verify whom they were talking to; ``spotd tls init`` did not
exist. After: one TLS listener (TLS 1.2+) when ``tls_cert``/``tls_key`` are set, a refusal to
start plaintext on a non-loopback address unless ``allow_plaintext_tcp``, and clients that verify
chain and host name against ``--ca-file``/``SPOTD_CA_FILE`` and say so plainly when they cannot.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from spotd.config import ConfigError, Settings, load_settings
from spotd.ops.certs import (
    CLOCK_SKEW,
    CertError,
    build_ca,
    build_server_cert,
    default_hosts,
    new_key,
    parse_hosts,
)
from spotd.ops.tls import TlsError, client_context, is_loopback, plaintext_refusal, server_context
from spotd.ops.tls_init import TlsInitError, init_tls
from spotd.server import TransportError, tcp_tls
from tests.conftest import ROOT, DaemonProc, kill_instance_groups

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
TOKEN = "tls-admin-s3cret"


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _spotd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spotd.main", *args],
        env=env if env is not None else dict(os.environ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- certificates: pure builders ----------------------------------------------------------


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        (["localhost"], [x509.DNSName("localhost")]),
        (["127.0.0.1"], [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        (["::1"], [x509.IPAddress(ipaddress.ip_address("::1"))]),
        (["[::1]"], [x509.IPAddress(ipaddress.ip_address("::1"))]),
        (["Head.Example.COM."], [x509.DNSName("head.example.com")]),
        (["*.svc.example"], [x509.DNSName("*.svc.example")]),
        (
            ["a.example", "10.0.0.5", "a.example", " "],
            [x509.DNSName("a.example"), x509.IPAddress(ipaddress.ip_address("10.0.0.5"))],
        ),
    ],
)
def test_hosts_become_dns_names_and_ip_addresses(hosts, expected) -> None:
    assert list(parse_hosts(hosts)) == expected


@pytest.mark.parametrize(
    "hosts",
    [[], [""], ["bad_name"], ["-lead.example"], ["a..b"], ["*"], ["*.com"], ["x" * 64 + ".io"]],
)
def test_hosts_a_certificate_cannot_carry_are_refused(hosts) -> None:
    with pytest.raises(CertError):
        parse_hosts(hosts)


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("gpu-head", ("localhost", "127.0.0.1", "::1", "gpu-head")),
        ("Node7.Cluster", ("localhost", "127.0.0.1", "::1", "node7.cluster")),
        ("localhost", ("localhost", "127.0.0.1", "::1")),
        ("odd_container_name", ("localhost", "127.0.0.1", "::1")),
    ],
)
def test_default_hosts_are_loopback_and_this_machine(hostname, expected) -> None:
    assert default_hosts(hostname) == expected


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


@pytest.fixture(scope="module")
def ca() -> tuple[x509.Certificate, object]:
    key = new_key()
    return build_ca(key, common_name="test CA", now=NOW, days=3650), key


def test_the_ca_signs_server_certificates_only(ca) -> None:
    cert, _ = ca
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)  # self-signed
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=3650)


@pytest.mark.parametrize(
    ("hosts", "days", "not_after"),
    [
        (["localhost", "127.0.0.1"], 825, NOW + dt.timedelta(days=825)),
        (["head.example"], 1, NOW + dt.timedelta(days=1)),
        # never longer than the CA that signs it
        (["head.example"], 5000, NOW + dt.timedelta(days=3650)),
    ],
)
def test_the_server_certificate(ca, hosts, days, not_after) -> None:
    ca_cert, ca_key = ca
    key = new_key()
    cert = build_server_cert(
        key.public_key(), ca_cert=ca_cert, ca_key=ca_key, hosts=hosts, now=NOW, days=days
    )
    cert.verify_directly_issued_by(ca_cert)
    assert list(_ext(cert, x509.SubjectAlternativeName).value) == list(parse_hosts(hosts))
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == _ext(ca_cert, x509.SubjectKeyIdentifier).value.digest
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW
    assert cert.not_valid_after_utc == not_after


@pytest.mark.parametrize(
    ("now", "days", "message"),
    [
        (NOW, 0, "at least one day"),
        (NOW + dt.timedelta(days=4000), 10, "the CA expired"),
    ],
)
def test_certificates_that_cannot_be_issued(ca, now, days, message) -> None:
    ca_cert, ca_key = ca
    with pytest.raises(CertError, match=message):
        build_server_cert(
            new_key().public_key(),
            ca_cert=ca_cert,
            ca_key=ca_key,
            hosts=["localhost"],
            now=now,
            days=days,
        )


# -- the plaintext rule and the daemon's settings -------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("head.example", False),
        ("localhost.evil.example", False),
    ],
)
def test_loopback_hosts(host, loopback) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("host", "tls", "allow", "refused"),
    [
        ("127.0.0.1", False, False, False),
        ("0.0.0.0", False, False, True),
        ("0.0.0.0", True, False, False),
        ("0.0.0.0", False, True, False),
        ("10.0.0.5", False, False, True),
    ],
)
def test_plaintext_tcp_only_on_loopback_unless_allowed(host, tls, allow, refused) -> None:
    why = plaintext_refusal(host, tls=tls, allow_plaintext=allow)
    assert (why is not None) is refused
    if why:
        assert "without TLS" in why and "allow_plaintext_tcp" in why and "tls_cert" in why


def _settings(home: Path, **env: str) -> Settings:
    return load_settings(home, env={"SPOTD_API_TOKEN": TOKEN, **env})


@pytest.mark.parametrize(
    ("env", "cert", "allow"),
    [
        ({}, None, False),
        ({"SPOTD_TLS_CERT": "tls/s.pem", "SPOTD_TLS_KEY": "tls/s.key"}, "tls/s.pem", False),
        ({"SPOTD_TLS_CERT": "/etc/s.pem", "SPOTD_TLS_KEY": "/etc/s.key"}, "/etc/s.pem", False),
        ({"SPOTD_ALLOW_PLAINTEXT_TCP": "true"}, None, True),
        ({"SPOTD_ALLOW_PLAINTEXT_TCP": "0"}, None, False),
    ],
)
def test_tls_settings_from_the_environment(tmp_path, env, cert, allow) -> None:
    s = _settings(tmp_path, **env)
    assert s.tls_cert == (tmp_path / cert if cert else None)  # relative: under the home
    assert s.allow_plaintext_tcp is allow


def test_tls_settings_from_the_config_file(tmp_path) -> None:
    (tmp_path / "config.yaml").write_text(
        "tcp_host: 0.0.0.0\napi_token: t\ntls_cert: /c.pem\ntls_key: /k.pem\n"
        "tls_ca: ca.pem\nallow_plaintext_tcp: false\n"
    )
    s = load_settings(tmp_path, env={})
    assert (s.tls_cert, s.tls_key, s.tls_ca) == (
        Path("/c.pem"),
        Path("/k.pem"),
        tmp_path / "ca.pem",
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SPOTD_TLS_CERT": "/c.pem"}, "both tls_cert and tls_key"),
        ({"SPOTD_TLS_KEY": "/k.pem"}, "both tls_cert and tls_key"),
    ],
)
def test_half_a_tls_config_is_an_error(tmp_path, env, message) -> None:
    with pytest.raises(ConfigError, match=message):
        _settings(tmp_path, **env)


@pytest.mark.parametrize("value", ["3", "sometimes", "[true]"])
def test_allow_plaintext_must_be_a_boolean(tmp_path, value) -> None:
    (tmp_path / "config.yaml").write_text(f"allow_plaintext_tcp: {value}\n")
    with pytest.raises(ConfigError, match="true or false"):
        load_settings(tmp_path, env={})
    with pytest.raises(ConfigError, match="true or false"):
        load_settings(tmp_path / "elsewhere", env={"SPOTD_ALLOW_PLAINTEXT_TCP": value})


@pytest.mark.parametrize(
    ("tcp", "extra", "outcome"),
    [
        (None, {}, None),
        ("127.0.0.1:8470", {}, None),
        ("0.0.0.0:8470", {}, "refused"),
        ("0.0.0.0:8470", {"SPOTD_ALLOW_PLAINTEXT_TCP": "1"}, None),
        ("0.0.0.0:8470", {"TLS": "1"}, "tls"),
        ("127.0.0.1:8470", {"TLS": "1"}, "tls"),
        ("127.0.0.1:8470", {"TLS": "1", "SPOTD_TLS_CA": "tls/missing-ca.pem"}, "bad ca"),
    ],
)
def test_what_the_tcp_listener_gets(tmp_path, tls_dir, tcp, extra, outcome) -> None:
    env = {k: v for k, v in extra.items() if k != "TLS"}
    if tcp:
        env["SPOTD_TCP"] = tcp
    if "TLS" in extra:
        env |= {
            "SPOTD_TLS_CERT": str(tls_dir / "server.pem"),
            "SPOTD_TLS_KEY": str(tls_dir / "server.key"),
        }
    settings = _settings(tmp_path, **env)
    if outcome in ("refused", "bad ca"):
        with pytest.raises(TransportError, match=r"without TLS|cannot read the CA file"):
            tcp_tls(settings)
        return
    ctx = tcp_tls(settings)
    if outcome is None:
        assert ctx is None
    else:
        assert isinstance(ctx, ssl.SSLContext)
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("missing.pem", "server.key", "no such file"),
        ("server.pem", "ca.key", "not a PEM certificate and its private key"),
        ("server.key", "server.key", "not a PEM certificate"),
    ],
)
def test_unusable_tls_files_are_a_clear_error(tls_dir, cert, key, message) -> None:
    with pytest.raises(TlsError, match=message):
        server_context(tls_dir / cert, tls_dir / key)


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing.pem", "no such file"), ("server.key", "not a PEM CA certificate")],
)
def test_unusable_ca_files_are_a_clear_error(tls_dir, name, message) -> None:
    with pytest.raises(TlsError, match=message):
        client_context(ca_file=tls_dir / name)


# -- spotd tls init ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory) -> Path:
    """``spotd tls init`` as an operator runs it (a subprocess), for 127.0.0.1 and localhost."""
    d = tmp_path_factory.mktemp("tls") / "tls"
    r = _spotd("tls", "init", "--dir", str(d), "--hosts", "localhost,127.0.0.1,::1")
    assert r.returncode == 0, r.stderr
    assert f"tls_cert: {d / 'server.pem'}" in r.stdout
    assert f"tls_key: {d / 'server.key'}" in r.stdout
    assert f"SPOTD_CA_FILE={d / 'ca.pem'}" in r.stdout
    return d


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("other") / "tls"
    r = _spotd("tls", "init", "--dir", str(d), "--hosts", "localhost,127.0.0.1")
    assert r.returncode == 0, r.stderr
    return d / "ca.pem"


def test_keys_are_private_and_certificates_readable(tls_dir) -> None:
    assert stat.S_IMODE(tls_dir.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tls_dir.iterdir()}
    assert modes == {"ca.key": 0o600, "server.key": 0o600, "ca.pem": 0o644, "server.pem": 0o644}


def test_tls_init_never_overwrites_keys_without_force(tls_dir) -> None:
    before = {p.name: p.read_bytes() for p in tls_dir.iterdir()}
    r = _spotd("tls", "init", "--dir", str(tls_dir))
    assert r.returncode == 1
    assert "already exist" in r.stderr and "--force" in r.stderr
    assert "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in tls_dir.iterdir()} == before


def test_force_renews_the_server_certificate_under_the_same_ca(tmp_path) -> None:
    d = tmp_path / "tls"
    first = init_tls(d, hosts=("localhost",), days=10, force=False, now=NOW)
    ca_before = first.files.ca_cert.read_bytes(), first.files.ca_key.read_bytes()
    key_before = first.files.server_key.read_bytes()
    with pytest.raises(TlsInitError, match="already exist"):
        init_tls(d, hosts=("localhost",), days=10, force=False, now=NOW)
    second = init_tls(d, hosts=("head.example",), days=20, force=True, now=NOW)
    assert second.reused_ca
    assert (second.files.ca_cert.read_bytes(), second.files.ca_key.read_bytes()) == ca_before
    assert second.files.server_key.read_bytes() != key_before
    assert stat.S_IMODE(second.files.server_key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(second.files.server_cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_before[0]))
    assert list(_ext(cert, x509.SubjectAlternativeName).value) == [x509.DNSName("head.example")]


def test_tls_init_tightens_a_loose_directory(tmp_path) -> None:
    d = tmp_path / "loose"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    init_tls(d, hosts=("localhost",), days=10, force=False, now=NOW)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_tls_init_refuses_a_bad_host_name(tmp_path) -> None:
    r = _spotd("tls", "init", "--dir", str(tmp_path / "t"), "--hosts", "ok.example,bad_name")
    assert r.returncode == 2
    assert "bad_name" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "t").exists()


# -- a real daemon serving TLS on 127.0.0.1 ---------------------------------------------------


@pytest.fixture(scope="module")
def tls_daemon(tls_dir) -> Iterator[tuple[DaemonProc, str]]:
    port = _free_port()
    home = Path(f"/tmp/spotd-tls{os.getpid()}-{time.monotonic_ns() % 10**9}")
    d = DaemonProc(
        home,
        {
            "SPOTD_TCP": f"127.0.0.1:{port}",
            "SPOTD_API_TOKEN": TOKEN,
            "SPOTD_TLS_CERT": str(tls_dir / "server.pem"),
            "SPOTD_TLS_KEY": str(tls_dir / "server.key"),
        },
    )
    d.start()
    try:
        yield d, f"https://127.0.0.1:{port}"
    finally:
        d.stop()
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)


def _spotctl(d: DaemonProc, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**d.env, "SPOTD_API_TOKEN": TOKEN}
    for key in ("SPOTD_URL", "SPOTD_CA_FILE"):
        full.pop(key, None)
    full |= env
    return subprocess.run(
        [sys.executable, "-m", "spotd.cli.main", *args],
        env=full,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_spotctl_with_the_ca_lists_jobs_over_https(tls_daemon, tls_dir) -> None:
    d, url = tls_daemon
    r = _spotctl(
        d, "--url", url, "--ca-file", str(tls_dir / "ca.pem"), "jobs", "queue", "-o", "json"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    # the same from the environment, as `spotd tls init` suggests
    r = _spotctl(
        d, "jobs", "queue", "-o", "json", SPOTD_URL=url, SPOTD_CA_FILE=str(tls_dir / "ca.pem")
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_spotctl_without_the_ca_refuses_the_daemon(tls_daemon) -> None:
    d, url = tls_daemon
    r = _spotctl(d, "--url", url, "jobs", "queue", "-o", "json")
    assert r.returncode == 3
    assert "certificate" in r.stderr and "not trusted" in r.stderr
    assert "--ca-file" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_spotctl_trusting_another_ca_refuses_the_daemon(tls_daemon, other_ca) -> None:
    d, url = tls_daemon
    r = _spotctl(d, "--url", url, "--ca-file", str(other_ca), "jobs", "queue")
    assert r.returncode == 3
    assert "not trusted" in r.stderr and str(other_ca) in r.stderr
    assert "Traceback" not in r.stderr


def test_spotctl_with_a_missing_ca_file_says_so(tls_daemon, tmp_path) -> None:
    d, url = tls_daemon
    r = _spotctl(d, "--url", url, "--ca-file", str(tmp_path / "nope.pem"), "jobs", "queue")
    assert r.returncode == 3
    assert "cannot read the CA file" in r.stderr and "Traceback" not in r.stderr


def test_plain_http_to_the_tls_port_gets_no_http_answer(tls_daemon) -> None:
    _, url = tls_daemon
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert not got.startswith(b"HTTP/"), got[:200]
    assert b'"ok"' not in got


async def test_http_client_with_the_ca_needs_the_token(tls_daemon, tls_dir) -> None:
    _, url = tls_daemon
    ctx = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        async with s.get(f"{url}/v1/health", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200
            assert (await r.json())["ok"] is True
        async with s.get(f"{url}/v1/health") as r:
            assert r.status == 401
        # the name in the certificate works as well as the address
        host_url = url.replace("127.0.0.1", "localhost")
        async with s.get(f"{host_url}/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200


async def test_tls_older_than_1_2_is_refused(tls_daemon, tls_dir) -> None:
    _, url = tls_daemon
    ctx = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
    try:  # let this client offer TLS 1.0/1.1 (OpenSSL's security level forbids it by default)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # that is the point here
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        with pytest.raises(aiohttp.ClientError):
            async with s.get(f"{url}/v1/health", headers={"Authorization": f"Bearer {TOKEN}"}):
                pass


def test_the_sdk_with_a_ca_file(tls_daemon, tls_dir) -> None:
    import spotd
    from spotd.sdk.errors import DaemonUnreachableError

    _, url = tls_daemon
    good = spotd.Connection(url=url, token=TOKEN, ca_file=tls_dir / "ca.pem")
    assert spotd.jobs.queue(connection=good) == []
    with pytest.raises(DaemonUnreachableError, match="not trusted"):
        spotd.jobs.queue(connection=spotd.Connection(url=url, token=TOKEN))


async def test_a_certificate_for_another_name_is_refused(tmp_path) -> None:
    """Chain fine, name wrong: the client names the mismatch and the fix."""
    from spotd.sdk.client import Client, UntrustedDaemon

    files = init_tls(
        tmp_path / "tls",
        hosts=("elsewhere.example",),
        days=1,
        force=False,
        now=dt.datetime.now(dt.UTC),
    ).files

    async def jobs(_: web.Request) -> web.Response:
        return web.json_response([])

    app = web.Application()
    app.router.add_get("/v1/jobs", jobs)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    site = web.TCPSite(
        runner, "127.0.0.1", port, ssl_context=server_context(files.server_cert, files.server_key)
    )
    await site.start()
    try:
        async with Client.connect(url=f"https://127.0.0.1:{port}", ca_file=files.ca_cert) as c:
            with pytest.raises(UntrustedDaemon, match="mismatch") as info:
                await asyncio.wait_for(c.jobs(), 10)
        assert "spotd tls init --hosts" in str(info.value)
    finally:
        await runner.cleanup()


# -- the daemon refuses plaintext on a non-loopback address ------------------------------------


def test_a_non_loopback_plaintext_config_refuses_to_start(tmp_path) -> None:
    home = Path(f"/tmp/spotd-pt{os.getpid()}-{time.monotonic_ns() % 10**9}")
    env = {
        **os.environ,
        "SPOTD_HOME": str(home),
        "SPOTD_TCP": f"0.0.0.0:{_free_port()}",
        "SPOTD_API_TOKEN": TOKEN,
    }
    for k in ("SPOTD_TLS_CERT", "SPOTD_TLS_KEY", "SPOTD_ALLOW_PLAINTEXT_TCP", "SPOTD_URL"):
        env.pop(k, None)
    try:
        r = _spotd("--json-logs", env=env)
        assert r.returncode == 2, r.stderr
        assert "refusing to serve the TCP API on 0.0.0.0 without TLS" in r.stderr
        assert "allow_plaintext_tcp" in r.stderr and "spotd tls init" in r.stderr
        assert "Traceback" not in r.stderr
        assert not (home / "spotd.sock").exists() and not (home / "spotd.pid").exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_a_daemon_with_unusable_tls_files_refuses_to_start(tmp_path) -> None:
    home = Path(f"/tmp/spotd-bt{os.getpid()}-{time.monotonic_ns() % 10**9}")
    env = {
        **os.environ,
        "SPOTD_HOME": str(home),
        "SPOTD_TCP": f"127.0.0.1:{_free_port()}",
        "SPOTD_API_TOKEN": TOKEN,
        "SPOTD_TLS_CERT": str(tmp_path / "missing.pem"),
        "SPOTD_TLS_KEY": str(tmp_path / "missing.key"),
    }
    try:
        r = _spotd("--json-logs", env=env)
        assert r.returncode == 2, r.stderr
        assert "missing.pem" in r.stderr and "Traceback" not in r.stderr
    finally:
        shutil.rmtree(home, ignore_errors=True)
