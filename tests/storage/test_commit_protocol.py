"""MOUNT_CACHED's atomic checkpoint commits, on the directory store (``DirBucket``).

What the next attempt restores is what a user would check after a preemption: every
committed checkpoint directory whole, never one whose upload was cut short, and objects other
tools put in the bucket as they are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spotd.files.storage import (
    COMMITS,
    PENDING,
    DirBucket,
    UnitUploader,
    bucket_name_problem,
    clean_partial,
    commit_tree,
    download_all,
    restore,
    upload_source_once,
)


def write_ckpt(root: Path, unit: str, n: int = 3, size: int = 1000) -> dict[str, bytes]:
    files = {}
    for i in range(n):
        data = bytes([i % 251]) * size + unit.encode()
        p = root / unit / f"shard-{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        files[f"{unit}/shard-{i}.bin"] = data
    return files


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


async def test_committed_units_are_restored_whole(tmp_path: Path) -> None:
    cache, bucket = tmp_path / "cache", DirBucket(tmp_path / "bucket")
    await bucket.create()
    want = write_ckpt(cache, "step-1") | write_ckpt(cache, "step-2")
    assert await commit_tree(bucket, cache, attempt=1) == ["step-1", "step-2"]
    got = await restore(bucket, tmp_path / "next")
    assert got.committed == ("step-1", "step-2") and not got.skipped
    assert tree(tmp_path / "next") == want


async def test_an_upload_cut_short_is_not_restored(tmp_path: Path) -> None:
    """The state a SIGKILL between the pending marker and the manifest leaves: step-2 has a
    marker and some of its files, no manifest. The next attempt restores step-1 only."""
    cache, bucket = tmp_path / "cache", DirBucket(tmp_path / "bucket")
    await bucket.create()
    step1 = write_ckpt(cache, "step-1")
    await commit_tree(bucket, cache)
    write_ckpt(cache, "step-2")
    await bucket.put_bytes(f"{PENDING}step-2.json", b"{}")
    await bucket.put_file(cache / "step-2" / "shard-0.bin", "step-2/shard-0.bin")
    got = await restore(bucket, tmp_path / "next")
    assert got.committed == ("step-1",)
    assert [u for u, _ in got.skipped] == ["step-2"]
    assert tree(tmp_path / "next") == step1
    # the next uploader clears the leftovers; a COPY of the bucket never sees them either
    assert await clean_partial(bucket) == ["step-2"]
    assert not [k for k in await bucket.list() if k.startswith(("step-2", PENDING))]


async def test_a_copy_leaves_out_a_unit_being_uploaded(tmp_path: Path) -> None:
    cache, bucket = tmp_path / "cache", DirBucket(tmp_path / "bucket")
    await bucket.create()
    step1 = write_ckpt(cache, "step-1")
    await commit_tree(bucket, cache)
    write_ckpt(cache, "step-2")
    await bucket.put_bytes(f"{PENDING}step-2.json", b"{}")
    await bucket.put_file(cache / "step-2" / "shard-0.bin", "step-2/shard-0.bin")
    n, _ = await download_all(bucket, tmp_path / "copy")
    assert tree(tmp_path / "copy") == step1 and n >= 3


async def test_a_manifest_whose_files_changed_is_skipped(tmp_path: Path) -> None:
    cache, bucket = tmp_path / "cache", DirBucket(tmp_path / "bucket")
    await bucket.create()
    write_ckpt(cache, "step-1")
    await commit_tree(bucket, cache)
    # another writer replaced a file behind the manifest's back: same size, other bytes
    (tmp_path / "bucket" / "step-1" / "shard-1.bin").write_bytes(b"x" * 1006)
    got = await restore(bucket, tmp_path / "next")
    assert got.committed == () and "does not match" in got.skipped[0][1]
    assert not (tmp_path / "next" / "step-1").exists()
    # and one whose file is gone
    (tmp_path / "bucket" / "step-1" / "shard-2.bin").unlink()
    got = await restore(bucket, tmp_path / "again")
    assert "not in the bucket" in got.skipped[0][1]


async def test_recommitting_a_changed_unit_replaces_it(tmp_path: Path) -> None:
    cache, bucket = tmp_path / "cache", DirBucket(tmp_path / "bucket")
    await bucket.create()
    write_ckpt(cache, "latest", n=3)
    await commit_tree(bucket, cache)
    (cache / "latest" / "shard-2.bin").unlink()
    (cache / "latest" / "shard-0.bin").write_bytes(b"new")
    await commit_tree(bucket, cache)
    manifest = json.loads((await bucket.get_bytes(f"{COMMITS}latest.json")) or b"")
    assert sorted(manifest["files"]) == ["latest/shard-0.bin", "latest/shard-1.bin"]
    assert "latest/shard-2.bin" not in await bucket.list()
    got = await restore(bucket, tmp_path / "next")
    assert tree(tmp_path / "next") == tree(cache)
    assert got.committed == ("latest",)


async def test_objects_put_by_other_tools_are_restored_as_they_are(tmp_path: Path) -> None:
    bucket = DirBucket(tmp_path / "bucket")
    await bucket.create()
    await bucket.put_bytes("dataset/part-0", b"rows")
    await bucket.put_bytes("README", b"hi")
    got = await restore(bucket, tmp_path / "next")
    assert got.external == ("README", "dataset") and not got.committed
    assert tree(tmp_path / "next") == {"README": b"hi", "dataset/part-0": b"rows"}


async def test_an_unchanged_unit_is_not_uploaded_again(tmp_path: Path) -> None:
    cache, bucket = tmp_path / "cache", DirBucket(tmp_path / "bucket")
    await bucket.create()
    write_ckpt(cache, "step-1")
    up = UnitUploader(bucket, cache)
    sig = up.scan("step-1")
    assert up.changed("step-1", sig)
    assert await up.commit("step-1", sig)
    assert not up.changed("step-1", up.scan("step-1"))


async def test_a_source_is_uploaded_once(tmp_path: Path) -> None:
    src, bucket = tmp_path / "src", DirBucket(tmp_path / "bucket")
    await bucket.create()
    write_ckpt(src, "data")
    assert await upload_source_once(bucket, src, "sha-1") is True
    before = (tmp_path / "bucket" / "data" / "shard-0.bin").stat().st_mtime_ns
    assert await upload_source_once(bucket, src, "sha-1") is False
    assert (tmp_path / "bucket" / "data" / "shard-0.bin").stat().st_mtime_ns == before
    assert await upload_source_once(bucket, src, "sha-2") is True  # a changed source


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("my-ckpt-bucket", True),
        ("a.b-c", True),
        ("ab", False),  # too short
        ("My-Bucket", False),  # upper case
        ("-dash", False),
        ("a..b", False),
        ("192.168.1.1", False),
        ("x" * 64, False),
        ("../etc", False),
    ],
)
def test_bucket_names(name: str, ok: bool) -> None:
    assert (bucket_name_problem(name) is None) is ok


class _Saving(DirBucket):
    """The bucket behind a slow link while the job saves the unit again at every file put
    (each file written to a temporary name and renamed over the old one, as ``torch.save`` to
    a temporary path and ``os.replace`` do): a job that saves more often than an upload takes."""

    def __init__(self, root: Path, cache: Path, unit: str) -> None:
        super().__init__(root)
        self.cache, self.unit, self.saves = cache, unit, 0

    async def put_file(self, path: Path, key: str) -> None:
        self.saves += 1
        for shard in sorted((self.cache / self.unit).iterdir()):
            tmp = shard.with_name(shard.name + ".tmp")
            tmp.write_bytes(b"save %d " % self.saves + shard.read_bytes()[:100])
            os.replace(tmp, shard)
        await super().put_file(path, key)


async def test_a_unit_saved_again_during_its_upload_commits_the_version_it_began_with(
    tmp_path: Path,
) -> None:
    """Uploading the live files, such a unit never committed, and the version committed before
    it was gone (its commit is deleted first): a preemption then lost both."""
    cache = tmp_path / "cache"
    first = write_ckpt(cache, "latest")
    bucket = _Saving(tmp_path / "bucket", cache, "latest")
    await bucket.create()
    up = UnitUploader(bucket, cache, attempt=1)
    assert await up.commit("latest", up.scan("latest")) is True
    assert bucket.saves == 3  # saved again at each of its 3 files' puts
    got = await restore(bucket, tmp_path / "next")
    assert got.committed == ("latest",)
    assert tree(tmp_path / "next") == first  # whole, and one version of it
    assert not (cache / ".spotd-staging").exists()  # its links are gone
    assert up.changed("latest", up.scan("latest"))  # the newer version goes up next pass
