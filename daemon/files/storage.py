"""Storage objects: buckets that outlive jobs, and atomic checkpoint commits into them.

A ``file_mounts`` entry with a ``name`` (or ``mode: MOUNT | MOUNT_CACHED``) is SkyPilot's
storage object: a bucket spotd creates or reuses, fills once from ``source``, and gives every
attempt in one of three modes (``spotd.agent.storage`` applies them on the instance)::

    COPY           the bucket's objects are downloaded before setup
    MOUNT          the bucket is mounted (FUSE, ``spotd.files.storage_mount``): reads and
                   writes go to the bucket
    MOUNT_CACHED   a local directory the job writes at disk speed; a write-back uploader
                   copies what settles into the bucket, one *unit* at a time, atomically

This module is the part that does not care where the bucket is: the ``Bucket`` protocol (a flat
key space, S3's model) with a directory-backed implementation (``DirBucket``, the local
provider's store; ``spotd.files.storage_s3.S3Bucket`` is the S3 one), and the protocol that
makes MOUNT_CACHED safe to preempt.

**Atomic checkpoint commits.** A unit is one top-level entry of the cached directory (the
checkpoint directory ``step-100/`` a trainer writes, or a single file). Uploading unit ``U``::

    1. PUT  .spotd/pending/U.json      intent: U is being (re)written
    2. DEL  .spotd/commits/U.json      U's previous version is no longer committed
    3. PUT  U/<file>, ...              every file (an S3 PUT replaces an object atomically)
    4. DEL  U/<stale files>            what the previous version had and this one has not
    5. PUT  .spotd/commits/U.json      the manifest, {file: size, sha256}: the commit point
    6. DEL  .spotd/pending/U.json

A reader (``restore``, the next attempt's agent) takes, per unit: the files its manifest names,
when every one of them is in the bucket with the manifest's size (and, once downloaded, its
sha256); nothing of a unit that has a pending marker and no manifest (an upload cut short:
SkyPilot's MOUNT_CACHED would hand the next attempt that half checkpoint); and, for a unit with
neither marker, whatever is there (objects put into the bucket by other tools). A restored unit
lands in a staging directory first and is renamed into place, so a reader killed half-way
leaves no half unit either. ``clean_partial`` (the next uploader, before it starts) deletes what
cut-short uploads left.

Every unit written by the upload of a ``source`` goes through the same commit, and
``upload_source_once`` records the source it uploaded (``.spotd/sources/<id>.json``, ``id`` the
package's content hash): later attempts, and other jobs naming the same bucket and source,
upload nothing.

Bucket names follow S3's rules (3-63 of ``a-z 0-9 . -``, starting and ending with a letter or
digit) for both stores, so a name that works on one works on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import quote, unquote

__all__ = [
    "COMMITS",
    "PENDING",
    "STORAGE_REF",
    "Bucket",
    "DirBucket",
    "ObjectInfo",
    "RestoreResult",
    "StorageError",
    "UnitUploader",
    "bucket_name_problem",
    "clean_partial",
    "commit_tree",
    "download_all",
    "restore",
    "safe_key",
    "upload_source_once",
    "uses_storage",
]

# the value a storage object's remote path has in ``AgentConfig.file_mounts``: the agent stages
# it through ``spotd.agent.storage``, never as a package or a plain s3:// copy
STORAGE_REF = "storage:"
META = ".spotd/"  # spotd's bookkeeping inside a bucket
COMMITS = META + "commits/"
PENDING = META + "pending/"
SOURCES = META + "sources/"
OWNER = META + "owner.json"
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_RESTORING = ".spotd-restoring"  # a restore's staging directory, inside the destination


class StorageError(Exception):
    """A bucket cannot be used as asked; the message says which and why."""


def uses_storage(file_mounts: Mapping[str, str]) -> bool:
    """Whether an agent's ``file_mounts`` (``AgentConfig``) hold a storage object."""
    return any(v.startswith(STORAGE_REF) for v in file_mounts.values())


