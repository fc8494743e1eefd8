"""Code and data to instances: content-addressed packages of a workdir or a mounted path.

At launch, the daemon walks the user's directory once (respecting ``.gitignore`` and
``.spotdignore``), stores every file as a blob named by its SHA-256 in ``$SPOTD_HOME/cas``, and
stores the list of (path, blob, mode) as a manifest blob. The task then refers to the package
as ``cas:<manifest sha>``. Every attempt's agent materialises the package from the store, so a
relaunch in another region never re-reads the user's disk, and a second launch of a large
workdir with one changed file transfers only that file: a blob already in the store is not
copied again, and a file whose size and mtime are unchanged is not even re-hashed (a per-home
hash cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path

import pathspec

from spotd.files.private import private_dir

CAS_PREFIX = "cas:"
IGNORE_FILES = (".gitignore", ".spotdignore")
ALWAYS_IGNORED = (".git/",)
# remote paths a mount may never write into
SYSTEM_DIRS = (
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var",
    "/home",
)


class PackageError(Exception):
    """A path cannot be packaged (missing, unreadable, a bad mount target)."""


@dataclass(frozen=True, slots=True)
class PackResult:
    manifest: str  # sha256 of the manifest blob
    files: int
    bytes: int
    new_files: int  # blobs the store did not have: what this launch transferred
    new_bytes: int
    hashed_files: int  # files whose content was read (not answered by the hash cache)

    @property
    def ref(self) -> str:
        return CAS_PREFIX + self.manifest


class BlobStore:
    """Blobs named by SHA-256 under ``root/blobs/ab/abcd...``; writes are atomic renames."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # packages are the users' directories (a workdir may hold a .env or a key): private
        private_dir(root / "blobs")
        private_dir(root / "tmp")
        private_dir(root)

    def path(self, sha: str) -> Path:
        return self.root / "blobs" / sha[:2] / sha

    def has(self, sha: str) -> bool:
        return self.path(sha).exists()

    def put_file(self, src: Path, sha: str) -> bool:
        """Store ``src`` as blob ``sha``; False if it was there already (nothing copied)."""
        dst = self.path(sha)
        if dst.exists():
            return False
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "tmp" / f"{sha}.{os.getpid()}"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        return True

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        dst = self.path(sha)
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.root / "tmp" / f"{sha}.{os.getpid()}"
            tmp.write_bytes(data)
            os.replace(tmp, dst)
        return sha


class HashCache:
    """(absolute path, size, mtime_ns) → sha256, so unchanged files are not read again."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, timeout=30)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS h (path TEXT PRIMARY KEY, size INT, mtime INT, sha TEXT)"
        )

    def get(self, path: str, size: int, mtime: int) -> str | None:
        row = self._db.execute(
            "SELECT sha FROM h WHERE path=? AND size=? AND mtime=?", (path, size, mtime)
        ).fetchone()
        return row[0] if row else None

    def put(self, path: str, size: int, mtime: int, sha: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO h VALUES (?,?,?,?)", (path, size, mtime, sha))

    def close(self) -> None:
        self._db.commit()
        self._db.close()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _ignore_spec(root: Path) -> pathspec.GitIgnoreSpec:
    lines: list[str] = list(ALWAYS_IGNORED)
    for name in IGNORE_FILES:
        f = root / name
        if f.is_file():
            lines += f.read_text(errors="replace").splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _walk(root: Path) -> list[tuple[str, Path]]:
    """(relative posix path, absolute path) of every file to package, ignores applied."""
    if root.is_file():
        return [(root.name, root)]
    spec = _ignore_spec(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(
            d for d in dirnames if not spec.match_file(f"{(rel_dir / d).as_posix()}/")
        )
        for name in sorted(filenames):
            rel = (rel_dir / name).as_posix()
            if not spec.match_file(rel):
                out.append((rel, Path(dirpath) / name))
    return out


def package(source: Path, store: BlobStore, cache: HashCache) -> PackResult:
    """Package a directory (or one file) into the store; see the module docstring."""
    source = source.expanduser()
    if not source.exists():
        raise PackageError(f"{source}: no such file or directory")
    if not os.access(source, os.R_OK):
        raise PackageError(f"{source}: not readable")
    entries = []
    total = new_files = new_bytes = hashed = 0
    for rel, path in _walk(source):
        try:
            st = path.stat()
        except OSError as exc:
            raise PackageError(f"{path}: {exc.strerror}") from exc
        if not stat.S_ISREG(st.st_mode):
            continue  # sockets, fifos, dangling links: nothing to copy
        key = str(path.resolve())
        sha = cache.get(key, st.st_size, st.st_mtime_ns)
        if sha is None or not store.has(sha):
            try:
                sha = _sha256(path)
            except PermissionError as exc:
                raise PackageError(f"{path}: not readable") from exc
            hashed += 1
            cache.put(key, st.st_size, st.st_mtime_ns, sha)
            if store.put_file(path, sha):
                new_files += 1
                new_bytes += st.st_size
        entries.append(
            {"path": rel, "sha": sha, "mode": stat.S_IMODE(st.st_mode), "size": st.st_size}
        )
        total += st.st_size
    manifest = {"kind": "file" if source.is_file() else "dir", "files": entries}
    sha = store.put_bytes(json.dumps(manifest, sort_keys=True).encode())
    return PackResult(sha, len(entries), total, new_files, new_bytes, hashed)


def materialize(ref: str, store: BlobStore, dest: Path) -> int:
    """Write the package ``cas:<sha>`` at ``dest`` (a directory, or a file for a one-file
    package); returns the bytes written. Blobs are copied, never linked: a job may edit its
    files without touching the store."""
    if not ref.startswith(CAS_PREFIX):
        raise PackageError(f"not a package reference: {ref!r}")
    manifest = json.loads(store.path(ref[len(CAS_PREFIX) :]).read_bytes())
    written = 0
    if manifest["kind"] == "file":
        [entry] = manifest["files"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store.path(entry["sha"]), dest)
        os.chmod(dest, entry["mode"])
        return int(entry["size"])
    for entry in manifest["files"]:
        target = dest / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store.path(entry["sha"]), target)
        os.chmod(target, entry["mode"])
        written += int(entry["size"])
    return written


def check_mount_target(remote: str) -> str:
    """The absolute path a mount may be written to, or PackageError saying why not."""
    if remote.startswith("~"):
        return remote  # under the job's home: the agent resolves it
    path = os.path.normpath(remote)
    if not os.path.isabs(path):
        return remote  # relative to the job's working directory
    if path in SYSTEM_DIRS or any(
        path.startswith(d + "/") for d in SYSTEM_DIRS if d not in ("/", "/home", "/var")
    ):
        raise PackageError(f"{remote}: would overwrite a system directory")
    return path
