"""Code and data to instances: content-addressed packages of a workdir or a mounted path.

At launch, the client (``spotctl``, the SDK: ``spotd.sdk.uploads``) walks the user's directory
once (respecting ``.gitignore`` and ``.spotdignore``) with ``scan``, and uploads the files the
daemon lacks as blobs named by their SHA-256 into ``$SPOTD_HOME/cas``, then the list of
(path, blob, mode) as a manifest blob (``spotd.api.files``). Only the admin may instead name
a path on the daemon's host, under its ``file_roots``: the daemon packs it with ``package``.
The task then refers to the package as ``cas:<manifest sha>``. Every attempt's agent
materialises the package from the store, so a relaunch in another region never re-reads the
user's disk, and a second launch of a large workdir with one changed file transfers only that
file: a blob already in the store is not sent again, and a file whose size and mtime are
unchanged is not even re-hashed (a hash cache, on the client and in the daemon's home).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Literal

import pathspec

from spotd.files.private import private_dir

CAS_PREFIX = "cas:"
SHA256_PATTERN = "[0-9a-f]{64}"  # a blob's name: its SHA-256, lower-case hex
MAX_BLOB_BYTES = 1 << 30  # one uploaded file; larger files are refused by the upload
MAX_MANIFEST_FILES = 200_000
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
    """A path cannot be packaged (missing, unreadable, a bad mount target), or a package's
    manifest is malformed."""


def is_sha256(text: str) -> bool:
    return re.fullmatch(SHA256_PATTERN, text) is not None


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of a package: where it goes (relative, no ``..``), its blob, mode and size."""

    path: str
    sha: str
    mode: int
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    kind: Literal["file", "dir"]
    files: tuple[Entry, ...]

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.files)


def _safe_path(rel: Any) -> str:
    """``rel`` if it names a place inside the package's directory; PackageError otherwise
    (a client writes manifests now: ``../../.ssh/authorized_keys`` must not leave ``dest``)."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or len(rel) > 4096:
        raise PackageError(f"manifest: bad path {str(rel)[:80]!r}")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or any(part in ("..", ".", "") for part in rel.split("/")):
        raise PackageError(f"manifest: path {rel[:80]!r} leaves the package")
    return rel


def _entry(raw: Any) -> Entry:
    if not isinstance(raw, dict):
        raise PackageError("manifest: an entry is not an object")
    sha, mode, size = raw.get("sha"), raw.get("mode"), raw.get("size")
    if not isinstance(sha, str) or not is_sha256(sha):
        raise PackageError(f"manifest: bad blob name {str(sha)[:80]!r}")
    if type(mode) is not int or not 0 <= mode <= 0o777:
        raise PackageError(f"manifest: bad mode {mode!r} (permission bits only)")
    if type(size) is not int or not 0 <= size <= MAX_BLOB_BYTES:
        raise PackageError(f"manifest: bad size {size!r}")
    return Entry(_safe_path(raw.get("path")), sha, mode, size)


def parse_manifest(data: bytes) -> Manifest:
    """A manifest blob, checked: its kind, and for each file a safe relative path, a blob
    name, permission bits (no setuid) and a size. Raises PackageError saying what is wrong."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackageError("manifest: not JSON") from exc
    if not isinstance(raw, dict) or raw.get("kind") not in ("file", "dir"):
        raise PackageError("manifest: kind must be file or dir")
    files = raw.get("files")
    if not isinstance(files, list) or len(files) > MAX_MANIFEST_FILES:
        raise PackageError(f"manifest: files must be a list of at most {MAX_MANIFEST_FILES}")
    entries = tuple(_entry(f) for f in files)
    if raw["kind"] == "file" and len(entries) != 1:
        raise PackageError("manifest: a file package holds exactly one file")
    return Manifest(raw["kind"], entries)


