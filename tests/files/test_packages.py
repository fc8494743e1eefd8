"""Workdir and file_mounts packages: content-addressed, ignore files respected, incremental."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from spotd.files.workdir import (
    BlobStore,
    HashCache,
    PackageError,
    check_mount_target,
    materialize,
    package,
)


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "cas")


@pytest.fixture
def cache(tmp_path: Path):
    c = HashCache(tmp_path / "hashes.db")
    yield c
    c.close()


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_round_trip_respects_ignore_files(tmp_path, store, cache):
    src = _tree(
        tmp_path / "src",
        {
            "train.py": "print(1)",
            "data/a.txt": "a",
            "ckpt/big.bin": "x" * 100,
            "notes.log": "log",
            ".git/HEAD": "ref",
            ".gitignore": "*.log\n",
            ".spotdignore": "ckpt/\n",
            "sub/keep.log.txt": "kept",
        },
    )
    os.chmod(src / "train.py", 0o755)
    p = package(src, store, cache)
    out = tmp_path / "out"
    materialize(p.ref, store, out)
    got = sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())
    assert got == [".gitignore", ".spotdignore", "data/a.txt", "sub/keep.log.txt", "train.py"]
    assert (out / "train.py").read_text() == "print(1)"
    assert os.stat(out / "train.py").st_mode & 0o777 == 0o755


def test_second_package_with_one_changed_file_moves_only_that_file(tmp_path, store, cache):
    src = _tree(tmp_path / "src", {f"f{i}.txt": f"content {i}" * 100 for i in range(20)})
    first = package(src, store, cache)
    assert (first.files, first.new_files, first.hashed_files) == (20, 20, 20)
    (src / "f7.txt").write_text("changed")
    second = package(src, store, cache)
    assert second.manifest != first.manifest
    assert (second.new_files, second.new_bytes, second.hashed_files) == (1, len("changed"), 1)
    third = package(src, store, cache)
    assert third.manifest == second.manifest and third.new_files == 0 and third.hashed_files == 0


def test_single_file_package(tmp_path, store, cache):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\x00\x01" * 10)
    p = package(f, store, cache)
    materialize(p.ref, store, tmp_path / "out" / "w.bin")
    assert (tmp_path / "out" / "w.bin").read_bytes() == f.read_bytes()


def test_a_reader_never_sees_a_half_restored_file(tmp_path, store, cache):
    """Two replicas on one host restoring one mount path (or a job restarting over its own
    files): whoever reads the file meanwhile gets the old content or the new, never a
    truncated one; and nothing is left beside it."""
    versions = []
    for v in ("one", "two"):
        src = _tree(tmp_path / f"src-{v}", {"note.txt": f"note-{v}\n" * 20_000})
        versions.append(package(src, store, cache).ref)
    out = tmp_path / "restored"
    materialize(versions[0], store, out)
    whole = {(out / "note.txt").read_text(), "note-two\n" * 20_000}
    stop, seen = threading.Event(), []

    def read() -> None:
        while not stop.is_set():
            seen.append((out / "note.txt").read_text())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(30):
            materialize(versions[i % 2], store, out)
    finally:
        stop.set()
        reader.join()
    assert seen and set(seen) <= whole
    assert sorted(p.name for p in out.iterdir()) == ["note.txt"]


def test_missing_source_names_the_path(tmp_path, store, cache):
    with pytest.raises(PackageError, match="nope"):
        package(tmp_path / "nope", store, cache)


@pytest.mark.parametrize(
    ("target", "ok"),
    [
        ("/data", True),
        ("/tmp/x", True),
        ("~/data", True),
        ("rel/dir", True),
        ("/home/me/data", True),
        ("/etc", False),
        ("/etc/ssh", False),
        ("/usr/local/lib", False),
        ("/", False),
        ("/var", False),
        ("/home", False),
        ("/proc/self", False),
    ],
)
def test_mount_targets(target, ok):
    if ok:
        check_mount_target(target)
    else:
        with pytest.raises(PackageError, match="system directory"):
            check_mount_target(target)


def test_two_packagings_of_the_same_new_file_at_once_both_work(tmp_path, store):
    """Both copied through one temporary name (``{sha}.{pid}``): one of them found it renamed
    away by the other and failed (a 500 for its launch)."""
    src = tmp_path / "src"
    src.mkdir()
    errors: list[BaseException] = []

    def pack(n: int) -> None:
        cache = HashCache(tmp_path / f"hashes-{n}.db")  # one per thread, as per launch
        try:
            for i in range(50):
                (src / f"data-{n}").write_bytes(b"same for both %d" % i)  # a new blob each time
                package(src / f"data-{n}", store, cache)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            cache.close()

    threads = [threading.Thread(target=pack, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert list((store.root / "tmp").iterdir()) == []  # nothing left behind


def test_a_file_changed_between_its_hash_and_its_copy_is_refused_not_stored(tmp_path, store):
    """The blob would have held the new bytes under the old bytes' name, and ``has`` trusted
    it from then on: every later package naming that content got the wrong file."""
    f = tmp_path / "weights"
    f.write_bytes(b"what was hashed")
    sha = hashlib.sha256(b"what was hashed").hexdigest()
    f.write_bytes(b"what is there when it is copied")
    with pytest.raises(PackageError, match="changed while it was being packaged"):
        store.put_file(f, sha)
    assert not store.has(sha)
    assert list((store.root / "tmp").iterdir()) == []
