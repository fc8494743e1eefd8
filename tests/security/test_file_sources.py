"""Workdir and file_mounts sources come from the client, never from the daemon's disk.

The attack, as a user found it: a job's ``workdir`` or ``file_mounts`` source was any path on
the daemon's host, packed by the daemon from its own disk: a project token's job could read
``~/.aws/credentials`` or the state database (``file_mounts: {/x: ~/.spotd/state.db}``), and a
mount target could name another user's home (``~user/x``) or climb out with ``..``.

Now the client packs and uploads its files (``/v1/blobs``: content-addressed, only what the
daemon lacks travels, a wrong digest stores nothing) and the launch names the packages; a
daemon-host path is refused to a project token and to the admin outside ``file_roots``; a
client-written manifest cannot place a file outside its package.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from spotd.control.refusals import Refused
from spotd.control.sources import check_sources, package_files
from spotd.files.workdir import BlobStore, PackageError, check_mount_target, materialize
from spotd.sdk.client import ApiError, Client
from spotd.spec import load_task
from tests.e2e.helpers import logs, wait_job
from tests.ops.conftest import free_port, make_daemon  # noqa: F401 - the fixture

ADMIN = "admin-tok-F5s"
TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}
SECRET = "aws_secret_access_key = sentinel-4471"


def _tcp_daemon(make: Any, **env: str) -> str:
    port = free_port()
    make(SPOTD_TCP=f"127.0.0.1:{port}", SPOTD_API_TOKEN=ADMIN, **env)
    return f"http://127.0.0.1:{port}"


def _put_count(metrics: str) -> int:
    """Blob uploads the daemon stored (PUT answered 201), from its Prometheus text."""
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in metrics.splitlines()
        if line.startswith("spotd_api_requests_total{")
        and 'route="/v1/blobs/{sha256}"' in line
        and 'code="201"' in line
    )


# -- through a real daemon over TCP ------------------------------------------------------


async def test_a_project_token_cannot_name_daemon_host_paths(make_daemon, tmp_path) -> None:  # noqa: F811
    url = _tcp_daemon(make_daemon)
    aws = tmp_path / "daemon-host" / ".aws"  # stands for /root/.aws on the daemon's host
    aws.mkdir(parents=True)
    (aws / "credentials").write_text(SECRET)
    async with Client.connect(url=url, token=ADMIN) as admin:
        token = (await admin.create_project("ml"))["token"]
        health = await admin.request("GET", "/v1/health")
    state_db = Path(health["home"]) / "state.db"  # the daemon's own database
    cases = [
        (f"workdir: {aws}\nrun: cat credentials\n", "workdir"),
        (f"file_mounts: {{/x: {state_db}}}\nrun: cat /x\n", "/x"),
        (f"file_mounts: {{/x/c: {aws}/credentials}}\nrun: cat /x/c\n", "/x/c"),
        (f"file_mounts: {{~/aws: {aws}}}\nrun: cat ~/aws/credentials\n", "~/aws"),
    ]
    session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})
    async with session:
        for yaml, where in cases:
            for dry_run in (True, False):
                # the old way: the daemon packs paths from its own disk
                body = {"yaml": yaml, "base_dir": "/", "dry_run": dry_run}
                async with session.post(f"{url}/v1/jobs", json=body) as r:
                    answer = await r.json()
                assert r.status == 403, (yaml, answer)
                assert where in answer["error"] and "daemon's host" in answer["error"]
    async with Client.connect(url=url, token=ADMIN) as admin:
        assert await admin.jobs() == []  # nothing launched, so nothing of those files ran
        # the admin too, over TCP with no file_roots configured
        with pytest.raises(ApiError) as refused:
            await admin.launch(cases[0][0], filename="a.yaml", host_paths=True)
        assert refused.value.status == 403 and "file_roots" in refused.value.message
    assert not list((Path(health["home"]) / "cas" / "blobs").rglob("*"))


async def test_a_remote_client_s_workdir_reaches_the_job_and_only_missing_blobs_travel(
    make_daemon,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = _tcp_daemon(make_daemon)
    client_dir = tmp_path / "laptop" / "project"
    client_dir.mkdir(parents=True)
    (client_dir / "file.txt").write_text("hello from the client 8812")
    (client_dir / "big.bin").write_bytes(os.urandom(300_000))
    monkeypatch.chdir(client_dir)
    yaml = "resources: {cpus: 1+}\nworkdir: .\nrun: cat file.txt\n"
    async with Client.connect(url=url, token=ADMIN) as admin:
        token = (await admin.create_project("ml"))["token"]
    async with Client.connect(url=url, token=token) as c:
        # upload, then take the client's directory away: the daemon cannot read it anyway
        packages, first = await c.upload_files({"workdir": client_dir})
        monkeypatch.chdir(tmp_path)
        (client_dir / "file.txt").rename(tmp_path / "moved.txt")
        job = await c.request(
            "POST", "/v1/jobs", json={"yaml": yaml, "filename": "w.yaml", "packages": packages}
        )
        job = await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL, timeout=60)
        text = await logs(c, job["id"])
        assert job["status"] == "SUCCEEDED", text
        assert "hello from the client 8812" in text
        # the same workdir again, through the SDK's launch: nothing travels
        (tmp_path / "moved.txt").rename(client_dir / "file.txt")
        monkeypatch.chdir(client_dir)
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}) as r,
        ):
            puts_before = _put_count(await r.text())
        again = await c.launch(yaml, filename="w.yaml")
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}) as r,
        ):
            puts_after = _put_count(await r.text())
        await wait_job(c, again["id"], lambda j: j["status"] in TERMINAL, timeout=60)
    assert (first.files, first.uploaded_blobs) == (2, 3)  # two files and the manifest
    assert again["upload"]["uploaded_blobs"] == 0 and again["upload"]["uploaded_bytes"] == 0
    assert puts_before >= 3 and puts_after == puts_before


async def test_a_corrupted_upload_is_refused_and_leaves_no_blob(make_daemon, tmp_path) -> None:  # noqa: F811
    url = _tcp_daemon(make_daemon)
    good = b"the real content"
    sha = hashlib.sha256(good).hexdigest()
    async with Client.connect(url=url, token=ADMIN) as admin:
        token = (await admin.create_project("ml"))["token"]
        home = Path((await admin.request("GET", "/v1/health"))["home"])
    auth = {"Authorization": f"Bearer {token}"}
    cases: list[tuple[str, bytes, int]] = [
        (sha, b"something else", 400),  # the digest does not match
        (sha.upper(), good, 400),  # not a blob name
        ("g" * 64, good, 400),
        (sha[:-1], good, 400),
    ]
    async with aiohttp.ClientSession(headers=auth) as s:
        for name, data, status in cases:
            async with s.put(f"{url}/v1/blobs/{name}", data=data) as r:
                assert r.status == status, (name, await r.text())
        async with s.post(f"{url}/v1/blobs/missing", json={"digests": [sha]}) as r:
            assert (await r.json())["missing"] == [sha]
        assert not list((home / "cas" / "tmp").iterdir())  # no partial file left either
        for expected in (201, 200):  # idempotent
            async with s.put(f"{url}/v1/blobs/{sha}", data=good) as r:
                assert r.status == expected, await r.text()
        assert (home / "cas" / "blobs" / sha[:2] / sha).read_bytes() == good
        # a manifest that would write outside the job's directory: refused at launch
        evil = json.dumps(
            {
                "kind": "dir",
                "files": [{"path": "../../.bashrc", "sha": sha, "mode": 420, "size": len(good)}],
            }
        ).encode()
        evil_sha = hashlib.sha256(evil).hexdigest()
        async with s.put(f"{url}/v1/blobs/{evil_sha}", data=evil) as r:
            assert r.status == 201
        body = {"yaml": "workdir: .\nrun: ls\n", "packages": {"workdir": evil_sha}}
        async with s.post(f"{url}/v1/jobs", json=body) as r:
            answer = await r.json()
        assert r.status == 400 and "leaves the package" in answer["error"], answer


# -- the rules, without a daemon ---------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "refusal"),
    [
        ("~root/.ssh", "`~user` is not allowed"),
        ("~other/data", "`~user` is not allowed"),
        ("/tmp/../etc/cron.d", "`..` is not allowed"),
        ("~/../other/.ssh", "`..` is not allowed"),
        ("data/../../x", "`..` is not allowed"),
        ("/etc/ssh", "system directory"),
        ("~/data", None),
        ("~", None),
        ("/tmp/x..y", None),
        ("/data/set", None),
    ],
)
def test_mount_targets(target: str, refusal: str | None) -> None:
    if refusal is None:
        check_mount_target(target)
    else:
        with pytest.raises(PackageError, match=refusal):
            check_mount_target(target)


@pytest.mark.parametrize(
    ("yaml", "scope", "roots", "refusal"),
    [
        ("workdir: {secret}\nrun: x", "ml", ("{root}",), "only the admin may name"),
        ("workdir: {secret}\nrun: x", None, (), "outside its file_roots (none are configured)"),
        ("workdir: {secret}\nrun: x", None, ("{root}/allowed",), "outside its file_roots"),
        # a symlink inside the root to a file outside it: resolved, then refused
        (
            "file_mounts: {{/x: {root}/allowed/link}}\nrun: x",
            None,
            ("{root}/allowed",),
            "outside its file_roots",
        ),
        ("workdir: {root}/allowed\nrun: x", None, ("{root}/allowed",), None),
    ],
)
def test_daemon_host_sources(
    tmp_path: Path, yaml: str, scope: str | None, roots: tuple[str, ...], refusal: str | None
) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "credentials").write_text(SECRET)
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "link").symlink_to(secret / "credentials")
    task = load_task("t.yaml", text=yaml.format(secret=secret, root=tmp_path))
    call = dict(
        packages={},
        scope=scope,
        file_roots=[Path(r.format(root=tmp_path)) for r in roots],
        base=tmp_path,
        blobs=None,
    )
    if refusal is None:
        assert check_sources(task, **call) == {}
    else:
        with pytest.raises(Refused, match=re.escape(refusal)):
            check_sources(task, **call)


def test_an_admin_root_s_symlinks_out_are_not_packed(tmp_path: Path) -> None:
    root = tmp_path / "allowed"
    (root / "wd").mkdir(parents=True)
    (root / "wd" / "code.py").write_text("print(1)")
    (tmp_path / "credentials").write_text(SECRET)
    (root / "wd" / "creds").symlink_to(tmp_path / "credentials")
    task = load_task("t.yaml", text=f"workdir: {root / 'wd'}\nrun: x")
    with pytest.raises(PackageError, match="links outside"):
        package_files(task, tmp_path, tmp_path / "cas", file_roots=[root])


def test_a_manifest_cannot_place_files_outside_its_package(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "cas")
    blob = store.put_bytes(b"x")
    for path in ("../escape", "/etc/passwd", "a/../../b", "./.", ""):
        entry = {"path": path, "sha": blob, "mode": 0o644, "size": 1}
        manifest = store.put_bytes(json.dumps({"kind": "dir", "files": [entry]}).encode())
        with pytest.raises(PackageError, match="manifest"):
            materialize(f"cas:{manifest}", store, tmp_path / "job" / "wd")
    setuid = {"path": "x", "sha": blob, "mode": 0o4755, "size": 1}
    manifest = store.put_bytes(json.dumps({"kind": "dir", "files": [setuid]}).encode())
    with pytest.raises(PackageError, match="mode"):
        materialize(f"cas:{manifest}", store, tmp_path / "out")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "job").exists()
