"""Where a job's workdir and file_mounts come from, and who may name what.

The client uploads its files (``spotd.sdk.uploads`` → ``spotd.api.files``) and the launch names
each package by its manifest: ``packages`` maps ``workdir`` or a mount's target to the
manifest's sha256, and ``check_sources`` finds every package complete in the store. A local
source the launch does not name that way is a path on the daemon's host: a project token may
never name one (``workdir: /root/.aws`` or ``file_mounts: {/x: ~/.spotd/state.db}`` is a 403,
whatever is there), the admin only under the config's ``file_roots`` (none by default), checked
after symlinks are resolved, for the source and every file in it. ``package_files`` then puts
the packages into the task, packing the admin's daemon-host paths here.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotd.control.refusals import InvalidRequest, NotPermitted
from spotd.files import mounts as s3src
from spotd.files.workdir import (
    CAS_PREFIX,
    BlobStore,
    HashCache,
    PackageError,
    PackResult,
    Scan,
    check_mount_target,
    package,
)
from spotd.spec import Task

__all__ = ["Uploaded", "check_files", "check_sources", "package_files", "packed_event"]


@dataclass(frozen=True, slots=True)
class Uploaded:
    """A package the client uploaded, checked complete in the store."""

    sha: str
    files: int
    bytes: int


def _local_source(source: str, base: Path) -> Path:
    p = Path(source).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _local_sources(task: Task) -> dict[str, str]:
    """The task's sources that are paths, not buckets: "workdir" or the mount target → path."""
    out = {"workdir": task.workdir} if task.workdir else {}
    for remote, mount in task.file_mounts.items():
        if mount.source and "://" not in mount.source:  # "": a bucket by name, no source
            out[remote] = mount.source
    return out


def check_files(task: Task, base: Path, *, uploaded: Collection[str] = ()) -> None:
    """Refuse bad local paths before anything is stored or launched, naming the path.

    Sources in ``uploaded`` ("workdir", mount targets) came from the client: only their
    targets are checked here."""
    if task.workdir and "workdir" not in uploaded:
        wd = _local_source(task.workdir, base)
        if not wd.is_dir():
            raise InvalidRequest(f"workdir: {wd} is not a directory")
    for remote, mount in task.file_mounts.items():
        try:
            check_mount_target(remote)
        except PackageError as exc:
            raise InvalidRequest(f"file_mounts: {exc}") from exc
        if "://" in mount.source or not mount.source or remote in uploaded:
            continue  # a bucket: checked by check_buckets (the spec parser allows only s3://)
        src = _local_source(mount.source, base)
        if not src.exists():
            raise InvalidRequest(f"file_mounts: {remote}: {src}: no such file or directory")
        if not os.access(src, os.R_OK):
            raise InvalidRequest(f"file_mounts: {remote}: {src}: not readable")


