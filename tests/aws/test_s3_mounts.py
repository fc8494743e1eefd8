"""``s3://`` file_mounts and the S3 package store, against moto on loopback.

The counting of requests is done on moto's backend (it runs in this process): a relaunch
must upload no package object, and its agent must read the packages from S3.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioboto3
import aiohttp
import pytest

from spotd.control.refusals import NotPermitted
from spotd.control.submit import check_buckets
from spotd.files import mounts
from spotd.files.workdir import BlobStore, HashCache, package
from spotd.spec import load_task
from tests.aws.motoserver import Moto, aws_env, moto_server  # noqa: F401
from tests.aws.test_daemon_on_moto import TERMINAL, AwsDaemon, aws_daemon  # noqa: F401
from tests.conftest import DaemonProc, kill_instance_groups
from tests.e2e.helpers import logs, wait_job, wait_log

pytestmark = [pytest.mark.aws]


@dataclass
class S3Counts:
    puts: list[str] = field(default_factory=list)
    gets: list[str] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)

    def clear(self) -> None:
        self.puts.clear()
        self.gets.clear()
        self.heads.clear()


@contextlib.contextmanager
def counting_s3() -> Iterator[S3Counts]:
    """Every PutObject / GetObject / HeadObject request moto answers (key names), from any
    process."""
    from moto.s3.responses import S3Response

    counts = S3Counts()
    put, get, head = S3Response.put_object, S3Response.get_object, S3Response.head_object

    def put_object(self: Any) -> Any:
        counts.puts.append(self.parse_key_name())
        return put(self)

    def get_object(self: Any) -> Any:
        counts.gets.append(self.parse_key_name())
        return get(self)

    def head_object(self: Any, *a: Any, **kw: Any) -> Any:
        counts.heads.append(self.parse_key_name())
        return head(self, *a, **kw)

    S3Response.head_object = head_object  # type: ignore[method-assign]
    S3Response.put_object = put_object  # type: ignore[method-assign]
    S3Response.get_object = get_object  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        S3Response.put_object = put  # type: ignore[method-assign]
        S3Response.get_object = get  # type: ignore[method-assign]
        S3Response.head_object = head  # type: ignore[method-assign]


async def make_bucket(m: Moto, objects: dict[str, bytes]) -> str:
    bucket = f"spotd-data-{uuid.uuid4().hex[:8]}"
    async with aioboto3.Session().client("s3", endpoint_url=m.url) as s3:
        await s3.create_bucket(Bucket=bucket)
        for key, body in objects.items():
            await s3.put_object(Bucket=bucket, Key=key, Body=body)
    return bucket


DATA = {"data/a.txt": b"alpha", "data/sub/b.bin": b"\x00beta", "data2/c.txt": b"not mine"}


# -- the module, on its own -------------------------------------------------------------------


async def test_check_source_names_the_bucket(moto_server: Moto) -> None:  # noqa: F811
    bucket = await make_bucket(moto_server, DATA)
    await mounts.check_source(f"s3://{bucket}/data")
    await mounts.check_source(f"s3://{bucket}/data/a.txt")
    await mounts.check_source(f"s3://{bucket}")
    missing = f"spotd-nope-{uuid.uuid4().hex[:8]}"
    with pytest.raises(mounts.S3Error, match=f"bucket {missing} does not exist"):
        await mounts.check_source(f"s3://{missing}/data")
    with pytest.raises(mounts.S3Error, match=f"no object or prefix 'dat' in bucket {bucket}"):
        await mounts.check_source(f"s3://{bucket}/dat")  # a prefix of names is not a directory
    with pytest.raises(mounts.S3Error, match=f"cannot reach bucket {bucket}"):
        await mounts.check_source(
            f"s3://{bucket}/data", endpoint_url="http://127.0.0.1:9", timeout=5
        )


async def test_download_a_prefix_into_a_tree_and_an_object_into_a_file(
    moto_server: Moto,  # noqa: F811
    tmp_path: Path,
) -> None:
    bucket = await make_bucket(moto_server, DATA)
    n, size = await mounts.download(f"s3://{bucket}/data/", tmp_path / "tree")
    assert (n, size) == (2, 10)
    assert (tmp_path / "tree/a.txt").read_bytes() == b"alpha"
    assert (tmp_path / "tree/sub/b.bin").read_bytes() == b"\x00beta"
    assert not (tmp_path / "tree/c.txt").exists()  # data2/ is another prefix
    assert await mounts.download(f"s3://{bucket}/data/a.txt", tmp_path / "one.txt") == (1, 5)
    assert (tmp_path / "one.txt").read_bytes() == b"alpha"


async def test_package_store_uploads_only_what_s3_lacks(
    moto_server: Moto,  # noqa: F811
    tmp_path: Path,
) -> None:
    bucket = await make_bucket(moto_server, {})
    src = tmp_path / "wd"
    (src / "pkg").mkdir(parents=True)
    for i in range(5):
        (src / f"f{i}.txt").write_text(f"file {i}")
    (src / "pkg/run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "pkg/run.sh").chmod(0o755)
    local = BlobStore(tmp_path / "cas")
    cache = HashCache(tmp_path / "cas/hashes.db")
    first = package(src, local, cache)
    store = mounts.S3PackageStore(f"s3://{bucket}/pk")
    with counting_s3() as counts:
        up = await store.upload([first.ref], local)
        assert (up.packages, up.cached_packages, up.blobs, up.new_blobs) == (1, 0, 6, 6)
        assert len(counts.puts) == 7  # six blobs, then the manifest
        assert counts.puts[-1] == store.key(first.manifest)  # the commit point comes last
        counts.clear()
        again = await store.upload([first.ref], local)
        assert (again.cached_packages, again.new_blobs, again.heads) == (1, 0, 1)
        assert counts.puts == []
        (src / "f3.txt").write_text("changed")
        second = package(src, local, cache)
        up2 = await store.upload([second.ref], local)
        assert (up2.cached_packages, up2.blobs, up2.new_blobs) == (0, 6, 1)
        assert len(counts.puts) == 2  # the changed file and the new manifest
        counts.clear()
        out = tmp_path / "out"
        written = await store.materialize(second.ref, out)
    cache.close()
    assert written == second.bytes
    assert (out / "f3.txt").read_text() == "changed"
    assert (out / "pkg/run.sh").read_text() == "#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((out / "pkg/run.sh").stat().st_mode) == 0o755
    assert len(counts.gets) == 7  # the manifest and each file, from S3


# -- a local-provider daemon whose agents read a bucket on moto ------------------------------


@pytest.fixture
async def local_daemon(moto_server: Moto) -> AsyncIterator[DaemonProc]:  # noqa: F811
    home = Path(f"/tmp/spotd-m{os.getpid()}-{time.monotonic_ns() % 10**9}")
    d = DaemonProc(home, aws_env(moto_server))  # no aws provider: the standard chain
    d.start()
    try:
        yield d
    finally:
        d.stop()
        print(d.log_tail(4000))  # shown when the test failed
        kill_instance_groups(home)
        import shutil

        shutil.rmtree(home, ignore_errors=True)


def _mount_yaml(bucket: str, target: str) -> str:
    return f"""
