"""The job's environment, built from an allowlist: never the agent's (or the daemon's) whole.

An agent started on the daemon's machine used to hand its job ``dict(os.environ)``, and the
agent had the daemon's: a job launched with a project token printed the daemon's admin token
(``SPOTD_API_TOKEN``), its cloud credentials and anything else the operator had exported. A
job now sees exactly:

* a small base taken from the machine (``BASE_NAMES``, ``BASE_PREFIXES``): where programs
  are (``PATH``, a sane default when absent), who and where the user is, locale, terminal,
  time zone, temporary directory; and what the machine says about its accelerators (the GPUs a
  scheduler or device plugin gave this node, the driver's libraries), without which a GPU job
  on a shared node would see the wrong devices or none; on Slurm, the ``SLURM_*`` description
  of the allocation, less ``SLURM_JWT`` (an authentication token);
* the task's ``envs``, then its ``secrets`` (what the user asked for);
* spotd's own names for the job (``SPOTD_*`` and SkyPilot's ``SKYPILOT_*``), which win.

Whatever else the machine's environment holds — ``SPOTD_*`` of the daemon, ``AWS_*``, tokens
of any kind — the job does not get; a task that needs one names it in ``envs`` or
``secrets``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from spotd.types import AgentConfig

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

BASE_NAMES = frozenset(
    {
        # where programs are, who and where the user is
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "TMPDIR",
        # locale, terminal, time
        "LANG",
        "LANGUAGE",
        "LC_ALL",
        "TERM",
        "TZ",
        # the accelerators this node was given, and the driver's libraries
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
        "NVIDIA_DRIVER_CAPABILITIES",
        "ROCR_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "LD_LIBRARY_PATH",
    }
)
BASE_PREFIXES = ("LC_", "SLURM_")
NEVER = frozenset({"SLURM_JWT"})  # matched by a prefix above, and a credential


def base_allowed(name: str) -> bool:
    """Whether the machine's variable ``name`` is part of every job's base environment."""
    if name in NEVER:
        return False
    return name in BASE_NAMES or name.startswith(BASE_PREFIXES)


def job_environment(
    *,
    task_envs: Mapping[str, str],
    secrets: Mapping[str, str],
    spotd_vars: Mapping[str, str],
    base_env: Mapping[str, str],
) -> dict[str, str]:
    """The job's environment: the allowed base of ``base_env``, then the task's envs, its
    secrets, and spotd's variables, each layer over the one before."""
    env = {k: v for k, v in base_env.items() if base_allowed(k)}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(task_envs)
    env.update(secrets)
    env.update(spotd_vars)
    return env


def spotd_variables(cfg: AgentConfig, checkpoint_dir: Path) -> dict[str, str]:
    """``SPOTD_*`` and ``SKYPILOT_*`` for one node of one attempt (no SkyPilot attempt name)."""
    values = {
        "JOB_ID": str(cfg.job_id),
        "TASK_ID": cfg.task_id,
        "ATTEMPT": str(cfg.attempt),
        "NODE_RANK": str(cfg.node_rank),
        "NUM_NODES": str(cfg.num_nodes),
        "NODE_IPS": cfg.envs.get("SPOTD_NODE_IPS", "127.0.0.1"),
        "NUM_GPUS_PER_NODE": f"{cfg.num_gpus_per_node:g}",
    }
    out: dict[str, str] = {}
    for k, v in values.items():
        out[f"SPOTD_{k}"] = v
        if k != "ATTEMPT":
            out[f"SKYPILOT_{k}"] = v
    out["SPOTD_CHECKPOINT_DIR"] = str(checkpoint_dir)
    return out


def build_env(
    cfg: AgentConfig, checkpoint_dir: Path, base_env: Mapping[str, str]
) -> dict[str, str]:
    """The environment of ``cfg``'s job on a machine whose environment is ``base_env``."""
    secret = set(cfg.secret_names)
    return job_environment(
        task_envs={k: v for k, v in cfg.envs.items() if k not in secret},
        secrets={k: v for k, v in cfg.envs.items() if k in secret},
        spotd_vars=spotd_variables(cfg, checkpoint_dir),
        base_env=base_env,
    )
