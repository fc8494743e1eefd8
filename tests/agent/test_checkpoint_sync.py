"""Checkpoint syncs against a job that is writing its checkpoint: a job that saves atomically
(a temporary name renamed into place) never makes a sync fail, and a sync that fails for a real
reason (the store away) is said in the job's log and tried again, never ending the syncing for
the rest of the attempt, nor hiding the run's exit from the daemon."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from spotd.agent import checkpoints, syncing
from spotd.agent.checkpoints import CheckpointStore
from spotd.agent.gang import Gang
from spotd.agent.main import Agent
from spotd.agent.syncing import Syncer
from spotd.types import AgentConfig
from tests.agent.saver import Rotator, Saver
from tests.factories import agent_config


@pytest.fixture
def saving(tmp_path: Path) -> Iterator[Saver]:
    with Saver(tmp_path / "ckpt") as saver:
        yield saver


def test_a_sync_while_the_job_renames_its_checkpoint_into_place_never_fails(
    saving: Saver, tmp_path: Path
) -> None:
    """Before, the copy listed ``step.tmp`` an instant before the rename took it and gave up:
    about 4 syncs in 10 failed against this job."""
    store = CheckpointStore(tmp_path / "store" / "task", attempt=1)
    for _ in range(300):
        assert store.sync(saving.directory) is True
    assert store.restore(tmp_path / "restored") is True
    assert int((tmp_path / "restored" / "step").read_text()) > 0  # whole, never half a file
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [".task.lock", "task"]


def test_checkpoint_directories_rotated_out_while_looked_at_or_copied_fail_nothing(
    tmp_path: Path,
) -> None:
    """``Path.rglob`` raised when a subdirectory went between its listing and its walk, and
    that ended the sync loop (a review found it after the file fix)."""
    store = CheckpointStore(tmp_path / "store" / "task", attempt=1)
    with Rotator(tmp_path / "ckpt") as trainer:
        for _ in range(300):
            syncing.signature(trainer.directory)
            assert store.sync(trainer.directory) is True
    assert store.sync(trainer.directory) is True  # the trainer has stopped: a whole one
    assert store.restore(tmp_path / "restored") is True
    models = (tmp_path / "restored").glob("checkpoint-*/model")
    assert max(int(p.read_text()) for p in models) == trainer.step


def test_a_final_sync_of_an_empty_directory_marks_the_store_without_copying_it(
    saving: Saver, tmp_path: Path
) -> None:
    """A gang's node that saves nothing, noticed while another node syncs: it copied the store
    outside the lock while that sync was replacing it (an error, or an older snapshot swapped
    back in and marked final). Now it marks the store where it is, under the lock."""
    store = tmp_path / "store" / "task"
    empty = tmp_path / "empty"
    empty.mkdir()
    rank0 = CheckpointStore(store, attempt=1)
    errors: list[BaseException] = []

    def periodic() -> None:
        try:
            for _ in range(200):
                rank0.sync(saving.directory)  # a survivor's sync, again and again
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=periodic)
    thread.start()
    try:
        for _ in range(200):
            assert CheckpointStore(store, attempt=1).sync(empty, final=True) is True
    finally:
        thread.join()
    assert errors == []
    assert CheckpointStore(store, attempt=1).sync(empty, final=True) is True
    assert rank0.final_from() == 1
    assert sorted(p.name for p in store.iterdir() if p.name.startswith(".spotd")) == [
        ".spotd-attempt",
        ".spotd-final",
    ]


def test_a_copy_that_fails_for_a_real_reason_still_fails_and_leaves_nothing_beside_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "weights").write_text("w")

    def disk_full(src: str, dst: str) -> str:
        raise OSError(errno.ENOSPC, "No space left on device", dst)

    monkeypatch.setattr(checkpoints, "_copy_unless_gone", disk_full)
    store = CheckpointStore(tmp_path / "store" / "task", attempt=1)
    with pytest.raises(OSError, match="No space left"):
        store.sync(src)
    assert [p.name for p in (tmp_path / "store").iterdir()] == []  # no half-made snapshot


def test_links_in_a_checkpoint_are_kept_as_links_never_followed(tmp_path: Path) -> None:
    """A store on a volume another tenant can write could hold ``x -> /etc/.../agent.json``:
    restored and then snapshotted by following it, the agent's token went into the store (a
    security review). Links now travel as links, both ways; a relative ``latest`` still works."""
    secret = tmp_path / "agent.json"
    secret.write_text('{"token": "agent-token"}')
    src = tmp_path / "ckpt"
    (src / "step-2").mkdir(parents=True)
    (src / "step-2" / "model").write_text("weights")
    (src / "latest").symlink_to("step-2")
    (src / "planted").symlink_to(secret)
    store = CheckpointStore(tmp_path / "store" / "task", attempt=1)
    assert store.sync(src) is True
    assert "agent-token" not in "".join(
        p.read_text() for p in (tmp_path / "store").rglob("*") if p.is_file() and not p.is_symlink()
    )
    assert store.restore(tmp_path / "restored") is True
    assert (tmp_path / "restored" / "latest" / "model").read_text() == "weights"
    assert os.readlink(tmp_path / "restored" / "planted") == str(secret)  # a link, as it was


class _Flaky:
    """A store that refuses ``fails`` syncs (as S3 does while it is away), then works; its
    restores fail unless ``readable``."""

    def __init__(self, real: CheckpointStore, fails: int, *, readable: bool = False) -> None:
        self.real, self.fails, self.readable, self.syncs = real, fails, readable, 0
        self.worked_twice = asyncio.Event()  # two syncs went through after the failures

    async def sync(self, source: Path, *, final: bool = False, unless_final: bool = False) -> bool:
        self.syncs += 1
        if self.syncs <= self.fails:
            raise ConnectionError("the store is away")
        if self.syncs >= self.fails + 2:
            self.worked_twice.set()
        return self.real.sync(source, final=final, unless_final=unless_final)

    async def restore(self, into: Path) -> bool:
        if not self.readable:
            raise ConnectionError("the store is away")
        return self.real.restore(into)

    async def final_from(self) -> int:
        return self.real.final_from()


def _config(tmp_path: Path, run: str = "true") -> AgentConfig:
    return agent_config(
        run=run, checkpoint_store=str(tmp_path / "store" / "task"), checkpoint_sync_seconds=0.05
    )


async def test_syncing_goes_on_after_a_failure_and_says_so_once(
    saving: Saver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(syncing, "RETRY_SECONDS", 0.1)
    said: list[str] = []
    store = _Flaky(CheckpointStore(tmp_path / "store" / "task", attempt=1), fails=3)
    syncer = Syncer(store, saving.directory, Gang(_config(tmp_path)), say=said.append)
    stop = asyncio.Event()
    loop = asyncio.create_task(syncer.loop(0.05, lambda: True, stop))
    try:
        await asyncio.wait_for(store.worked_twice.wait(), 30)
    finally:
        stop.set()
        await loop
    assert said == [
        "checkpoint sync failed, trying again: ConnectionError: the store is away",
        "checkpoint sync works again",
    ]
    assert syncer.last_sync is not None and 0 < syncer.progress <= saving.step / 1_000_000


async def test_a_run_whose_last_sync_fails_is_still_reported_exited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the exception ended the agent's job task before the exit was recorded, and the
    agent went on reporting a run that had ended: the job never finished."""
    monkeypatch.setattr(syncing, "_RETRIES", (0.01,))
    cfg = _config(tmp_path, run='echo saved > "$SPOTD_CHECKPOINT_DIR/state"; exit 3')
    agent = Agent(cfg, tmp_path / "instance")
    real = CheckpointStore(Path(cfg.checkpoint_store), 1)
    agent.syncer.store = _Flaky(real, fails=10**6, readable=True)
    async with asyncio.timeout(30):
        await agent.run_job()
    assert (agent.phase, agent.exit_code) == ("exited", 3)
    log = agent.log_path.read_text()
    assert "checkpoint sync failed, trying again: ConnectionError" in log
    assert "run exited with 3" in log


async def test_a_store_that_cannot_be_read_fails_the_start_instead_of_running_from_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run started without its checkpoint would overwrite the store with no progress (the
    newest attempt's snapshot wins)."""
    monkeypatch.setattr(syncing, "_RESTORE_RETRIES", (0.01, 0.01))
    cfg = _config(tmp_path, run="touch started")
    agent = Agent(cfg, tmp_path / "instance")
    agent.syncer.store = _Flaky(CheckpointStore(Path(cfg.checkpoint_store), 1), fails=0)
    async with asyncio.timeout(30):
        await agent.run_job()
    assert agent.phase == "setup_failed"
    assert not (agent.work / "started").exists()
    log = agent.log_path.read_text()
    assert log.count("restoring the checkpoint failed: ConnectionError: the store is away") == 3