def manifest_bytes(kind: str, entries: list[dict[str, Any]]) -> bytes:
    """The manifest blob: canonical JSON, so the same tree is the same package anywhere."""
    return json.dumps({"kind": kind, "files": entries}, sort_keys=True).encode()


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
        """Store ``src`` as blob ``sha``; False if it was there already (nothing copied). The
        bytes are hashed as they are copied: a file changed since it was hashed raises
        PackageError, where the blob kept the name of bytes it did not hold (and ``has``
        trusted it for good). Each copy has its own temporary file: two launches packaging
        the same file at once collided on one name (a 500)."""
        dst = self.path(sha)
        if dst.exists():
            return False
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _mkstemp(self.root / "tmp", sha)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != sha:
                raise PackageError(f"{src} changed while it was being packaged; try again")
            os.replace(tmp, dst)
        except OSError as exc:
            raise PackageError(f"{src}: {exc.strerror or exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        dst = self.path(sha)
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = _mkstemp(self.root / "tmp", sha)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.replace(tmp, dst)
            finally:
                tmp.unlink(missing_ok=True)
        return sha

    def receive(self, sha: str) -> Incoming:
        """A blob arriving in pieces (an upload): it becomes ``sha`` only if its bytes hash
        to ``sha``; until then it is a private temporary file that no reader sees."""
        if not is_sha256(sha):
            raise PackageError(f"not a blob name: {sha[:80]!r}")
        fd, tmp = _mkstemp(self.root / "tmp", sha)
        return Incoming(sha=sha, dest=self.path(sha), tmp=tmp, file=os.fdopen(fd, "wb"))

    def read_manifest(self, sha: str) -> Manifest:
        """The manifest blob ``sha``, checked (``parse_manifest``); PackageError if absent."""
        if not is_sha256(sha):
            raise PackageError(f"not a blob name: {sha[:80]!r}")
        try:
            data = self.path(sha).read_bytes()
        except FileNotFoundError as exc:
            raise PackageError(f"package {sha[:12]} is not in the store") from exc
        return parse_manifest(data)


def _mkstemp(directory: Path, sha: str) -> tuple[int, Path]:
    """A new private temporary file in ``directory``: uploads of one blob may overlap."""
    for n in range(1000):
        tmp = directory / f"{sha}.up{os.getpid()}.{n}.{os.urandom(4).hex()}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), tmp
        except FileExistsError:
            continue
    raise PackageError("cannot create a temporary file in the blob store")


@dataclass(slots=True, kw_only=True)
class Incoming:
    """A blob being received: ``write`` the pieces, then ``commit`` (verify the digest and
    rename into place) or ``abort``; either way the temporary file is gone afterwards."""

    sha: str
    dest: Path
    tmp: Path
    file: BinaryIO
    size: int = 0
    _hash: Any = None

    def write(self, data: bytes) -> None:
        if self._hash is None:
            self._hash = hashlib.sha256()
        self._hash.update(data)
        self.file.write(data)
        self.size += len(data)

    def commit(self) -> bool:
        """Verify and store; True if the blob is new. PackageError (nothing stored) when the
        bytes do not hash to the blob's name."""
        self.file.close()
        got = (self._hash or hashlib.sha256()).hexdigest()
        if got != self.sha:
            self.tmp.unlink(missing_ok=True)
            raise PackageError(f"the body's SHA-256 is {got}, not {self.sha}")
        if self.dest.exists():
            self.tmp.unlink(missing_ok=True)
            return False
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, self.dest)
        return True

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


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


@dataclass(frozen=True, slots=True)
class Scan:
    """A directory (or one file) as a package, before any of it is stored or sent: the
    manifest blob, and where each of its blobs is on this disk."""

    manifest: bytes
    manifest_sha: str
    blobs: dict[str, Path]  # sha → a file with that content
    sizes: dict[str, int]
    files: int
    bytes: int
    hashed_files: int  # files whose content was read (not answered by the hash cache)

    @property
    def ref(self) -> str:
        return CAS_PREFIX + self.manifest_sha


