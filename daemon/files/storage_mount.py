"""``mode: MOUNT``: a bucket mounted at the task's path.

S3 buckets are mounted with **rclone** (``rclone mount``, FUSE): packaged by Debian and Ubuntu
(``apt-get install rclone fuse3``), maintained, S3-compatible endpoints included (moto in the
tests), and it takes its credentials from the standard AWS chain (``env_auth``: the
environment, or the instance profile on EC2), so no secret is written to a file or a command
line. Writes go through rclone's VFS cache (``--vfs-cache-mode writes``), so programs that seek
and rewrite files work; each file is uploaded when it is closed, and what is still in the
cache when the agent leaves is uploaded before the unmount returns. Where the instance has no
rclone or no ``/dev/fuse``, ``mount_s3`` raises ``StorageError`` naming what is missing and how
to get it (the agent then fails the attempt's setup: a MOUNT that silently became a copy would
lose what the job writes).

A directory bucket (the local provider's store, on the daemon's own machine) needs no FUSE:
the mount point becomes a symbolic link to the bucket's directory (``link_dir``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from spotd.files.private import open_private_append
from spotd.files.storage import StorageError

__all__ = ["MOUNTER", "Mounted", "link_dir", "mount_s3", "mounter_env", "rclone_command", "unmount"]

MOUNTER = "rclone"
FUSE_DEVICE = Path("/dev/fuse")
MOUNT_TIMEOUT = 60.0
# what rclone needs from the agent's environment: credentials (env_auth) and a home
_PASS = (
    "PATH",
    "HOME",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_CA_BUNDLE",
    "AWS_EC2_METADATA_DISABLED",
)


@dataclass(frozen=True, slots=True)
class Mounted:
    target: Path
    kind: str  # "fuse" (unmount it) or "link"
    proc: asyncio.subprocess.Process | None = None  # rclone, serving the mount


def rclone_command(
    bucket: str,
    target: Path,
    *,
    sub_path: str = "",
    endpoint_url: str | None = None,
    cache_dir: Path | None = None,
) -> list[str]:
    """The ``rclone mount`` command line for ``s3://bucket/sub_path`` at ``target``."""
    opts = ["s3", "env_auth=true"]
    opts += (
        [f"provider=Other,endpoint='{endpoint_url}',force_path_style=true"]
        if endpoint_url
        else ["provider=AWS"]
    )
    remote = ":" + ",".join(opts) + ":" + "/".join(p for p in (bucket, sub_path.strip("/")) if p)
    cmd = [
        MOUNTER,
        "mount",
        remote,
        str(target),
        "--vfs-cache-mode",
        "writes",
        "--vfs-write-back",
        "0s",
        "--dir-cache-time",
        "5s",
    ]
    if cache_dir is not None:
        cmd += ["--cache-dir", str(cache_dir)]
    return cmd


def mounter_env(environ: Mapping[str, str], endpoint_url: str | None) -> dict[str, str]:
    """rclone's environment: what it needs, nothing of the job's. A custom CA bundle is left
    out for a plain-http endpoint (rclone refuses a CA bundle it cannot apply)."""
    env = {k: environ[k] for k in _PASS if k in environ}
    if endpoint_url and endpoint_url.startswith("http://"):
        env.pop("AWS_CA_BUNDLE", None)
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return env


def missing_mounter() -> str | None:
    """What this machine lacks to mount a bucket, in words; None when it can."""
    if shutil.which(MOUNTER) is None:
        return "rclone is not installed (apt-get install rclone fuse3)"
    if not FUSE_DEVICE.exists():
        return "/dev/fuse does not exist (FUSE is not available here)"
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        return "fusermount is not installed (apt-get install fuse3)"
    return None


def _fusermount() -> str:
    return shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount"


async def _run(*cmd: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await proc.wait()


async def _empty_dir(target: Path) -> None:
    try:
        target.stat()
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:  # a mount whose rclone died with an earlier agent
            await _run(_fusermount(), "-uz", str(target))
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise StorageError(f"{target} exists and is not a directory")
    target.mkdir(parents=True, exist_ok=True)
    if any(target.iterdir()):
        raise StorageError(f"{target} is not empty: a bucket is mounted on an empty directory")


async def mount_s3(
    bucket: str,
    target: Path,
    *,
    sub_path: str = "",
    endpoint_url: str | None = None,
    cache_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Mounted:
    """Mount ``s3://bucket/sub_path`` at ``target`` (an empty or new directory).

    rclone runs in the foreground, a child in the caller's process group: an agent killed
    with its group (a preemption on the local provider) takes its mounts with it, and no
    rclone outlives the instance. Its output goes to ``cache_dir/rclone.log``."""
    why = missing_mounter()
    if why:
        raise StorageError(f"cannot mount s3://{bucket} at {target}: {why}")
    await _empty_dir(target)
    environ = environ if environ is not None else os.environ
    # the standard chain's endpoint settings, which rclone does not read itself
    endpoint_url = (
        endpoint_url or environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    )
    cmd = rclone_command(
        bucket, target, sub_path=sub_path, endpoint_url=endpoint_url, cache_dir=cache_dir
    )
    log_path = (cache_dir or target.parent) / "rclone.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open_private_append(log_path) as log:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            env=mounter_env(environ, endpoint_url),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not os.path.ismount(target):
        if proc.returncode is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            text = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise StorageError(f"rclone could not mount s3://{bucket}: {' / '.join(text)}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.05)
    return Mounted(target, "fuse", proc)


def link_dir(bucket_dir: Path, target: Path) -> Mounted:
    """A directory bucket "mounted": ``target`` becomes a symbolic link to it."""
    if target.is_symlink():
        target.unlink()
    elif target.is_dir():
        if any(target.iterdir()):
            raise StorageError(f"{target} is not empty: a bucket is mounted on an empty directory")
        target.rmdir()
    elif target.exists():
        raise StorageError(f"{target} exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(bucket_dir, target_is_directory=True)
    return Mounted(target, "link")


async def unmount(m: Mounted, *, timeout: float = 30.0) -> None:
    """Unmount; rclone uploads what is still in its write cache, then exits. A link is left."""
    if m.kind != "fuse":
        return
    if os.path.ismount(m.target) and await _run(_fusermount(), "-u", str(m.target)) != 0:
        await _run(_fusermount(), "-uz", str(m.target))  # busy: detach it now
    if m.proc is not None:
        try:
            await asyncio.wait_for(m.proc.wait(), timeout)
        except TimeoutError:
            m.proc.kill()
            await m.proc.wait()
