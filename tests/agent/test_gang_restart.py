"""An agent follows the daemon's restart orders: stop at a newer generation, run on ``go``."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest

from spotd.agent.checkpoints import AsyncCheckpointStore, CheckpointStore, open_checkpoint_store
from spotd.agent.environment import build_env
from spotd.agent.gang import Gang, RestartOrder, parse_order
from spotd.types import AgentConfig


def config(rank: int = 0, envs: dict[str, str] | None = None) -> AgentConfig:
    return AgentConfig(
        instance_key=f"j3-a1-n{rank}",
        attempt_id="j3-a1",
        job_id=3,
        task_id="t",
        attempt=1,
        node_rank=rank,
        num_nodes=4,
        setup=None,
        run="true",
        envs={"SPOTD_NODE_IPS": "127.0.0.1\n127.0.0.1\n127.0.0.1\n127.0.0.1", **(envs or {})},
    )


IPS = "10.0.0.1\n10.0.0.2\n10.0.0.9\n10.0.0.4"


def test_a_first_generation_node_waits_for_every_address_then_adopts_a_newer_one() -> None:
    gang = Gang(config())
    assert gang.generation == 0 and gang.must_wait()  # the first run waits for the go too
    gang.on_order(RestartOrder(0, 4, IPS, go=False))  # some node not up yet
    assert not gang.go.is_set()
    assert gang.on_order(RestartOrder(0, 4, IPS, go=True)) is False
    assert gang.go.is_set()
    assert gang.apply(config()).envs["SPOTD_NODE_IPS"] == IPS  # the real addresses
    gang.started()
    assert not gang.must_wait()
    assert gang.on_order(RestartOrder(1, 4, IPS, go=False)) is True
    assert gang.changed.is_set() and gang.must_wait() and not gang.go.is_set()
    assert gang.on_order(RestartOrder(1, 4, IPS, go=False)) is False  # the same order again
    gang.on_order(RestartOrder(1, 4, IPS, go=True))
    assert gang.go.is_set()
    gang.started()
    assert not gang.must_wait() and not gang.changed.is_set()


def test_a_single_node_job_never_waits_and_an_order_without_addresses_keeps_the_launchs() -> None:
    single = Gang(dataclasses.replace(config(), num_nodes=1))
    assert not single.must_wait()
    gang = Gang(config(envs={"SPOTD_NODE_IPS": "slurm-a\nslurm-b\nslurm-c\nslurm-d"}))
    gang.on_order(RestartOrder(0, 4, "", go=True))  # the provider reports no addresses
    cfg = gang.apply(config(envs={"SPOTD_NODE_IPS": "slurm-a\nslurm-b\nslurm-c\nslurm-d"}))
    assert cfg.envs["SPOTD_NODE_IPS"] == "slurm-a\nslurm-b\nslurm-c\nslurm-d"


def test_a_replacement_waits_for_go_before_its_first_run() -> None:
    gang = Gang(config(2, {"SPOTD_GENERATION": "1"}))
    assert gang.generation == 1 and gang.must_wait()
    assert gang.on_order(RestartOrder(1, 4, IPS, go=True)) is False
    assert gang.go.is_set()


def test_an_older_order_changes_nothing_and_a_newer_one_cancels_go() -> None:
    gang = Gang(config(2, {"SPOTD_GENERATION": "2"}))
    gang.on_order(RestartOrder(1, 4, IPS, go=True))
    assert not gang.go.is_set() and gang.generation == 2
    gang.on_order(RestartOrder(2, 4, IPS, go=True))
    assert gang.go.is_set()
    gang.on_order(RestartOrder(3, 4, IPS, go=False))
    assert not gang.go.is_set() and gang.generation == 3


def test_the_restarted_run_sees_the_new_node_list(tmp_path: Path) -> None:
    gang = Gang(config(1))
    gang.on_order(RestartOrder(1, 4, IPS, go=True))
    env = build_env(gang.apply(config(1)), tmp_path, {})
    assert env["SKYPILOT_NODE_RANK"] == env["SPOTD_NODE_RANK"] == "1"
    assert env["SKYPILOT_NUM_NODES"] == "4"
    assert env["SKYPILOT_NODE_IPS"] == env["SPOTD_NODE_IPS"] == IPS
    assert env["SPOTD_GENERATION"] == "1"


def test_parse_order_ignores_what_is_not_an_order() -> None:
    assert parse_order(None) is None
    assert parse_order({"generation": 1}) is None
    assert parse_order({"generation": "x", "num_nodes": 2, "node_ips": "", "go": True}) is None
    got = parse_order({"generation": 2, "num_nodes": 2, "node_ips": "a\nb", "go": True})
    assert got == RestartOrder(2, 2, "a\nb", True)


def _store(tmp_path: Path) -> tuple[AsyncCheckpointStore, AsyncCheckpointStore]:
    """The directory checkpoint store as this attempt's kept node and noticed node see it."""
    cfg = config()
    at = str(tmp_path / "store")
    kept = open_checkpoint_store(dataclasses.replace(cfg, checkpoint_store=at))
    return kept, open_checkpoint_store(dataclasses.replace(cfg, checkpoint_store=at))