def _within(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def _uploaded(what: str, sha: str, blobs: BlobStore) -> Uploaded:
    """The package ``sha`` the client says it uploaded, checked: a valid manifest whose every
    blob is in the store."""
    try:
        manifest = blobs.read_manifest(sha)
    except PackageError as exc:
        raise InvalidRequest(f"{what}: {exc} (upload it first)") from exc
    missing = [e.sha for e in manifest.files if not blobs.has(e.sha)]
    if missing:
        raise InvalidRequest(
            f"{what}: {len(missing)} files of package {sha[:12]} are not in the store "
            f"(first: {missing[0][:12]}); upload them first"
        )
    return Uploaded(sha, len(manifest.files), manifest.bytes)


def check_sources(
    task: Task,
    *,
    packages: Mapping[str, str],
    scope: str | None,
    file_roots: Sequence[Path],
    base: Path,
    blobs: BlobStore | None,
) -> dict[str, Uploaded]:
    """Where each workdir/file_mounts source comes from, and whether the caller may use it.

    An uploaded package (``packages``) must be complete in the store. Any other local source
    is a path on the daemon's host: a project token may not name one (403), the admin only
    under ``file_roots`` once symlinks are resolved (403 otherwise). Then ``check_files``."""
    sources = _local_sources(task)
    unknown = sorted(set(packages) - set(sources))
    if unknown:
        raise InvalidRequest(
            f"packages: {unknown[0]!r} is not a local workdir or file_mounts source of the task"
        )
    uploaded: dict[str, Uploaded] = {}
    for key, sha in packages.items():
        what = "workdir" if key == "workdir" else f"file_mounts: {key}"
        if blobs is None:
            raise InvalidRequest(f"{what}: this daemon has no package store")
        uploaded[key] = _uploaded(what, sha, blobs)
    for key, source in sources.items():
        if key in packages:
            continue
        what = "workdir" if key == "workdir" else f"file_mounts: {key}"
        if scope is not None:
            raise NotPermitted(
                f"{what}: {source} is a path on the daemon's host, which only the admin may "
                "name; spotctl and the SDK upload the client's files"
            )
        try:
            real = _local_source(source, base).resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # ~nosuchuser, a loop of links
            raise InvalidRequest(f"{what}: {source}: {exc}") from exc
        if not _within(real, file_roots):
            roots = ", ".join(str(r) for r in file_roots) or "none are configured"
            raise NotPermitted(
                f"{what}: {real} is a path on the daemon's host outside its file_roots "
                f"({roots}); spotctl and the SDK upload the client's files instead"
            )
    check_files(task, base, uploaded=uploaded.keys())
    return uploaded


def _package(source: Path, blobs: BlobStore, cache: HashCache, roots: Sequence[Path]) -> PackResult:
    """Pack a daemon-host source (the admin's, under ``roots``): no file in it may resolve
    outside the roots (a symlink to ``~/.aws/credentials`` is refused, not copied)."""

    def inside(found: Scan) -> None:
        for path in found.blobs.values():
            if roots and not _within(path.resolve(), roots):
                raise PackageError(f"{path} links outside the daemon's file_roots")

    return package(source, blobs, cache, inside)


def package_files(
    task: Task,
    base: Path,
    cas: Path,
    *,
    uploaded: Mapping[str, Uploaded] | None = None,
    file_roots: Sequence[Path] = (),
) -> tuple[Task, list[tuple[str, PackResult | Uploaded]]]:
    """The task with its local sources replaced by packages: those the client uploaded
    (``uploaded``, by "workdir" or mount target) as they are, the admin's daemon-host paths
    packed into the content-addressed store here (``spotd.files.workdir``)."""
    if not task.workdir and not task.file_mounts:
        return task, []
    uploaded = uploaded or {}
    blobs = BlobStore(cas)
    cache = HashCache(cas / "hashes.db")
    packed: list[tuple[str, PackResult | Uploaded]] = []

    def ref(key: str, what: str, source: str) -> str:
        if key in uploaded:
            up = uploaded[key]
            packed.append((what, up))
            return CAS_PREFIX + up.sha
        p = _package(_local_source(source, base), blobs, cache, file_roots)
        packed.append((what, p))
        return p.ref

    try:
        update: dict[str, Any] = {}
        if task.workdir:
            update["workdir"] = ref("workdir", "workdir", task.workdir)
        if task.file_mounts:
            mounts = {}
            for remote, mount in task.file_mounts.items():
                if s3src.is_s3(mount.source) or not mount.source:
                    mounts[remote] = mount  # downloaded by the agent on every attempt
                    continue
                source = ref(remote, f"file_mounts {remote}", mount.source)
                mounts[remote] = mount.model_copy(update={"source": source})
            update["file_mounts"] = mounts
    finally:
        cache.close()
    return task.model_copy(update=update), packed


def packed_event(what: str, p: PackResult | Uploaded) -> tuple[str, dict[str, Any]]:
    """The ``files.packaged`` event of one package: its message and data."""
    if isinstance(p, Uploaded):
        message = f"{what}: {p.files} files, {p.bytes / 1e6:.1f} MB; uploaded by the client"
        return message, {"what": what, "files": p.files, "bytes": p.bytes, "uploaded": True}
    message = (
        f"{what}: {p.files} files, {p.bytes / 1e6:.1f} MB; transferred {p.new_files} "
        f"files, {p.new_bytes / 1e6:.1f} MB (the rest was already in the store)"
    )
    return message, {
        "what": what,
        "files": p.files,
        "bytes": p.bytes,
        "new_files": p.new_files,
        "new_bytes": p.new_bytes,
        "hashed_files": p.hashed_files,
    }
