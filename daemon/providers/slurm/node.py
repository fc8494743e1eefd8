"""Inside the job: the per-node entry point ``python -m spotd.providers.slurm node JOB_DIR``.

sbatch (or srun, one task per node) runs it on every node of an attempt. It picks the node's
config from ``SLURM_NODEID``, fills ``SPOTD_NODE_IPS`` from ``SLURM_JOB_NODELIST`` and execs
the unmodified agent, so the job sees the same ``SPOTD_NODE_*`` values it would anywhere else.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from spotd.files.private import write_private_json


def _hostnames(nodelist: str) -> list[str]:
    """Expand a Slurm node list ("gpu[01-03],cpu7"), with scontrol when it is there."""
    if not nodelist:
        return []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        res = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        names = res.stdout.split()
        if names:
            return names
    return expand_nodelist(nodelist)


def expand_nodelist(nodelist: str) -> list[str]:
    """A pure-Python expansion of Slurm's host list syntax (ranges keep their zero padding)."""
    out: list[str] = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]*)\])?", nodelist):
        base, ranges = m.group(1), m.group(2)
        if ranges is None:
            out.append(base)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                out.append(base + lo)
                continue
            for i in range(int(lo), int(hi) + 1):
                out.append(base + str(i).zfill(len(lo)))
    return out


def _address(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def node_entry(job_dir: Path, env: Mapping[str, str]) -> Path:
    """Prepare this node's agent from the ``SLURM_*`` variables; returns its directory.

    ``SLURM_NODEID`` picks the node's config (its rank), and ``SLURM_JOB_NODELIST`` gives
    ``SPOTD_NODE_IPS`` in node order, so the job sees the same ``SPOTD_NODE_*`` (and SkyPilot)
    values it would anywhere else.
    """
    rank = int(env.get("SLURM_NODEID") or env.get("SLURM_PROCID") or 0)
    node_dir = job_dir / f"n{rank}"
    path = node_dir / "agent.json"
    cfg = json.loads(path.read_text())
    hosts = _hostnames(env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "")
    if hosts and len(hosts) == int(cfg.get("num_nodes") or 1):
        envs = dict(cfg.get("envs") or {})
        envs["SPOTD_NODE_IPS"] = "\n".join(_address(h) for h in hosts)
        cfg["envs"] = envs
        write_private_json(path, cfg)  # it holds the agent's token and the task's secrets
    return node_dir


def main(argv: Sequence[str]) -> None:
    """``node JOB_DIR``: prepare this node's agent and become it (exec, same pid)."""
    if len(argv) != 2 or argv[0] != "node":
        print("usage: python -m spotd.providers.slurm node JOB_DIR", file=sys.stderr)
        raise SystemExit(2)
    node_dir = node_entry(Path(argv[1]), os.environ)
    os.execv(sys.executable, [sys.executable, "-m", "spotd.agent", str(node_dir)])
