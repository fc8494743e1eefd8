"""What launch accepts and refuses of SkyPilot's storage objects, each refusal with its key."""

from __future__ import annotations

import pytest

from spotd.spec import SpecError, load_tasks


@pytest.mark.parametrize(
    ("mount", "storage"),
    [
        ("{name: my-data, source: ./d}", True),  # COPY of a bucket filled from ./d
        ("{name: my-data}", True),  # a bucket with no source (outputs, checkpoints)
        ("{name: my-ckpt, mode: MOUNT_CACHED, store: s3}", True),
        ("{name: my-ckpt, mode: MOUNT, store: local}", True),
        ("{source: s3://bkt/prefix, mode: MOUNT}", True),  # an existing bucket, mounted
        ("{source: s3://bkt, mode: MOUNT_CACHED}", True),
        ("s3://bkt/prefix", False),  # a plain copy, as before
        ("./d", False),
    ],
)
def test_accepted(mount: str, storage: bool) -> None:
    [task] = load_tasks("t.yaml", text=f"run: x\nfile_mounts:\n  /m: {mount}\n")
    assert task.file_mounts["/m"].is_storage_object is storage


@pytest.mark.parametrize(
    ("mount", "path", "message"),
    [
        ("{name: My_Data}", 'file_mounts["/m"].name', "bucket name `My_Data` is not valid"),
        ("{name: ab}", 'file_mounts["/m"].name', "3-63 characters"),
        (
            "{name: my-data, source: s3://other/x}",
            'file_mounts["/m"].source',
            "to use the existing bucket s3://other/x, leave `name` out",
        ),
        ("{source: ./d, mode: MOUNT}", 'file_mounts["/m"].name', "needs `name:`"),
        (
            "{source: s3://bkt/runs/1, mode: MOUNT_CACHED}",
            'file_mounts["/m"].source',
            "MOUNT_CACHED takes a whole bucket",
        ),
        ("{name: my-data, store: gcs}", 'file_mounts["/m"].store', "not supported by spotd"),
        ("{name: my-data, mode: SYNC}", 'file_mounts["/m"].mode', "unknown mode `SYNC`"),
    ],
)
def test_refused_with_the_key(mount: str, path: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        load_tasks("t.yaml", text=f"run: x\nfile_mounts:\n  /m: {mount}\n")
    [issue] = info.value.issues
    assert issue.path == path and message in issue.message, issue