def bucket_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid bucket name (S3's rules), or None."""
    if not _BUCKET_NAME.fullmatch(name):
        return (
            f"bucket name {name!r} is not valid: 3-63 characters of a-z, 0-9, '.' and '-', "
            "starting and ending with a letter or digit"
        )
    if ".." in name or re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name):
        return f"bucket name {name!r} is not valid: no '..', and not an IP address"
    return None


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int


class Bucket(Protocol):
    """A flat key space of objects, each replaced atomically by a put (S3's model)."""

    name: str
    url: str  # s3://name, or the directory of a DirBucket

    async def exists(self) -> bool: ...
    async def create(self) -> None:
        """Create the bucket; nothing if it exists."""
        ...

    async def put_file(self, path: Path, key: str) -> None: ...
    async def get_file(self, key: str, dest: Path) -> None:
        """Write the object at ``dest`` (whole, or not at all)."""
        ...

    async def put_bytes(self, key: str, data: bytes) -> None: ...
    async def get_bytes(self, key: str) -> bytes | None:
        """The object's bytes, None when there is none."""
        ...

    async def list(self, prefix: str = "") -> dict[str, ObjectInfo]: ...
    async def delete_keys(self, keys: Iterable[str]) -> None: ...
    async def destroy(self) -> None:
        """Delete every object, then the bucket."""
        ...

    async def close(self) -> None: ...


def safe_key(key: str) -> str:
    """``key`` (an object key, a manifest's path), refused unless it stays inside the
    directory it lands in: no ``..``, ``.``, empty part or leading ``/``. What a bucket holds
    is anyone's who can write to it, and a restore may run as root."""
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or any(p in ("..", ".", "") for p in parts):
        raise StorageError(f"bad object key {key!r}")
    return key