def _step(directory: Path) -> str:
    return (directory / "state.json").read_text()


async def test_a_kept_node_never_overwrites_a_noticed_nodes_final_snapshot(tmp_path: Path) -> None:
    kept_store, noticed_store = _store(tmp_path)
    kept, noticed = tmp_path / "kept", tmp_path / "noticed"
    for d, step in ((kept, "40"), (noticed, "35")):
        d.mkdir()
        (d / "state.json").write_text(step)
    gang = Gang(config())
    assert await gang.sync(kept_store, kept)  # before any notice: synced as ever
    assert await noticed_store.sync(noticed, final=True)  # the noticed node's last snapshot
    (kept / "state.json").write_text("45")  # the kept node ran on until its restart order
    assert not await gang.sync(kept_store, kept)  # skipped: the gang resumes from step 35
    # at the go it resumes from the final snapshot, its own newer step dropped...
    assert await gang.resume(kept_store, kept)
    assert _step(kept) == "35" and not (kept / ".spotd-final").exists()
    # ...and syncs again from there on (the marker goes with its first sync)
    (kept / "state.json").write_text("50")
    assert await gang.sync(kept_store, kept)
    assert await kept_store.final_from() == 0
    fresh = tmp_path / "fresh"
    assert await kept_store.restore(fresh) and _step(fresh) == "50"


async def test_a_final_snapshot_landing_during_a_kept_nodes_sync_is_not_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race CI once lost: the kept node's periodic sync had looked (no final snapshot yet)
    and was copying its step-25 checkpoint when the noticed node's final step-24 snapshot
    landed; the copy then replaced it, and the gang resumed from two different steps. The
    refusal is decided under the store's lock, after the copy."""
    kept_store, noticed_store = _store(tmp_path)
    kept, noticed = tmp_path / "kept", tmp_path / "noticed"
    for d, step in ((kept, "25"), (noticed, "24")):
        d.mkdir()
        (d / "state.json").write_text(step)
    real_copytree = shutil.copytree

    def copy_then_final_lands(src: Any, dst: Any, *args: Any, **kw: Any) -> Any:
        out = real_copytree(src, dst, *args, **kw)
        if Path(src) == kept:  # the kept node's copy is made: now the notice's final sync
            monkeypatch.setattr(shutil, "copytree", real_copytree)
            CheckpointStore(tmp_path / "store", 1).sync(noticed, final=True)
        return out

    monkeypatch.setattr(shutil, "copytree", copy_then_final_lands)
    assert not await Gang(config()).sync(kept_store, kept)
    fresh = tmp_path / "fresh"
    assert await noticed_store.restore(fresh) and _step(fresh) == "24"
    assert await noticed_store.final_from() == 1


async def test_resume_keeps_the_directory_when_the_store_has_nothing(tmp_path: Path) -> None:
    store, _ = _store(tmp_path)
    mine = tmp_path / "ckpt"
    mine.mkdir()
    (mine / "state.json").write_text("7")
    assert not await Gang(config()).resume(store, mine)
    assert _step(mine) == "7"


async def test_a_single_node_job_syncs_without_asking_for_a_final_snapshot(tmp_path: Path) -> None:
    store, other = _store(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "state.json").write_text("1")
    await other.sync(src, final=True)
    solo = Gang(dataclasses.replace(config(), num_nodes=1))
    assert await solo.sync(store, src)
