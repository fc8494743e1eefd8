"""The agent's side of restarting a multi-node job's run on every node together.

When the daemon replaced a lost node (``spotd.control.node_replace``) it answers heartbeats
with a ``restart`` order: the attempt's newest *generation* (how many times its nodes were
replaced), the node count and the nodes' addresses, and ``go`` once every node is ready.
An agent behind that generation adopts it at once: its run (if one is going) is stopped
(SIGTERM, the grace period, SIGKILL — the job checkpoints on SIGTERM), the checkpoint is
synced, and before it runs again it waits for ``go``. A replacement starts at its generation
(``SPOTD_GENERATION`` in its config) and waits for ``go`` after its setup. So every node
starts the run again at about the same moment, with ``SPOTD_NODE_IPS``, ``SPOTD_NUM_NODES``
and ``SPOTD_GENERATION`` saying who is there — what a torchrun-style rendezvous needs.

Example: 4 nodes, node 2 lost. Nodes 0, 1 and 3 are at generation 0 and get ``{generation 1,
go: false}``: each stops its run and reports ``waiting``. Node 2's replacement boots at
generation 1, runs setup and reports ``waiting``. The next heartbeat of each is answered
``go: true``; all four run again with ``SPOTD_GENERATION=1``.

The first run is a go too: a gang's agents run setup, report ``waiting`` at generation 0 and
start together once every node waits and the provider's listing shows every node's address
(``SPOTD_NODE_IPS`` from the first run on; an order without addresses keeps the launch's list,
where the provider reports none — the local one, Slurm, which fills it from its node list).

Every node resumes from one snapshot: after the ``go``, and before it runs again, each node
swaps its checkpoint directory for what the checkpoint store holds (``resume``) — the
replacement may have restored at boot before the others' last syncs landed, and a survivor's
own directory may be ahead of them. When the node was replaced after an interruption notice,
the store holds the noticed node's *final* snapshot (the daemon's ``go`` waits for it), and
until this node has resumed from it, its own syncs are skipped (``sync``): a survivor still
running out the seconds before its restart order must not overwrite the snapshot the gang
resumes from (nor wipe the marker a relaunched attempt waits for).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotd.agent.checkpoints import AsyncCheckpointStore
from spotd.types import AgentConfig

__all__ = ["GENERATION_ENV", "Gang", "RestartOrder", "parse_order"]

GENERATION_ENV = "SPOTD_GENERATION"  # the daemon's name too (spotd.control.node_replace)


@dataclass(frozen=True, slots=True)
class RestartOrder:
    generation: int
    num_nodes: int
    node_ips: str  # one address per line, by rank
    go: bool  # every node is ready: run


def parse_order(data: Any) -> RestartOrder | None:
    """The ``restart`` of a heartbeat's answer; None when absent or malformed."""
    if not isinstance(data, dict):
        return None
    try:
        return RestartOrder(
            generation=int(data["generation"]),
            num_nodes=int(data["num_nodes"]),
            node_ips=str(data["node_ips"]),
            go=bool(data["go"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


class Gang:
    """Which generation this node is at, whether its run must stop, whether it may run."""

    def __init__(self, cfg: AgentConfig) -> None:
        raw = cfg.envs.get(GENERATION_ENV, "0")
        self.generation = int(raw) if raw.isdigit() else 0
        self.gang = cfg.num_nodes > 1
        # the generation whose run last started: a gang's node waits for the go of its own,
        # the first run (generation 0) included, so that every node's address is known
        self.ran = -1 if self.gang else self.generation
        self.order: RestartOrder | None = None
        self.changed = asyncio.Event()  # a newer generation arrived: the run going must stop
        self.go = asyncio.Event()  # the newest generation may run
        self.attempt = cfg.attempt
        self.absorbed = False  # this node resumed from the final snapshot now in the store

    def on_order(self, order: RestartOrder) -> bool:
        """Take an order from the daemon; True when it moved this node to a newer generation."""
        newer = order.generation > self.generation
        if newer:
            self.generation = order.generation
            self.go.clear()
            self.changed.set()
        if order.generation == self.generation:
            self.order = order
            if order.go:
                self.go.set()
        return newer

    def must_wait(self) -> bool:
        """Whether the next run waits for ``go`` (its generation has not run yet)."""
        return self.ran < self.generation

    def started(self) -> None:
        self.ran = self.generation
        self.changed.clear()

    def apply(self, cfg: AgentConfig) -> AgentConfig:
        """``cfg`` with the newest order's node list: what the next run's environment says."""
        order = self.order
        envs = dict(cfg.envs) | {GENERATION_ENV: str(self.generation)}
        if order is None:
            return dataclasses.replace(cfg, envs=envs)
        if order.node_ips:  # empty: the provider reports no addresses; keep the launch's
            envs["SPOTD_NODE_IPS"] = order.node_ips
        return dataclasses.replace(cfg, envs=envs, num_nodes=order.num_nodes)

    async def sync(self, ckpt: AsyncCheckpointStore, directory: Path) -> bool:
        """A periodic (non-final) sync, unless the store holds a noticed node's final snapshot
        of this attempt that this node has not resumed from; True: synced."""
        synced = await ckpt.sync(directory, unless_final=self.gang and not self.absorbed)
        if synced:
            self.absorbed = False  # the final marker is gone: a later one is news
        return synced

    async def resume(self, ckpt: AsyncCheckpointStore, directory: Path) -> bool:
        """Replace ``directory`` by the store's snapshot (kept when the store has none)."""
        absorbed = await ckpt.final_from() == self.attempt
        fresh = directory.with_name(directory.name + ".resume")
        await asyncio.to_thread(shutil.rmtree, fresh, True)
        if not await ckpt.restore(fresh):
            await asyncio.to_thread(shutil.rmtree, fresh, True)
            return False
        await asyncio.to_thread(_swap, fresh, directory)
        self.absorbed = absorbed
        return True


def _swap(fresh: Path, directory: Path) -> None:
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.chmod(fresh, directory.stat().st_mode & 0o7777)
        os.rename(directory, old)
    os.rename(fresh, directory)
    shutil.rmtree(old, ignore_errors=True)