class DirBucket:
    """A bucket that is a directory (the local provider's store). Objects are files, written
    under a temporary name and renamed, so each put is atomic as an S3 PUT is."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = root.name
        self.url = str(root)

    def _path(self, key: str) -> Path:
        return self.root / safe_key(key)

    async def exists(self) -> bool:
        return self.root.is_dir()

    async def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _put(self, write: Callable[[Path], object], key: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            write(tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    async def put_file(self, path: Path, key: str) -> None:
        await asyncio.to_thread(self._put, lambda tmp: shutil.copyfile(path, tmp), key)

    async def get_file(self, key: str, dest: Path) -> None:
        src = self._path(key)

        def copy() -> None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
            try:
                shutil.copyfile(src, tmp)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)

        await asyncio.to_thread(copy)

    async def put_bytes(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, lambda tmp: tmp.write_bytes(data), key)

    async def get_bytes(self, key: str) -> bytes | None:
        try:
            return await asyncio.to_thread(self._path(key).read_bytes)
        except FileNotFoundError:
            return None

    def _list(self, prefix: str) -> dict[str, ObjectInfo]:
        out: dict[str, ObjectInfo] = {}
        for dirpath, _, names in os.walk(self.root):
            for n in names:
                if n.endswith(".part") and n.startswith("."):
                    continue  # a put in flight (or one killed): not an object
                p = Path(dirpath) / n
                key = p.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    try:
                        out[key] = ObjectInfo(p.stat().st_size)
                    except FileNotFoundError:
                        continue
        return out

    async def list(self, prefix: str = "") -> dict[str, ObjectInfo]:
        return await asyncio.to_thread(self._list, prefix)

    async def delete_keys(self, keys: Iterable[str]) -> None:
        def delete(paths: list[Path]) -> None:
            for p in paths:
                p.unlink(missing_ok=True)

        await asyncio.to_thread(delete, [self._path(k) for k in keys])

    async def destroy(self) -> None:
        await asyncio.to_thread(shutil.rmtree, self.root, True)

    async def close(self) -> None:
        return None


# -- units and manifests ---------------------------------------------------------------------


def _unit_of(key: str) -> str:
    return key.split("/", 1)[0]


def _marker(prefix: str, unit: str) -> str:
    return f"{prefix}{quote(unit, safe='')}.json"


def _unit_from_marker(prefix: str, key: str) -> str:
    return unquote(key[len(prefix) : -len(".json")])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _scan_unit(root: Path, unit: str) -> dict[str, tuple[int, int]]:
    """A unit's files (relative to ``root``, as keys) -> (size, mtime_ns)."""
    top = root / unit
    if top.is_file():
        st = top.stat()
        return {unit: (st.st_size, st.st_mtime_ns)}
    out: dict[str, tuple[int, int]] = {}
    for dirpath, _, names in os.walk(top):
        for n in names:
            p = Path(dirpath) / n
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue
            if p.is_file() and not p.is_symlink():
                out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def local_units(root: Path) -> list[str]:
    """The top-level entries of a cached directory that are units (spotd's own left out)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".spotd"))


@dataclass
class UnitUploader:
    """Uploads units of a local directory into a bucket with the commit protocol above.

    ``signatures`` remembers what each unit looked like when it was last committed (or
    restored), so an unchanged unit is not hashed or uploaded again; ``_hashes`` caches file
    hashes by (size, mtime)."""

    bucket: Bucket
    root: Path
    attempt: int = 0
    signatures: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    _hashes: dict[str, tuple[int, int, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # links an uploader killed mid-upload left (one uploader per directory at a time)
        shutil.rmtree(self.root / STAGING, ignore_errors=True)

    def scan(self, unit: str) -> dict[str, tuple[int, int]]:
        return _scan_unit(self.root, unit)

    def changed(self, unit: str, now_sig: Mapping[str, tuple[int, int]]) -> bool:
        return self.signatures.get(unit) != dict(now_sig)

    def _hash(self, key: str, sig: tuple[int, int], path: Path) -> str:
        cached = self._hashes.get(key)
        if cached and cached[:2] == sig:
            return cached[2]
        sha = _sha256(path)
        self._hashes[key] = (*sig, sha)
        return sha

    async def commit(self, unit: str, sig: Mapping[str, tuple[int, int]]) -> bool:
        """Upload ``unit`` as it is (``sig``, from ``scan``) and commit it; False when it
        changed under the upload (it is left pending: the next pass uploads it again).

        What is uploaded is a snapshot of hard links (``_stage``): a job that saves the unit
        again by renaming a new file over the old one (``torch.save`` to a temporary name,
        then ``os.replace``) leaves the linked file as it was, so the upload stays consistent
        however often the job saves. Uploading the live files, a unit saved more often than
        its upload took was never committed, and its last committed version was gone (step 2
        of the protocol). A file rewritten in place still changes the snapshot: that upload
        is left pending, as before. Where links cannot be made, the live files go up."""
        staged = await asyncio.to_thread(_stage, self.root, sig)
        try:
            return await self._commit(unit, staged, sig)
        finally:
            if staged.where is not None:
                await asyncio.to_thread(_unstage, staged.where)

    async def _commit(self, unit: str, staged: _Staged, scanned: Mapping[str, Any]) -> bool:
        sig = staged.sig
        if sig != dict(scanned):
            return False  # changed between the scan and the links: the next pass, and the
            # version committed before stays committed (nothing was touched)
        files = {
            k: (s, await asyncio.to_thread(self._hash, k, s, staged.paths[k]))
            for k, s in sig.items()
        }
        b = self.bucket
        await b.put_bytes(
            _marker(PENDING, unit),
            json.dumps({"attempt": self.attempt, "at": time.time()}).encode(),
        )
        await b.delete_keys([_marker(COMMITS, unit)])
        for key in sorted(files):
            await b.put_file(staged.paths[key], key)
        if await asyncio.to_thread(staged.rescan) != sig:
            return False  # written to while uploading: not a consistent unit
        present = await b.list(unit + "/") if not (self.root / unit).is_file() else {}
        await b.delete_keys(k for k in present if k not in files)
        manifest = {
            "unit": unit,
            "attempt": self.attempt,
            "committed_at": time.time(),
            "files": {k: {"size": s[0], "sha256": sha} for k, (s, sha) in files.items()},
        }
        await b.put_bytes(_marker(COMMITS, unit), json.dumps(manifest).encode())  # the commit
        await b.delete_keys([_marker(PENDING, unit)])
        self.signatures[unit] = dict(sig)
        return True


STAGING = ".spotd-staging"  # inside the cached directory (one file system): never a unit


@dataclass(frozen=True)
class _Staged:
    """A unit's files as they are uploaded: ``paths`` (key -> file), ``sig`` their (size,
    mtime) when staged; ``where`` the directory of links to remove after (None: the live
    files, links not possible here)."""

    paths: dict[str, Path]
    sig: dict[str, tuple[int, int]]
    where: Path | None

    def rescan(self) -> dict[str, tuple[int, int]]:
        return _sizes(self.paths)


def _sizes(paths: Mapping[str, Path]) -> dict[str, tuple[int, int]]:
    """(size, mtime) of each file still there, by key."""
    out = {}
    for key, path in paths.items():
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        out[key] = (st.st_size, st.st_mtime_ns)
    return out


def _stage(root: Path, sig: Mapping[str, tuple[int, int]]) -> _Staged:
    """Hard links to the unit's files (``sig``'s keys) in a private directory under ``root``;
    the live files when a link cannot be made (another file system, no links there). A file
    gone since the scan is left out, as a later scan would; one replaced by a symbolic link
    is linked as the link (its size differs: the upload waits), never as what it points to."""
    where = root / STAGING / uuid.uuid4().hex
    paths: dict[str, Path] = {}
    try:
        for key in sig:
            link = where / key
            link.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                os.link(root / key, link, follow_symlinks=False)
            except FileNotFoundError:
                continue
            paths[key] = link
    except OSError:
        shutil.rmtree(where, ignore_errors=True)
        live = {k: root / k for k in sig}
        return _Staged(live, _sizes(live), None)
    return _Staged(paths, _sizes(paths), where)


def _unstage(where: Path) -> None:
    shutil.rmtree(where, ignore_errors=True)
    with contextlib.suppress(OSError):  # the job's directory as it was, when nothing else is
        where.parent.rmdir()


async def commit_tree(bucket: Bucket, root: Path, *, attempt: int = 0) -> list[str]:
    """Upload and commit every unit of ``root`` (a directory, or one file: one unit)."""
    if root.is_file():
        up = UnitUploader(bucket, root.parent, attempt)
        units = [root.name]
    else:
        up = UnitUploader(bucket, root, attempt)
        units = local_units(root)
    done = []
    for unit in units:
        if await up.commit(unit, await asyncio.to_thread(up.scan, unit)):
            done.append(unit)
    return done


async def upload_source_once(bucket: Bucket, source: Path, source_id: str) -> bool:
    """Upload ``source`` into the bucket unless the upload of ``source_id`` is on record;
    True when this call uploaded it."""
    marker = f"{SOURCES}{quote(source_id, safe='')}.json"
    if await bucket.get_bytes(marker) is not None:
        return False
    units = await commit_tree(bucket, source)
    record = {"source": source_id, "units": units, "uploaded_at": time.time()}
    await bucket.put_bytes(marker, json.dumps(record).encode())
    return True


# -- reading back ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestoreResult:
    committed: tuple[str, ...]  # units restored from their manifests
    external: tuple[str, ...]  # units without markers (objects put there by other tools)
    skipped: tuple[tuple[str, str], ...]  # (unit, why): partial uploads, missing files
    signatures: Mapping[str, dict[str, tuple[int, int]]]  # the committed units as restored


async def _manifests(bucket: Bucket) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(await bucket.list(COMMITS)):
        data = await bucket.get_bytes(key)
        try:
            manifest = json.loads(data or b"")
            files = manifest["files"]
            if isinstance(files, dict):
                out[_unit_from_marker(COMMITS, key)] = manifest
        except (ValueError, KeyError, TypeError):
            continue  # an unreadable manifest commits nothing
    return out


async def _fetch_unit(
    bucket: Bucket, dest: Path, unit: str, files: Mapping[str, Any], verify: bool
) -> str | None:
    """Download ``files`` of ``unit`` into a staging directory, check them, and rename the unit
    into place; the reason when it could not be restored whole."""
    stage = dest / _RESTORING / uuid.uuid4().hex[:8]
    try:
        for key in (unit, *files):  # a bucket's keys are anyone's who can write to it
            try:
                safe_key(key)
            except StorageError as exc:
                return f"{exc}: not restored (a path out of the directory)"
        for key, meta in sorted(files.items()):
            await bucket.get_file(key, stage / key)
            if verify:
                sha = await asyncio.to_thread(_sha256, stage / key)
                if sha != meta.get("sha256"):
                    return f"{key} does not match its manifest"
        target = dest / unit
        if target.is_dir() and not target.is_symlink():
            await asyncio.to_thread(shutil.rmtree, target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(stage / unit, target)
        return None
    finally:
        await asyncio.to_thread(shutil.rmtree, stage, True)


async def restore(bucket: Bucket, dest: Path) -> RestoreResult:
    """Put the bucket's committed units (and unmarked ones) under ``dest``; never a unit whose
    upload did not commit. See the module docstring."""
    dest.mkdir(parents=True, exist_ok=True)
    objects = await bucket.list()
    manifests = await _manifests(bucket)
    pending = {_unit_from_marker(PENDING, k) for k in objects if k.startswith(PENDING)}
    data_units = {_unit_of(k) for k in objects if not k.startswith(META)}
    committed: list[str] = []
    external: list[str] = []
    skipped: list[tuple[str, str]] = []
    sigs: dict[str, dict[str, tuple[int, int]]] = {}
    for unit in sorted(data_units | set(manifests)):
        manifest = manifests.get(unit)
        if manifest is not None:
            files = manifest["files"]
            missing = [
                k for k, m in files.items() if objects.get(k, ObjectInfo(-1)).size != m.get("size")
            ]
            if missing:
                skipped.append(
                    (unit, f"{len(missing)} files of its manifest are not in the bucket")
                )
                continue
            why = await _fetch_unit(bucket, dest, unit, files, verify=True)
            if why:
                skipped.append((unit, why))
                continue
            committed.append(unit)
            sigs[unit] = await asyncio.to_thread(_scan_unit, dest, unit)
        elif unit in pending:
            skipped.append((unit, "its upload was cut short (no commit)"))
        else:
            keys: dict[str, Any] = {k: {} for k in objects if _unit_of(k) == unit}
            why = await _fetch_unit(bucket, dest, unit, keys, verify=False)
            if why is None:
                external.append(unit)
            else:
                skipped.append((unit, why))
    with contextlib.suppress(OSError):
        (dest / _RESTORING).rmdir()  # gone once empty: the job sees only its units
    return RestoreResult(tuple(committed), tuple(external), tuple(skipped), sigs)


async def clean_partial(bucket: Bucket) -> list[str]:
    """Delete what uploads cut short left (units pending with no manifest); their names."""
    objects = await bucket.list()
    committed = {_unit_from_marker(COMMITS, k) for k in objects if k.startswith(COMMITS)}
    cleaned = []
    for key in [k for k in objects if k.startswith(PENDING)]:
        unit = _unit_from_marker(PENDING, key)
        if unit not in committed:
            await bucket.delete_keys(k for k in objects if _unit_of(k) == unit)
            cleaned.append(unit)
        await bucket.delete_keys([key])
    return cleaned


async def download_all(bucket: Bucket, dest: Path, *, prefix: str = "") -> tuple[int, int]:
    """COPY: every object under ``prefix`` (spotd's bookkeeping left out) into ``dest``, the
    prefix taken off; (objects, bytes)."""
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    objects = {k: o for k, o in (await bucket.list(prefix)).items() if not k.startswith(META)}
    pending = {_unit_from_marker(PENDING, k) for k in await bucket.list(PENDING)}
    count = size = 0
    for key, obj in sorted(objects.items()):
        rel = key[len(prefix) :]
        if not rel or (not prefix and _unit_of(key) in pending):
            continue  # a unit being uploaded right now: not part of the copy
        await bucket.get_file(key, dest / safe_key(rel))
        count, size = count + 1, size + obj.size
    dest.mkdir(parents=True, exist_ok=True)
    return count, size
