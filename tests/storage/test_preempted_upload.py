"""A spot preemption while an agent uploads a MOUNT_CACHED checkpoint, end to end: a real
daemon, its agent and job (local provider), S3 on moto, and the instance's whole process
group SIGKILLed (``chaos preempt`` without notice) while the checkpoint ``step-2/`` is half in
the bucket. The next attempt must see ``step-1`` whole and nothing of ``step-2``.

The S3 link is made slow for ``step-2/`` objects only (moto's PutObject handler waits 0.1 s
first), so that the kill lands mid-upload without any timing luck."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aioboto3
import pytest

from tests.aws.motoserver import Moto
from tests.e2e.helpers import logs, wait_job, wait_log
from tests.ops.conftest import TERMINAL

pytestmark = [pytest.mark.aws, pytest.mark.slow]

FILES = 40


@contextlib.contextmanager
def slow_puts(prefix: str, delay: float) -> Iterator[None]:
    from moto.s3.responses import S3Response

    put = S3Response.put_object

    def slow(self: Any) -> Any:
        if self.parse_key_name().startswith(prefix):
            time.sleep(delay)
        return put(self)

    S3Response.put_object = slow  # type: ignore[method-assign]
    try:
        yield
    finally:
        S3Response.put_object = put  # type: ignore[method-assign]


async def keys(m: Moto, bucket: str) -> set[str]:
    async with aioboto3.Session().client("s3", endpoint_url=m.url) as s3:
        try:
            listed = await s3.list_objects_v2(Bucket=bucket)
        except s3.exceptions.NoSuchBucket:
            return set()
        return {o["Key"] for o in listed.get("Contents", [])}


def yaml(node: Path, bucket: str) -> str:
    ckpt = f"{node}/ckpt"
    return f"""
name: preempted-upload
resources: {{cpus: 1+, use_spot: true}}
file_mounts:
  {ckpt}: {{name: {bucket}, store: s3, mode: MOUNT_CACHED}}
run: |
  echo "attempt=$SPOTD_ATTEMPT restored=$(ls {ckpt} | tr '\\n' ,)"
  if [ "$SPOTD_ATTEMPT" = 1 ]; then
    mkdir -p {ckpt}/step-1 && echo one > {ckpt}/step-1/model.bin
    sleep 3
    mkdir -p {ckpt}/step-2
    for i in $(seq 1 {FILES}); do echo "$i" > {ckpt}/step-2/shard-$i.bin; done
    sleep 120
  fi
  n=$(ls {ckpt}/step-2 2>/dev/null | wc -l)
  echo "step-1=$(cat {ckpt}/step-1/model.bin) files-of-step-2=$n"
"""


async def test_preemption_mid_upload(moto_server: Moto, make_daemon, tmp_path: Path) -> None:
    d = make_daemon()
    bucket = f"ckpt-{uuid.uuid4().hex[:8]}"
    with slow_puts("step-2/", 0.1):
        async with d.client() as c:
            job = await c.launch(yaml(tmp_path / "node", bucket), filename="p.yaml")
            jid = job["id"]
            deadline = time.monotonic() + 60
            while True:  # step-1 committed, step-2 part-way up
                got = await keys(moto_server, bucket)
                part = [k for k in got if k.startswith("step-2/")]
                if ".spotd/commits/step-1.json" in got and len(part) >= 3:
                    break
                assert time.monotonic() < deadline, sorted(got)
                await asyncio.sleep(0.05)
            await c.chaos("preempt", target=str(jid))  # SIGKILL: agent, job, uploader
            at_kill = await keys(moto_server, bucket)
            await wait_log(c, jid, "attempt=2", attempt=2, timeout=90)
            job = await wait_job(c, jid, lambda j: j["status"] in TERMINAL, timeout=90)
            text = await logs(c, jid, attempt=2)
    assert ".spotd/commits/step-2.json" not in at_kill  # the kill did land mid-upload
    assert 0 < len([k for k in at_kill if k.startswith("step-2/")]) < FILES
    assert job["status"] == "SUCCEEDED", text
    assert "attempt=2 restored=step-1," in text
    assert "step-1=one files-of-step-2=0" in text
    assert "not restoring step-2: its upload was cut short" in text
    # attempt 2's node 0 cleared what the cut-short upload left
    left = await keys(moto_server, bucket)
    assert not [k for k in left if k.startswith(("step-2/", ".spotd/pending/"))]
