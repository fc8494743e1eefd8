"""Which plain ``s3://`` sources a project may name (``control.submit.source_refusal``): the
agent downloads them with the daemon's credentials, so this decision is all that stands
between one project and the buckets those reach. Against S3 (moto), end to end:
``tests/aws/test_s3_mounts.py``."""

from __future__ import annotations

import pytest

from spotd.control.submit import source_refusal

STORE = "spotd-ckpt"  # the daemon's bucket of checkpoints and packages


@pytest.mark.parametrize(
    ("bucket", "owner", "daemon_bucket", "refused"),
    [
        ("data", None, STORE, None),  # a bucket no project claimed: a source like any
        ("data", None, None, None),  # no daemon bucket configured
        ("mine", "a", STORE, None),  # its own storage object, named as a source
        ("theirs", "b", STORE, "bucket theirs belongs to another project"),
        (STORE, None, STORE, f"bucket {STORE} is the daemon's store of every project's"),
        (STORE, "a", STORE, f"bucket {STORE} is the daemon's store"),  # even claimed by it
    ],
)
def test_a_project_may_name_unclaimed_and_its_own_buckets_only(
    bucket: str, owner: str | None, daemon_bucket: str | None, refused: str | None
) -> None:
    why = source_refusal(bucket, "a", owner=owner, daemon_bucket=daemon_bucket)
    if refused is None:
        assert why is None
    else:
        assert why is not None and why.startswith(refused)