def scan(
    source: Path, cache: HashCache | None, *, trust_cache: Callable[[str], bool] | None = None
) -> Scan:
    """Walk and hash ``source`` (see the module docstring); ``cache`` answers for files whose
    size and mtime are unchanged, when ``trust_cache(sha)`` agrees (default: always)."""
    source = source.expanduser()
    if not source.exists():
        raise PackageError(f"{source}: no such file or directory")
    if not os.access(source, os.R_OK):
        raise PackageError(f"{source}: not readable")
    entries: list[dict[str, Any]] = []
    blobs: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    total = hashed = 0
    for rel, path in _walk(source):
        try:
            st = path.stat()
        except OSError as exc:
            raise PackageError(f"{path}: {exc.strerror}") from exc
        if not stat.S_ISREG(st.st_mode):
            continue  # sockets, fifos, dangling links: nothing to copy
        key = str(path.resolve())
        sha = cache.get(key, st.st_size, st.st_mtime_ns) if cache else None
        if sha is None or (trust_cache is not None and not trust_cache(sha)):
            try:
                sha = _sha256(path)
            except PermissionError as exc:
                raise PackageError(f"{path}: not readable") from exc
            except OSError as exc:  # removed or replaced while the directory was walked
                raise PackageError(f"{path}: {exc.strerror or exc}; try again") from exc
            hashed += 1
            if cache:
                cache.put(key, st.st_size, st.st_mtime_ns, sha)
        blobs.setdefault(sha, path)
        sizes[sha] = st.st_size
        entries.append(
            {"path": rel, "sha": sha, "mode": stat.S_IMODE(st.st_mode) & 0o777, "size": st.st_size}
        )
        total += st.st_size
    manifest = manifest_bytes("file" if source.is_file() else "dir", entries)
    sha = hashlib.sha256(manifest).hexdigest()
    return Scan(manifest, sha, blobs, sizes, len(entries), total, hashed)


def package(
    source: Path,
    store: BlobStore,
    cache: HashCache,
    check: Callable[[Scan], None] | None = None,
) -> PackResult:
    """Package a directory (or one file) into the store, on the daemon's host (the admin's
    ``file_roots``); see the module docstring. ``check`` may refuse the scan (raising)
    before anything is stored."""
    found = scan(source, cache, trust_cache=store.has)
    if check is not None:
        check(found)
    new_files = new_bytes = 0
    for sha, path in found.blobs.items():
        if store.put_file(path, sha):
            new_files += 1
            new_bytes += found.sizes[sha]
    sha = store.put_bytes(found.manifest)
    return PackResult(sha, found.files, found.bytes, new_files, new_bytes, found.hashed_files)


def materialize(ref: str, store: BlobStore, dest: Path) -> int:
    """Write the package ``cas:<sha>`` at ``dest`` (a directory, or a file for a one-file
    package); returns the bytes written. Blobs are copied, never linked: a job may edit its
    files without touching the store. The manifest is checked first: no path leaves ``dest``."""
    if not ref.startswith(CAS_PREFIX):
        raise PackageError(f"not a package reference: {ref!r}")
    manifest = store.read_manifest(ref[len(CAS_PREFIX) :])
    written = 0
    if manifest.kind == "file":
        [entry] = manifest.files
        _put(store.path(entry.sha), dest, entry.mode)
        return entry.size
    for entry in manifest.files:
        _put(store.path(entry.sha), dest / entry.path, entry.mode)
        written += entry.size
    return written


def _put(blob: Path, target: Path, mode: int) -> None:
    """Copy ``blob`` to ``target`` whole: written beside it and renamed over it, so a process
    reading ``target`` meanwhile (another job's replica sharing a host path, a job restarting
    over its old files) sees the old file or the new one, never a half-written one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.spotd-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copyfile(blob, tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_mount_target(remote: str) -> str:
    """The absolute path a mount may be written to, or PackageError saying why not.

    ``~/x`` is under the job's home (the agent resolves it); ``~user/x`` (someone else's
    home) and any ``..`` segment (``/tmp/../etc``, ``~/../other``) are refused outright."""
    if "\x00" in remote:
        raise PackageError(f"{remote!r}: a NUL in a path")
    if ".." in remote.split("/"):
        raise PackageError(f"{remote}: `..` is not allowed in a mount target")
    if remote.startswith("~"):
        if remote != "~" and not remote.startswith("~/"):
            raise PackageError(f"{remote}: `~user` is not allowed; use ~/path (the job's home)")
        return remote  # under the job's home: the agent resolves it
    path = os.path.normpath(remote)
    if not os.path.isabs(path):
        return remote  # relative to the job's working directory
    if path in SYSTEM_DIRS or any(
        path.startswith(d + "/") for d in SYSTEM_DIRS if d not in ("/", "/home", "/var")
    ):
        raise PackageError(f"{remote}: would overwrite a system directory")
    return path