name: s3-mounts
resources: {{cpus: 1+, use_spot: true}}
file_mounts:
  {target}/data: s3://{bucket}/data
  {target}/one.txt:
    source: s3://{bucket}/data/a.txt
    mode: COPY
run: |
  AB="a=$(cat {target}/data/a.txt) b=$(tail -c 4 {target}/data/sub/b.bin)"
  echo "$AB one=$(cat {target}/one.txt) attempt=$SPOTD_ATTEMPT"
  rm -rf {target}  # the next attempt must fetch it again
  if [ "$SPOTD_ATTEMPT" = 1 ]; then sleep 60; fi
"""


async def _post(d: DaemonProc, yaml: str) -> tuple[int, Any]:
    conn = aiohttp.UnixConnector(path=str(d.socket))
    body = {"yaml": yaml, "base_dir": "/tmp"}
    async with (
        aiohttp.ClientSession(connector=conn) as s,
        s.post("http://spotd/v1/jobs", json=body) as r,
    ):
        return r.status, await r.json()


async def test_local_job_reads_a_bucket_on_every_attempt(
    local_daemon: DaemonProc,
    moto_server: Moto,  # noqa: F811
) -> None:
    bucket = await make_bucket(moto_server, DATA)
    target = f"/tmp/spotd-s3m-{uuid.uuid4().hex[:8]}"
    with counting_s3() as counts:
        async with local_daemon.client() as c:
            job = await c.launch(_mount_yaml(bucket, target), filename="m.yaml")
            jid = job["id"]
            await wait_log(c, jid, "a=alpha b=beta one=alpha attempt=1", attempt=1, timeout=30)
            await c.chaos("preempt", target=str(jid))
            job = await wait_job(c, jid, lambda j: j["status"] in TERMINAL, timeout=60)
            text = await logs(c, jid)
    assert job["status"] == "SUCCEEDED" and len(job["attempts"]) == 2, job
    assert "a=alpha b=beta one=alpha attempt=2" in text
    # each attempt fetched the prefix (2 objects) and the one file from the bucket
    assert sorted(k for k in counts.gets if k.startswith("data/")) == sorted(
        ["data/a.txt", "data/sub/b.bin", "data/a.txt"] * 2
    )
    assert f"objects, 10 bytes from s3://{bucket}/data" in text


async def test_missing_bucket_is_refused_before_anything_launches(
    local_daemon: DaemonProc,
    moto_server: Moto,  # noqa: F811
) -> None:
    bucket = await make_bucket(moto_server, DATA)
    missing = f"spotd-nope-{uuid.uuid4().hex[:8]}"
    for yaml, needle in [
        (_mount_yaml(missing, "/tmp/x"), f"bucket {missing} does not exist"),
        (f"file_mounts: {{/tmp/x: s3://{bucket}/nothing-here}}\nrun: x\n", "nothing-here"),
        (f"file_mounts: {{/tmp/x: gs://{bucket}/data}}\nrun: x\n", "not supported by spotd"),
        (  # a bucket to mount (a storage object) must exist too
            f"file_mounts: {{/tmp/x: {{source: s3://{missing}, mode: MOUNT}}}}\nrun: x\n",
            f"bucket {missing} does not exist",
        ),
    ]:
        status, body = await _post(local_daemon, yaml)
        assert status == 400 and needle in json.dumps(body), body
    async with local_daemon.client() as c:
        assert await c.jobs() == []
    assert list((local_daemon.home / "local" / "instances").glob("*")) == []


# -- a daemon on AWS (moto): packages in S3, a relaunch in another region ----------------------


def _aws_yaml(workdir: Path, local_data: Path, bucket: str, target: str) -> str:
    return f"""
