"""Checkpoints on S3 (moto on loopback, through aioboto3): a snapshot restores whole, only new
content is uploaded, an older attempt never overwrites a newer one, and a notice-time snapshot
is marked final for the replacement to wait on."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import aioboto3
import pytest

from spotd.agent.main import open_checkpoint_store
from spotd.files.checkpoint_s3 import S3CheckpointStore, split_url
from spotd.files.storage import StorageError
from spotd.files.storage import restore as restore_storage
from spotd.files.storage_s3 import S3Bucket
from spotd.types import AgentConfig
from tests.agent.saver import Saver
from tests.aws.motoserver import Moto, moto_server  # noqa: F401 - the fixture
from tests.factories import agent_config

pytestmark = pytest.mark.aws


@pytest.fixture
async def bucket(moto_server: Moto, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: F811
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    name = f"spotd-ckpt-{uuid.uuid4().hex[:8]}"
    async with aioboto3.Session().client("s3") as s3:
        await s3.create_bucket(Bucket=name)
    return name


async def keys(bucket: str, prefix: str = "") -> list[str]:
    async with aioboto3.Session().client("s3") as s3:
        r = await s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in r.get("Contents", []))


def write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def read(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_split_url() -> None:
    assert split_url("s3://b/jobs/t-1/") == ("b", "jobs/t-1/")
    assert split_url("s3://b") == ("b", "")
    with pytest.raises(ValueError):
        split_url("/tmp/x")


async def test_round_trip_restores_every_file(bucket: str, tmp_path: Path) -> None:
    url = f"s3://{bucket}/jobs/task-1/"
    src = tmp_path / "src"
    files = {"state.json": b'{"step": 5}', "shards/a.bin": os.urandom(300_000), "empty": b""}
    write(src, files)
    assert await S3CheckpointStore(url, 1).restore(tmp_path / "nothing") is False
    assert await S3CheckpointStore(url, 1).sync(src) is True
    assert await S3CheckpointStore(url, 2).restore(tmp_path / "dst") is True
    assert read(tmp_path / "dst") == files
    assert all(k.startswith("jobs/task-1/") for k in await keys(bucket))


async def test_only_changed_content_is_uploaded_and_stale_blobs_go(
    bucket: str, tmp_path: Path
) -> None:
    url = f"s3://{bucket}/t/"
    src = tmp_path / "src"
    write(src, {"a": b"one", "b": b"two"})
    store = S3CheckpointStore(url, 1)
    await store.sync(src)
    first = await keys(bucket, "t/blobs/")
    write(src, {"b": b"three"})
    await store.sync(src)
    second = await keys(bucket, "t/blobs/")
    assert len(first) == len(second) == 2
    assert len(set(first) & set(second)) == 1, "a's blob is kept, b's old blob replaced"
    await store.restore(tmp_path / "dst")
    assert read(tmp_path / "dst") == {"a": b"one", "b": b"three"}


async def test_an_older_attempt_never_overwrites_a_newer_one(bucket: str, tmp_path: Path) -> None:
    url = f"s3://{bucket}/t/"
    write(tmp_path / "new", {"state": b"attempt 2"})
    write(tmp_path / "old", {"state": b"attempt 1, late"})
    assert await S3CheckpointStore(url, 2).sync(tmp_path / "new") is True
    assert await S3CheckpointStore(url, 1).sync(tmp_path / "old") is False
    await S3CheckpointStore(url, 3).restore(tmp_path / "dst")
    assert read(tmp_path / "dst") == {"state": b"attempt 2"}


async def test_a_notice_snapshot_is_marked_final(bucket: str, tmp_path: Path) -> None:
    url = f"s3://{bucket}/t/"
    write(tmp_path / "src", {"state": b"x"})
    store = S3CheckpointStore(url, 4)
    assert await store.final_from() == 0
    await store.sync(tmp_path / "src")
    assert await store.final_from() == 0
    await store.sync(tmp_path / "src", final=True)
    assert await S3CheckpointStore(url, 5).final_from() == 4


async def test_a_gang_survivor_does_not_replace_the_final_snapshot(
    bucket: str, tmp_path: Path
) -> None:
    url = f"s3://{bucket}/t/"
    write(tmp_path / "noticed", {"state": b"step 24, final"})
    write(tmp_path / "kept", {"state": b"step 25"})
    assert await S3CheckpointStore(url, 1).sync(tmp_path / "noticed", final=True) is True
    kept = S3CheckpointStore(url, 1)
    assert await kept.sync(tmp_path / "kept", unless_final=True) is False
    await S3CheckpointStore(url, 1).restore(tmp_path / "dst")
    assert read(tmp_path / "dst") == {"state": b"step 24, final"}
    assert await kept.sync(tmp_path / "kept") is True  # resumed from it: syncs as ever


async def test_the_agent_picks_the_store_by_scheme(bucket: str, tmp_path: Path) -> None:
    def cfg(store: str) -> AgentConfig:
        return agent_config(
            checkpoint_store=store,
        )

    s3 = open_checkpoint_store(cfg(f"s3://{bucket}/p/t/"))
    assert isinstance(s3, S3CheckpointStore)
    local = open_checkpoint_store(cfg(str(tmp_path / "store")))
    write(tmp_path / "src", {"f": b"1"})
    assert await local.sync(tmp_path / "src") is True
    assert await local.restore(tmp_path / "dst") is True
    assert read(tmp_path / "dst") == {"f": b"1"}


async def test_a_checkpoint_being_renamed_into_place_syncs_and_each_blob_holds_its_name(
    bucket: str, tmp_path: Path
) -> None:
    """A job saving ``step.tmp`` and renaming it over ``step`` in a loop: no sync fails on the
    temporary file gone between the scan and the upload, and no blob is named by the hash of
    what a file held at the scan while holding what it held at the upload (a restore would
    then get the wrong bytes for that hash)."""
    url = f"s3://{bucket}/t/"
    store = S3CheckpointStore(url, 1)
    with Saver(tmp_path / "src") as saver:
        for _ in range(40):
            assert await store.sync(saver.directory) is True
    assert await store.sync(saver.directory) is True  # the job has stopped: its last step
    async with aioboto3.Session().client("s3") as s3:
        for key in await keys(bucket, "t/blobs/"):
            body = await (await s3.get_object(Bucket=bucket, Key=key))["Body"].read()
            assert hashlib.sha256(body).hexdigest() == key.rsplit("/", 1)[1]
    await S3CheckpointStore(url, 2).restore(tmp_path / "dst")
    assert read(tmp_path / "dst")["step"] == str(saver.step).encode()


async def test_a_linked_directory_is_stored_as_its_files(bucket: str, tmp_path: Path) -> None:
    """``latest -> step-2``, as trainers keep: its files go up under ``latest/`` (S3 holds
    files, not links; the directory store keeps the link), and come back as plain files."""
    src = tmp_path / "src"
    write(src, {"step-2/model": b"weights 2"})
    (src / "latest").symlink_to(src / "step-2", target_is_directory=True)
    assert await S3CheckpointStore(f"s3://{bucket}/t/", 1).sync(src) is True
    await S3CheckpointStore(f"s3://{bucket}/t/", 2).restore(tmp_path / "dst")
    assert read(tmp_path / "dst") == {"latest/model": b"weights 2", "step-2/model": b"weights 2"}


async def test_a_manifest_or_key_naming_a_path_out_of_the_directory_writes_nothing_there(
    bucket: str, tmp_path: Path
) -> None:
    """A bucket is writable by every job of an instance role; a restore runs as the agent
    (root on EC2). A manifest path ``../x`` or an object key ``u/../../x`` was written where it
    pointed: any file on the machine."""
    url = f"s3://{bucket}/t/"
    write(tmp_path / "src", {"state": b"ok"})
    await S3CheckpointStore(url, 1).sync(tmp_path / "src")
    async with aioboto3.Session().client("s3") as s3:
        got = await s3.get_object(Bucket=bucket, Key="t/manifest.json")
        manifest = json.loads(await got["Body"].read())
        sha = manifest["files"]["state"]
        manifest["files"] = {"../../escaped-ckpt": sha, str(tmp_path / "abs-escaped"): sha}
        await s3.put_object(Bucket=bucket, Key="t/manifest.json", Body=json.dumps(manifest))
        await s3.put_object(Bucket=bucket, Key="u/../../escaped-storage", Body=b"x")
    with pytest.raises(StorageError, match="bad object key"):
        await S3CheckpointStore(url, 2).restore(tmp_path / "a" / "b" / "ckpt")
    storage = S3Bucket(bucket, endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    try:
        result = await restore_storage(storage, tmp_path / "a" / "b" / "mnt")
    finally:
        await storage.close()
    assert [u for u, _ in result.skipped] == ["u"]
    assert not [p for p in tmp_path.rglob("*escaped*")]
