"""``mode: MOUNT``'s mounter: the rclone command and environment, and a clear refusal where an
instance has no mounter."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotd.files.storage import StorageError
from spotd.files.storage_mount import link_dir, mount_s3, mounter_env, rclone_command


@pytest.mark.parametrize(
    ("endpoint", "sub", "remote"),
    [
        (None, "", ":s3,env_auth=true,provider=AWS:bkt"),
        (None, "runs/a/", ":s3,env_auth=true,provider=AWS:bkt/runs/a"),
        (
            "http://127.0.0.1:9000",
            "",
            ":s3,env_auth=true,provider=Other,endpoint='http://127.0.0.1:9000',"
            "force_path_style=true:bkt",
        ),
    ],
)
def test_rclone_command(endpoint: str | None, sub: str, remote: str) -> None:
    cmd = rclone_command("bkt", Path("/mnt/x"), sub_path=sub, endpoint_url=endpoint)
    assert cmd[:4] == ["rclone", "mount", remote, "/mnt/x"]
    # in the foreground: a child of the agent, in its process group (never --daemon)
    assert "--daemon" not in cmd and cmd[cmd.index("--vfs-cache-mode") + 1] == "writes"
    assert not any("secret" in part.lower() for part in cmd)  # credentials never on argv


def test_mounter_env_carries_the_chain_and_nothing_else() -> None:
    environ = {
        "PATH": "/usr/bin",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_CA_BUNDLE": "/etc/ca.pem",
        "SPOTD_API_TOKEN": "admin",
        "HF_TOKEN": "t",
    }
    env = mounter_env(environ, "http://127.0.0.1:9000")
    assert env == {"PATH": "/usr/bin", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    assert mounter_env(environ, None)["AWS_CA_BUNDLE"] == "/etc/ca.pem"  # https: kept


async def test_no_mounter_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(StorageError, match=r"rclone is not installed \(apt-get install rclone"):
        await mount_s3("bkt", tmp_path / "mnt", environ={})


async def test_a_mount_point_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt" / "x").write_text("x")
    with pytest.raises(StorageError, match="not empty"):
        link_dir(tmp_path / "bucket", tmp_path / "mnt")


def test_a_directory_bucket_is_linked(tmp_path: Path) -> None:
    (tmp_path / "bucket").mkdir()
    (tmp_path / "bucket" / "a").write_text("a")
    link_dir(tmp_path / "bucket", tmp_path / "deep" / "mnt")
    assert (tmp_path / "deep" / "mnt" / "a").read_text() == "a"
    link_dir(tmp_path / "bucket", tmp_path / "deep" / "mnt")  # a relaunch on the same disk
    assert (tmp_path / "deep" / "mnt").resolve() == (tmp_path / "bucket").resolve()