name: s3-aws
resources:
  accelerators: T4:1
  use_spot: true
workdir: {workdir}
file_mounts:
  {target}/local: {local_data}
  {target}/bucket: s3://{bucket}/data
job_recovery:
  strategy: EAGER_NEXT_REGION
run: |
  CL="code=$(cat code.txt) local=$(cat {target}/local/in.txt)"
  echo "$CL bucket=$(cat {target}/bucket/a.txt) attempt=$SPOTD_ATTEMPT"
  rm -rf {target}  # the next attempt must fetch it again
  if [ "$SPOTD_ATTEMPT" = 1 ]; then sleep 60; fi
"""


@pytest.mark.slow
async def test_aws_job_reads_packages_and_bucket_after_a_preemption_into_another_region(
    aws_daemon: AwsDaemon,  # noqa: F811
    tmp_path: Path,
) -> None:
    m = aws_daemon.moto
    bucket = await make_bucket(m, DATA)
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "code.txt").write_text("v1")
    for i in range(4):
        (wd / f"lib{i}.py").write_text(f"x = {i}\n")
    data = tmp_path / "local"
    data.mkdir()
    (data / "in.txt").write_text("local-1")
    target = f"/tmp/spotd-s3a-{uuid.uuid4().hex[:8]}"
    pkg_prefix = "ckpt/packages/blobs/"
    with counting_s3() as counts:
        async with aws_daemon.player(), aws_daemon.proc.client() as c:
            job = await c.launch(
                _aws_yaml(wd, data, bucket, target), filename="a.yaml", infra="aws"
            )
            jid = job["id"]
            await wait_log(
                c, jid, "code=v1 local=local-1 bucket=alpha attempt=1", attempt=1, timeout=60
            )
            first_puts = [k for k in counts.puts if k.startswith(pkg_prefix)]
            counts.clear()
            (wd / "code.txt").write_text("v2")  # edits after submission are not seen
            [(region, inst)] = aws_daemon.by_key(f"j{jid}-a1-n0")
            m.stage_spot_interruption(region, inst.id)
            job = await wait_job(
                c, jid, lambda j: j["status"] in TERMINAL, timeout=90, what="the job to finish"
            )
            text = await logs(c, jid)
            events = await c.events(jid)
    assert job["status"] == "SUCCEEDED", job
    a1, a2 = job["attempts"]
    assert a1["region"] != a2["region"] and a1["end_reason"] == "PREEMPTED"
    assert "code=v1 local=local-1 bucket=alpha attempt=2" in text
    # agents were told to take their packages from S3, not from the daemon's disk
    cfg = json.loads((aws_daemon.agents_root / f"j{jid}-a2-n0" / "agent.json").read_text())
    assert cfg["blob_store"] == f"s3://{aws_daemon.bucket}/ckpt/packages"
    uploads = [e["message"] for e in events if e["kind"] == "files.uploaded"]
    assert len(uploads) == 2, events
    # attempt 1: workdir (5 files) + local mount (1 file), every blob then each manifest
    assert uploads[0].startswith("2 packages to s3://"), uploads
    assert "0 already there; transferred 6 of 6 files" in uploads[0]
    assert len(first_puts) == 8
    # the relaunch: both packages already complete in S3, nothing uploaded, one HEAD each
    assert "2 already there; transferred 0 of 0 files" in uploads[1], uploads
    assert [k for k in counts.puts if k.startswith(pkg_prefix)] == []
    assert len([k for k in counts.heads if k.startswith(pkg_prefix)]) == 2
    # ...and its agent read them (2 manifests + 6 blobs) and the bucket (2 objects) from S3
    assert len([k for k in counts.gets if k.startswith(pkg_prefix)]) == 8
    assert sorted(k for k in counts.gets if k.startswith("data/")) == [
        "data/a.txt",
        "data/sub/b.bin",
    ]


@pytest.mark.slow
async def test_aws_daemon_refuses_a_missing_bucket_before_any_instance(
    aws_daemon: AwsDaemon,  # noqa: F811
    tmp_path: Path,
) -> None:
    missing = f"spotd-nope-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "m.yaml"
    spec.write_text(_aws_yaml(tmp_path, tmp_path, missing, "/tmp/x"))
    r = aws_daemon.proc.spotctl("jobs", "launch", str(spec), "--infra", "aws", "-d", "-y")
    assert r.returncode != 0
    assert f"bucket {missing} does not exist" in r.stderr + r.stdout, (r.stdout, r.stderr)
    async with aws_daemon.proc.client() as c:
        assert await c.jobs() == []
    assert aws_daemon.ours() == []  # no EC2 instance, and no package went to S3
    async with aioboto3.Session().client("s3", endpoint_url=aws_daemon.moto.url) as s3:
        listed = await s3.list_objects_v2(Bucket=aws_daemon.bucket, Prefix="ckpt/packages/")
    assert not listed.get("KeyCount"), listed


def test_package_store_config() -> None:
    from spotd.providers.aws import AwsConfig, AwsConfigError

    assert AwsConfig.from_mapping({}).package_store_url is None  # packages stay local
    ckpt = AwsConfig.from_mapping({"checkpoint_store": "s3://b/ck/"})
    assert ckpt.package_store_url == "s3://b/ck/packages"
    own = AwsConfig.from_mapping({"checkpoint_store": "s3://b/ck", "package_store": "s3://p/x/"})
    assert own.package_store_url == "s3://p/x"
    with pytest.raises(AwsConfigError, match="package_store"):
        AwsConfig.from_mapping({"package_store": "gs://p/x"})


async def test_a_project_cannot_name_another_projects_bucket_as_a_plain_source(
    moto_server: Moto,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A storage object another project claimed was refused by name, but as ``s3://BUCKET``
    it went through: the agent downloaded it with the daemon's credentials, and a review read
    another project's checkpoints so. Refused now at launch (403), for a project's caller."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    theirs = await make_bucket(
        moto_server,
        {".spotd/owner.json": json.dumps({"project": "b"}).encode(), "ckpt/k.txt": b"secret"},
    )
    task = load_task("t.yaml", text=f"file_mounts:\n  /data: s3://{theirs}/ckpt\nrun: ls\n")
    with pytest.raises(NotPermitted, match="belongs to another project"):
        await check_buckets(task, {}, scope="a")
    await check_buckets(task, {}, scope="b")  # its own
    await check_buckets(task, {}, scope=None)  # the admin
    unclaimed = await make_bucket(moto_server, {"data/a.txt": b"alpha"})
    task = load_task("t.yaml", text=f"file_mounts:\n  /data: s3://{unclaimed}/data\nrun: ls\n")
    await check_buckets(task, {}, scope="a")  # a bucket no project claimed stays a source
