"""Where a job's checkpoints outlive its instances: a directory, or S3.

The agent restores the checkpoint directory from the store before ``run``, syncs it up
periodically, on a notice (a *final* snapshot) and when the job ends. A job may say how far
its checkpoint got in a file ``spotd-progress`` beside it (``0.42``, ``42%``, ``420/1000``):
the agent reports that with each sync, and the DEADLINE strategy paces itself by it
(``spotd.control.deadline``). Both stores keep the
same promises: a reader never sees half a snapshot, an older attempt never overwrites a newer
attempt's snapshot, and a final snapshot is marked so the replacement can wait for it.

:class:`CheckpointStore` is the directory store (the embedded local provider, shared volumes);
``spotd.files.checkpoint_s3.S3CheckpointStore`` the S3 one. The agent awaits either through
:class:`AsyncCheckpointStore` (:func:`open_checkpoint_store` picks by URL).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import uuid
from pathlib import Path
from typing import IO, Protocol

from spotd.files.checkpoint_s3 import S3CheckpointStore
from spotd.files.private import PRIVATE_DIR, private_dir
from spotd.types import AgentConfig

__all__ = [
    "FINAL",
    "MARKER",
    "PROGRESS",
    "AsyncCheckpointStore",
    "CheckpointStore",
    "open_checkpoint_store",
    "parse_progress",
    "read_progress",
    "snapshot",
]

MARKER = ".spotd-attempt"  # which attempt wrote the snapshot
FINAL = ".spotd-final"  # written with the last snapshot of an attempt that got a notice
PROGRESS = "spotd-progress"  # the job's own: how far the checkpoint beside it got


def parse_progress(text: str) -> float | None:
    """``0.42``, ``42%`` or ``420/1000`` (steps done / total) as a fraction in [0, 1]; None
    for anything else (an empty or half-written file is not progress)."""
    text = text.strip()
    try:
        if text.endswith("%"):
            value = float(text[:-1]) / 100.0
        elif "/" in text:
            done, total = (float(x) for x in text.split("/", 1))
            value = done / total if total > 0 else -1.0
        else:
            value = float(text)
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


def read_progress(directory: Path) -> float | None:
    """The progress the job wrote beside its checkpoint (``PROGRESS``), if it writes one.

    The agent reads it just *before* a sync, so the snapshot it reports on holds at least
    that much progress: the daemon never counts work that a relaunch would not find.
    """
    try:
        return parse_progress((directory / PROGRESS).read_text()[:64])
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError, PermissionError):
        return None


class CheckpointStore:
    """A directory that outlives instances; snapshots are swapped in whole, newest attempt wins.

    A sync copies the instance's checkpoint directory to a temporary sibling and renames it
    into place under a lock, so a reader never sees half a snapshot, and an older attempt (one
    still finishing after its replacement started) never overwrites a newer attempt's state.
    """

    def __init__(self, store: Path, attempt: int) -> None:
        self.store = store
        self.attempt = attempt

    def _lock(self) -> IO[str]:
        if not self.store.parent.is_dir():  # made here: private (one that exists is the admin's)
            private_dir(self.store.parent)
        f = open(self.store.parent / f".{self.store.name}.lock", "w")  # noqa: SIM115
        fcntl.flock(f, fcntl.LOCK_EX)
        return f

    def restore(self, into: Path) -> bool:
        private_dir(into)  # what the job saves there may be anything: its user's only
        with self._lock():
            if not self.store.exists():
                return False
            shutil.copytree(  # links as links: never followed out of the store (below)
                self.store,
                into,
                symlinks=True,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns(MARKER, FINAL),
            )
            return True

    def final_from(self) -> int:
        """The attempt whose notice-time snapshot is in the store (0 if none)."""
        try:
            return int((self.store / FINAL).read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def sync(self, source: Path, *, final: bool = False, unless_final: bool = False) -> bool:
        """Swap the store for a snapshot of ``source``; False when nothing was written: an
        empty directory (and not ``final``), a newer attempt's store, or (``unless_final``) a
        store holding this attempt's final snapshot — decided under the lock, so a gang's
        survivor cannot overwrite the noticed node's final snapshot between looking and
        writing (``spotd.agent.gang``)."""
        if not source.exists() or not any(source.iterdir()):
            return final and self._mark_final()
        tmp = self.store.parent / f".{self.store.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            snapshot(source, tmp)
            # a snapshot may hold anything the job saved (keys, tokens): only its user reads it
            os.chmod(tmp, PRIVATE_DIR)
            (tmp / MARKER).write_text(str(self.attempt))
            if final:
                (tmp / FINAL).write_text(str(self.attempt))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # not left beside the store, sync after sync
            raise
        with self._lock():
            current = self._writer()
            if current > self.attempt or (unless_final and self.final_from() == self.attempt):
                shutil.rmtree(tmp, ignore_errors=True)
                return False
            old = self.store.parent / f".{self.store.name}.old-{uuid.uuid4().hex[:8]}"
            if self.store.exists():
                os.rename(self.store, old)
            os.rename(tmp, self.store)
            shutil.rmtree(old, ignore_errors=True)
        return True

    def _writer(self) -> int:
        """The attempt whose snapshot the store holds (0: none); under the lock."""
        try:
            return int((self.store / MARKER).read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def _mark_final(self) -> bool:
        """A final sync of an empty directory (a gang's node that saves nothing, a notice
        before the first checkpoint): the store as it is, marked as this attempt's final
        snapshot, so the replacement learns that nothing more is coming (or it would wait for
        the whole notice period). Written in place under the lock: a copy of the store taken
        outside it, as before, could be one another node's sync was replacing, and went back
        to an older snapshot marked final."""
        with self._lock():
            if self._writer() > self.attempt:
                return False
            if not self.store.exists():
                private_dir(self.store)
            for name in (MARKER, FINAL):
                tmp = self.store / f"{name}.{uuid.uuid4().hex[:8]}"
                tmp.write_text(str(self.attempt))
                os.replace(tmp, self.store / name)
        return True


def snapshot(source: Path, into: Path) -> None:
    """Copy the checkpoint directory ``source`` to the new directory ``into`` while the job
    may be writing it. A file or directory that is gone by the time it is copied is left out,
    not an error: a job that saves atomically writes ``step.tmp`` and renames it over ``step``,
    and the copy often lists the temporary name an instant before it vanishes (a copy that gave
    up on that failed about 4 syncs in 10 against a job checkpointing in a loop, and the agent
    then stopped syncing for the rest of the attempt). Anything else that fails still raises."""
    try:
        # links are kept as links, never followed: a store another tenant can write (a shared
        # volume) could plant ``x -> /etc/spotd-agent/agent.json``, and a snapshot that
        # followed it put the file's contents (the agent's token) in the store
        shutil.copytree(source, into, symlinks=True, copy_function=_copy_unless_gone)
    except shutil.Error as exc:
        failed = [e for e in exc.args[0] if os.path.lexists(e[0])]
        if failed:
            raise shutil.Error(failed) from exc


def _copy_unless_gone(src: str, dst: str) -> str:
    try:
        return str(shutil.copy2(src, dst))
    except FileNotFoundError as exc:
        if exc.filename != src or os.path.islink(src):
            raise  # the destination's side, or a dangling link: a real failure
        return dst  # renamed or deleted by the job while it was being copied


class AsyncCheckpointStore(Protocol):
    """What the agent awaits, whichever store holds the checkpoints."""

    async def restore(self, into: Path) -> bool: ...
    async def final_from(self) -> int: ...
    async def sync(
        self, source: Path, *, final: bool = False, unless_final: bool = False
    ) -> bool: ...


class _InThread:
    """The directory store's blocking calls, awaited off the event loop (the agent awaits
    every store alike: this one, or ``spotd.files.checkpoint_s3.S3CheckpointStore``)."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store

    async def restore(self, into: Path) -> bool:
        return await asyncio.to_thread(self.store.restore, into)

    async def final_from(self) -> int:
        return await asyncio.to_thread(self.store.final_from)

    async def sync(self, source: Path, *, final: bool = False, unless_final: bool = False) -> bool:
        return await asyncio.to_thread(
            self.store.sync, source, final=final, unless_final=unless_final
        )


def open_checkpoint_store(cfg: AgentConfig) -> AsyncCheckpointStore:
    """A directory path, or ``s3://bucket/prefix/<task>/`` (aioboto3 is imported only then)."""
    if cfg.checkpoint_store.startswith("s3://"):
        return S3CheckpointStore(cfg.checkpoint_store, cfg.attempt)
    return _InThread(CheckpointStore(Path(cfg.checkpoint_store), cfg.attempt))
