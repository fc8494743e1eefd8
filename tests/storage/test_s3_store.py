"""Storage objects in S3 (moto on loopback), through a real daemon and its agents: COPY,
MOUNT (rclone, FUSE) and MOUNT_CACHED, the source uploaded once, and a bucket another project
claimed refused to a job of this one.

MOUNT needs rclone and /dev/fuse: the ``rclone`` fixture installs Debian's package when it is
missing; under CI=true a mounter that cannot be had fails the test instead of skipping it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aioboto3
import pytest

from tests.aws.motoserver import Moto
from tests.e2e.helpers import logs, wait_job
from tests.ops.conftest import TERMINAL

pytestmark = [pytest.mark.aws, pytest.mark.slow]


@pytest.fixture
def rclone() -> str:
    """rclone on PATH (apt-get installs it when missing), and FUSE."""
    if shutil.which("rclone") is None and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "rclone", "fuse3"],
            capture_output=True,
            timeout=600,
            check=False,
        )
    missing = shutil.which("rclone") is None or not Path("/dev/fuse").exists()
    if missing:
        why = "rclone or /dev/fuse is missing (apt-get install rclone fuse3)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return str(shutil.which("rclone"))


async def objects(m: Moto, bucket: str) -> dict[str, bytes]:
    async with aioboto3.Session().client("s3", endpoint_url=m.url) as s3:
        out = {}
        listed = await s3.list_objects_v2(Bucket=bucket)
        for o in listed.get("Contents", []):
            body = (await s3.get_object(Bucket=bucket, Key=o["Key"]))["Body"]
            out[o["Key"]] = await body.read()
            body.close()
        return out


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


def s3_yaml(node: Path, src: Path, data: str, ckpt: str) -> str:
    return f"""
name: s3-storage
resources: {{cpus: 1+}}
file_mounts:
  {node}/data: {{name: {data}, store: s3, source: {src}, mode: COPY}}
  {node}/live: {{name: {data}, store: s3, mode: MOUNT}}
  {node}/ckpt: {{name: {ckpt}, store: s3, mode: MOUNT_CACHED}}
run: |
  echo "copy=$(cat {node}/data/a.txt) mount=$(cat {node}/live/a.txt)"
  echo "from the job $SPOTD_JOB_ID" > {node}/live/job-$SPOTD_JOB_ID.txt
  mkdir -p {node}/ckpt/step-$SPOTD_JOB_ID && echo w > {node}/ckpt/step-$SPOTD_JOB_ID/w.bin
  echo "restored=$(ls {node}/ckpt | tr '\\n' ,)"
"""


async def test_every_mode_on_s3(moto_server: Moto, rclone: str, make_daemon, tmp_path) -> None:
    d = make_daemon()
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello")
    data, ckpt = (f"{p}-{uuid.uuid4().hex[:8]}" for p in ("data", "ckpt"))
    async with d.client() as c:
        ids = []
        for n in (1, 2):
            job = await c.launch(s3_yaml(tmp_path / f"n{n}", src, data, ckpt), filename="s.yaml")
            job = await wait_job(c, job["id"], lambda j: j["status"] in TERMINAL, timeout=120)
            text = await logs(c, job["id"])
            assert job["status"] == "SUCCEEDED", text
            assert "copy=hello mount=hello" in text
            assert f"s3://{data} mounted (rclone)" in text
            ids.append(job["id"])
        assert f"restored=step-{ids[0]},step-{ids[1]}," in text  # job 2 got job 1's checkpoint

        # MOUNT: what the jobs wrote through rclone is in the bucket once unmounted
        async def both_written() -> bool:
            keys = await objects(moto_server, data)
            return all(f"job-{i}.txt" in keys for i in ids)

        await eventually(both_written)
        in_data = await objects(moto_server, data)
        assert in_data["a.txt"] == b"hello" and in_data[f"job-{ids[0]}.txt"].startswith(b"from")
        assert len([k for k in in_data if k.startswith(".spotd/sources/")]) == 1  # once
        in_ckpt = await objects(moto_server, ckpt)
        assert in_ckpt[f"step-{ids[0]}/w.bin"] == b"w\n"
        manifest = json.loads(in_ckpt[f".spotd/commits/step-{ids[0]}.json"])
        assert list(manifest["files"]) == [f"step-{ids[0]}/w.bin"]
        assert json.loads(in_ckpt[".spotd/owner.json"])["project"] == "default"

        # another project names the same S3 bucket: refused, with the reason in its log
        await c.create_project("ml")
        other = await c.launch(
            s3_yaml(tmp_path / "n3", src, data, ckpt), filename="s.yaml", project="ml"
        )
        other = await wait_job(c, other["id"], lambda j: j["status"] in TERMINAL, timeout=60)
        assert other["status"] == "FAILED_SETUP"
        assert "belongs to another project" in await logs(c, other["id"])

        listed = (await c.request("GET", "/v1/storage"))["buckets"]
        assert {(b["name"], b["store"]) for b in listed} == {(data, "s3"), (ckpt, "s3")}
        await c.request("POST", f"/v1/storage/{ckpt}/delete")
    async with aioboto3.Session().client("s3", endpoint_url=moto_server.url) as s3:
        names = {b["Name"] for b in (await s3.list_buckets())["Buckets"]}
    assert ckpt not in names and data in names
