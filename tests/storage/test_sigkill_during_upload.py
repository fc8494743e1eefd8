"""A preemption during a MOUNT_CACHED checkpoint upload: the uploader is a real process,
killed with a real SIGKILL while it is half-way through a checkpoint directory. The next
attempt's restore must show the checkpoints committed before, whole, and nothing of the one
cut short (SkyPilot's MOUNT_CACHED hands it over half-written). Both stores: the directory
store here, S3 on moto (``aws`` tier).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from spotd.files.storage import (
    COMMITS,
    PENDING,
    Bucket,
    DirBucket,
    clean_partial,
    commit_tree,
    restore,
)
from tests.storage.test_commit_protocol import tree, write_ckpt

ROOT = Path(__file__).resolve().parents[2]
FILES = 40  # files of the checkpoint being uploaded when the kill comes
DELAY = 0.05  # seconds before each put: about 2 s of upload to land the kill in


async def kill_mid_upload(bucket: Bucket, spec: str, cache: Path, unit: str) -> int:
    """Start the uploader on ``unit``, SIGKILL it once some of the unit's files are in the
    bucket and its manifest is not; how many of its files had landed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.storage.uploader_proc", spec, str(cache), unit, str(DELAY)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        landed = 0
        while time.monotonic() < deadline and proc.poll() is None:
            keys = await bucket.list()
            landed = sum(1 for k in keys if k.startswith(unit + "/"))
            if landed >= 5:
                break
            await asyncio.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the preemption: no handler runs
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    return landed


async def preempted_upload_is_invisible(bucket: Bucket, spec: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    step1 = write_ckpt(cache, "step-1", n=4)
    assert await commit_tree(bucket, cache, attempt=1) == ["step-1"]
    write_ckpt(cache, "step-2", n=FILES, size=4096)
    landed = await kill_mid_upload(bucket, spec, cache, "step-2")

    # the kill came mid-upload: some of step-2 is in the bucket, and no manifest for it
    keys = await bucket.list()
    assert 0 < landed < FILES, landed
    assert f"{PENDING}step-2.json" in keys and f"{COMMITS}step-2.json" not in keys

    # the next attempt: step-1 whole, nothing of step-2
    got = await restore(bucket, tmp_path / "attempt-2")
    assert got.committed == ("step-1",)
    assert [u for u, _ in got.skipped] == ["step-2"]
    assert tree(tmp_path / "attempt-2") == step1
    assert not (tmp_path / "attempt-2" / "step-2").exists()

    # its uploader clears what was left, and commits step-2 again from the local copy
    assert await clean_partial(bucket) == ["step-2"]
    assert await commit_tree(bucket, cache, attempt=2) == ["step-1", "step-2"]
    again = await restore(bucket, tmp_path / "attempt-3")
    assert again.committed == ("step-1", "step-2")
    assert tree(tmp_path / "attempt-3") == tree(cache)


async def test_sigkill_mid_upload_directory_store(tmp_path: Path) -> None:
    bucket = DirBucket(tmp_path / "bucket")
    await bucket.create()
    await preempted_upload_is_invisible(bucket, f"dir:{tmp_path / 'bucket'}", tmp_path)


@pytest.mark.aws
async def test_sigkill_mid_upload_s3(tmp_path: Path, moto_server: object) -> None:
    from spotd.files.storage_s3 import S3Bucket
    from tests.aws.motoserver import moto

    url = moto().url
    name = f"ckpt-{uuid.uuid4().hex[:8]}"
    bucket = S3Bucket(name, endpoint_url=url)
    await bucket.create()
    try:
        await preempted_upload_is_invisible(bucket, f"s3:{name}:{url}", tmp_path)
    finally:
        await bucket.destroy()
        await bucket.close()
