"""The environment of the processes a provider starts on the daemon's machine.

An agent started with the daemon's environment handed all of it to its job: the admin API
token, cloud credentials, the database URL with its password. ``agent_environment`` builds an
agent's environment from an allowlist instead (``AGENT_NAMES``, ``AGENT_PREFIXES``): what a
Python program needs to run (``PATH``, ``PYTHONPATH``, ``HOME``, locale, ...), what the
machine says about its accelerators, and the fake NVML that tests and demos name. The AWS
credentials and proxies of the standard chain are added only for an agent that reads S3
(``uses_s3``: an ``s3://`` checkpoint store, package store or file mount); its job still does
not see them (``spotd.agent.environment`` builds the job's environment from its own
allowlist).

Agents, and the jobs they run, must not inherit what systemd hands the daemon's service
(``NOTIFY_SOCKET`` and the watchdog variables): with ``NotifyAccess=main`` their messages are
refused and logged as noise, and a child that is itself systemd-aware would believe it is the
service. The names are systemd's; ``spotd.ops.sdnotify`` speaks the protocol itself, and a test
keeps the two lists equal, so that providers need not depend on ops.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from spotd.types import AgentConfig

SERVICE_ONLY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

AGENT_NAMES = frozenset(
    {
        # to run a program, and a Python one
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "TMPDIR",
        "PYTHONPATH",
        "PYTHONHOME",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        # locale, terminal, time
        "LANG",
        "LANGUAGE",
        "LC_ALL",
        "TERM",
        "TZ",
        # the accelerators of this machine, and the driver's libraries
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
        "NVIDIA_DRIVER_CAPABILITIES",
        "ROCR_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "LD_LIBRARY_PATH",
        # the agent's GPU telemetry reads this fake NVML file instead of the driver (tests, demos)
        "SPOTD_FAKE_NVML",
    }
)
AGENT_PREFIXES = ("LC_",)
# the standard credential chain and its network settings, for an agent that reads S3
S3_NAMES = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy"})
S3_PREFIXES = ("AWS_",)


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` without the service-only variables."""
    return {k: v for k, v in env.items() if k not in SERVICE_ONLY_VARS}


def uses_s3(agent: AgentConfig) -> bool:
    """Whether the agent reads or writes S3 (and so needs the daemon's AWS credentials)."""
    urls = (agent.checkpoint_store, agent.blob_store, *agent.file_mounts.values())
    return any(u.startswith("s3://") for u in urls)


def agent_environment(
    env: Mapping[str, str],
    *,
    s3: bool = False,
    names: Iterable[str] = (),
    prefixes: tuple[str, ...] = (),
) -> dict[str, str]:
    """What of the daemon's ``env`` an agent (or a Slurm command) started here may see:
    ``AGENT_NAMES``/``AGENT_PREFIXES``, the S3 chain with ``s3``, and the caller's own
    ``names`` and ``prefixes`` (Slurm's ``SLURM_*``, say)."""
    allowed = AGENT_NAMES | frozenset(names) | (S3_NAMES if s3 else frozenset())
    starts = AGENT_PREFIXES + prefixes + (S3_PREFIXES if s3 else ())
    return {k: v for k, v in child_env(env).items() if k in allowed or k.startswith(starts)}
