"""Every file that holds a secret or a token is 0600 in a 0700 directory, on every backend.

The attack, as a user found it: under ``$SPOTD_HOME/local/instances/*/`` the agent's
``agent.json`` (the task's secrets and the agent's bearer token) and the job's log were 0644
in 0755 directories, so any user of the daemon's machine could read every project's secrets;
the Slurm agent file was written with the default umask on storage shared with the cluster.

Modes keep other *users* out (the tests may run as root: they assert modes, not permission
errors); processes of the daemon's own user are a separate item (a user per project).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spotd.agent.checkpoints import CheckpointStore
from spotd.files.private import open_private_append, private_dir, write_private
from spotd.files.workdir import BlobStore
from spotd.providers.aws.userdata import render_user_data
from spotd.providers.base import TAG_HOME, TAG_KEY, InstanceSpec
from spotd.providers.slurm import SlurmProvider, node_entry, parse_partitions
from spotd.types import AgentConfig, Market
from tests.conftest import DaemonProc
from tests.e2e.helpers import wait_log

SECRET = "hf-sentinel-secret-4417"


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The worst umask a daemon may be started with: files are private because spotd says
    so, not because the umask happened to be kind."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _agent(tmp_path: Path, rank: int = 0, nodes: int = 1) -> AgentConfig:
    return AgentConfig(
        instance_key=f"j1-a1-n{rank}",
        attempt_id="j1-a1",
        job_id=1,
        task_id="t1",
        attempt=1,
        node_rank=rank,
        num_nodes=nodes,
        setup=None,
        run="true",
        envs={"HF_TOKEN": SECRET},
        secret_names=("HF_TOKEN",),
        token="agent-token-5150",
        checkpoint_store=str(tmp_path / "ckpt"),
    )


# -- the writers, each under a umask of 0 -----------------------------------------------------


def _slurm_agent_file(tmp_path: Path) -> Path:
    p = SlurmProvider(
        root=tmp_path / "state",
        partitions=parse_partitions({"debug": {"cpus": 1, "memory_gb": 0.25}}),
    )
    spec = InstanceSpec(
        key="j1-a1-n0",
        region="debug",
        zone="debug",
        instance_type="debug-1cpu",
        market=Market.ON_DEMAND,
        tags={TAG_HOME: "h", TAG_KEY: "j1-a1-n0"},
        agent=_agent(tmp_path),
    )
    node_dir = tmp_path / "state" / "h" / "spotd-j1-a1-n0" / "n0"
    p._write_node_config(node_dir, spec)
    return node_dir / "agent.json"


def _slurm_node_rewrite(tmp_path: Path) -> Path:
    """On the node, the wrapper rewrites agent.json with the nodes' addresses."""
    job_dir = tmp_path / "job"
    private_dir(job_dir / "n1")
    cfg = dataclasses.asdict(_agent(tmp_path, rank=1, nodes=2))
    write_private(job_dir / "n1" / "agent.json", json.dumps(cfg))
    node_entry(job_dir, {"SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "localhost,127.0.0.1"})
    assert (
        "127.0.0.1"
        in json.loads((job_dir / "n1" / "agent.json").read_text())["envs"]["SPOTD_NODE_IPS"]
    )
    return job_dir / "n1" / "agent.json"


def _write_private(tmp_path: Path) -> Path:
    d = private_dir(tmp_path / "a" / "b")
    write_private(d / "secret.json", SECRET)
    return d / "secret.json"


def _private_log(tmp_path: Path) -> Path:
    d = private_dir(tmp_path / "inst")
    with open_private_append(d / "job.log") as f:
        f.write(SECRET.encode())
    return d / "job.log"


WRITERS: dict[str, Callable[[Path], Path]] = {
    "slurm agent file": _slurm_agent_file,
    "slurm node wrapper": _slurm_node_rewrite,
    "write_private": _write_private,
    "a log": _private_log,
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_secret_file_is_0600_in_0700_directories(
    writer: str, tmp_path: Path, loose_umask: None
) -> None:
    path = WRITERS[writer](tmp_path)
    assert mode(path) == 0o600
    d = path.parent
    while d != tmp_path:  # every directory spotd created for it
        assert mode(d) == 0o700, d
        d = d.parent
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_the_file_is_never_wider_than_0600_not_even_before_the_rename(
    tmp_path: Path, loose_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The content exists only in a file created 0600: the mode is not fixed afterwards."""
    seen: list[int] = []
    replace = os.replace

    def spy(src: str | Path, dst: str | Path) -> None:
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_private(tmp_path / "agent.json", SECRET)
    assert seen == [0o600]


@pytest.mark.parametrize("before", [None, 0o755, 0o777, 0o700])
def test_a_private_directory_is_narrowed_whatever_an_older_spotd_left(
    before: int | None, tmp_path: Path, loose_umask: None
) -> None:
    home = tmp_path / "home"  # the admin's: left as it is
    home.mkdir()
    os.chmod(home, 0o755)
    d = home / "local" / "instances"
    if before is not None:
        d.mkdir(parents=True)
        os.chmod(d, before)
    private_dir(d)
    assert mode(d) == 0o700
    assert mode(home / "local") == (0o700 if before is None else 0o777)  # created, or not
    assert mode(home) == 0o755


def test_a_log_left_wider_by_an_older_spotd_is_narrowed(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_text("old\n")
    os.chmod(log, 0o644)
    with open_private_append(log) as f:
        f.write(b"new\n")
    assert mode(log) == 0o600 and log.read_text() == "old\nnew\n"


def test_packages_and_checkpoint_snapshots_are_private(tmp_path: Path, loose_umask: None) -> None:
    store = BlobStore(tmp_path / "cas")
    assert {mode(tmp_path / "cas" / d) for d in ("", "blobs", "tmp")} == {0o700}
    store.put_bytes(SECRET.encode())
    ckpt = tmp_path / "instance" / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "state.txt").write_text(SECRET)
    snapshots = CheckpointStore(tmp_path / "checkpoints" / "t1", attempt=1)
    assert snapshots.sync(ckpt)
    assert mode(tmp_path / "checkpoints" / "t1") == 0o700
    # the next attempt's checkpoint directory, restored from the snapshot
    restored = tmp_path / "next-instance" / "checkpoint"
    assert CheckpointStore(tmp_path / "checkpoints" / "t1", attempt=2).restore(restored)
    assert mode(restored) == mode(restored.parent) == 0o700


def test_ec2_user_data_writes_the_agent_file_under_a_private_umask(tmp_path: Path) -> None:
    agent = dataclasses.replace(_agent(tmp_path), instance_dir="/var/lib/spotd/j1-a1-n0")
    lines = render_user_data(agent, install="spotd").splitlines()
    write = next(
        i for i, line in enumerate(lines) if "> /var/lib/spotd/j1-a1-n0/agent.json" in line
    )
    assert lines[write - 1].startswith("umask 077")
    assert "chmod 700 /var/lib/spotd/j1-a1-n0" in lines


# -- end to end: a real daemon, a job with a secret, the tree walked while it runs -------------


def _others_can_read(path: Path, top: Path) -> bool:
    """Whether a user other than the owner (its group, or anyone) can read ``path``: the file
    is group/other readable and every directory from ``top`` down lets them through."""
    for bits_r, bits_x in ((stat.S_IRGRP, stat.S_IXGRP), (stat.S_IROTH, stat.S_IXOTH)):
        if not path.lstat().st_mode & bits_r:
            continue
        d, through = path.parent, True
        while True:
            if not d.lstat().st_mode & bits_x:
                through = False
                break
            if d == top:
                break
            d = d.parent
        if through:
            return True
    return False


JOB = """
name: holds-a-secret
resources: {cpus: 1+}
secrets: {HF_TOKEN: null}
run: |
  echo "token is $HF_TOKEN"
  echo "$HF_TOKEN" > "$SPOTD_CHECKPOINT_DIR/state.txt"
  echo WROTE
  sleep 60
"""


async def test_the_daemons_instance_files_are_private_while_a_job_runs(
    daemon: DaemonProc,
) -> None:
    home: Path = daemon.home
    async with daemon.client() as c:
        job = await c.launch(JOB, filename="s.yaml", env={"HF_TOKEN": SECRET})
        await wait_log(c, job["id"], "WROTE")
        await asyncio.sleep(1.0)  # a checkpoint sync (every 0.2 s here) has taken the file up
        local = home / "local"
        [inst] = [d for d in (local / "instances").iterdir() if d.is_dir()]
        token = json.loads((inst / "agent.json").read_text())["token"]
        assert token
        # the directories spotd made, and the files it writes there
        for d in (local, local / "instances", inst):
            assert mode(d) == 0o700, d
        # the agent's: the job's working directory and the checkpoint it saves into
        for d in (inst / "work", inst / "checkpoint"):
            assert mode(d) == 0o700, d
        for name in ("agent.json", "meta.json", "state.json", "job.log", "agent.out"):
            assert mode(inst / name) == 0o600, name
        # every file that holds the secret or the token, anywhere an instance writes
        holding = []
        for top in (local, home / "checkpoints"):
            for p in top.rglob("*"):
                if p.is_file() and not p.is_symlink():
                    text = p.read_bytes()
                    if SECRET.encode() in text or token.encode() in text:
                        holding.append(p)
                        assert not _others_can_read(p, home), f"{p} ({oct(mode(p))})"
        names = {p.name for p in holding}
        assert {"agent.json", "job.log", "state.txt"} <= names, holding
        await c.cancel(job["id"])
