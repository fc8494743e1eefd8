"""Slurm's words, read and written without I/O: sbatch's errors → provider error classes, the
job comment that carries spotd's tags, squeue's listings → jobs → instance states, and the
sbatch command line for one attempt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from spotd.providers.base import (
    TAG_KEY,
    TAG_NODE,
    InstanceSpec,
    InvalidRequest,
    ProviderError,
    ProviderUnavailable,
    QuotaExceeded,
)
from spotd.providers.slurm.config import Partition
from spotd.types import InstanceState

JOB_PREFIX = "spotd-"
COMMENT_VERSION = 1

# Slurm job states (base states and the requeue pseudo-states) -> what spotd sees.
_PENDING = frozenset({"PENDING", "CONFIGURING", "RESIZING"})
_RUNNING = frozenset({"RUNNING", "SIGNALING", "STAGE_OUT"})
_PREEMPTED = frozenset(
    {
        "PREEMPTED",  # a higher-priority job took the resources
        "NODE_FAIL",  # the node died under the job (or an admin took it DOWN)
        "BOOT_FAIL",  # the node never came up for the job
        "SUSPENDED",  # preemption by suspension: the job holds nothing and runs nothing
        "STOPPED",
        "REQUEUED",  # requeued: the attempt is over; spotd relaunches, Slurm must not rerun it
        "REQUEUE_HOLD",
        "REQUEUE_FED",
    }
)
# everything else (COMPLETED, COMPLETING, CANCELLED, FAILED, TIMEOUT, OUT_OF_MEMORY, DEADLINE,
# SPECIAL_EXIT, REVOKED, RESV_DEL_HOLD ...) is TERMINATED

# sbatch's words -> the error class a policy branches on. First match wins.
_INVALID = re.compile(
    r"invalid partition|invalid qos|invalid account|invalid generic resource|invalid gres"
    r"|requested node configuration is not available|node count specification invalid"
    r"|memory specification can not be satisfied|invalid feature|requested time limit is invalid"
    r"|invalid job array|invalid user id|more processors requested than permitted",
    re.IGNORECASE,
)
_QUOTA = re.compile(
    r"QOSMax|AssocMax|QOSGrp|AssocGrp|job violates accounting/qos policy"
    r"|qos.*limit|association.*limit|jobs? (?:submit )?limit",
    re.IGNORECASE,
)
_UNAVAILABLE = re.compile(
    r"unable to contact slurm controller|socket timed out|connection refused"
    r"|zero bytes were transmitted|slurm backup controller in standby|communication connection"
    r"|unable to establish connection|slurmctld|connect failure",
    re.IGNORECASE,
)


def classify_error(command: str, stderr: str) -> ProviderError:
    """The provider error for a failed Slurm command, from its stderr."""
    msg = f"{command} failed: {stderr.strip() or 'no output'}"
    kind: type[ProviderError] = ProviderUnavailable  # unknown words: assume a transient fault
    if _UNAVAILABLE.search(stderr):
        kind = ProviderUnavailable
    elif _QUOTA.search(stderr):
        kind = QuotaExceeded
    elif _INVALID.search(stderr):
        kind = InvalidRequest
    return kind(msg)


# -- what the job's comment carries ---------------------------------------------------------


def encode_comment(tags: Mapping[str, str], keys: Sequence[str]) -> str:
    """The tags shared by every node, and each node's key in rank order, as compact JSON."""
    common = {k: v for k, v in tags.items() if k not in (TAG_NODE, TAG_KEY)}
    return json.dumps(
        {"spotd": COMMENT_VERSION, "tags": common, "keys": list(keys)},
        separators=(",", ":"),
        sort_keys=True,
    )


def decode_comment(comment: str) -> tuple[dict[str, str], list[str]] | None:
    """(common tags, keys) from a job comment, None if the job is not one of ours."""
    try:
        data = json.loads(comment)
    except (TypeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("spotd") != COMMENT_VERSION:
        return None
    tags, keys = data.get("tags"), data.get("keys")
    if not isinstance(tags, dict) or not isinstance(keys, list) or not keys:
        return None
    return {str(k): str(v) for k, v in tags.items()}, [str(k) for k in keys]


# -- parsing squeue ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlurmJob:
    """One row of squeue, reduced to what the provider needs."""

    job_id: str
    name: str
    states: tuple[str, ...]  # the base state first, then flags (newer Slurm lists several)
    reason: str
    partition: str
    restarts: int
    comment: str
    nodes: str = ""  # the allocated node list; empty while pending or if it never ran


def parse_squeue_json(text: str) -> list[SlurmJob]:
    """Jobs from ``squeue --json``. Raises ProviderUnavailable on the errors squeue reports.

    Slurm 22.05 gives ``job_state`` as a string; 23.02 and later as a list of a base state and
    flags (``["PENDING", "REQUEUED"]``); both are accepted.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ProviderUnavailable(
            f"squeue --json printed something that is not JSON: {exc}"
        ) from exc
    errors = data.get("errors") or []
    if errors:
        words = "; ".join(
            str(e.get("description") or e.get("error") or e) if isinstance(e, dict) else str(e)
            for e in errors
        )
        raise ProviderUnavailable(f"squeue failed: {words}")
    out = []
    for j in data.get("jobs") or []:
        state = j.get("job_state")
        states = tuple(str(s) for s in state) if isinstance(state, list) else (str(state),)
        restarts = j.get("restart_cnt", 0)
        if isinstance(restarts, dict):  # newer: {"set": true, "number": 1}
            restarts = restarts.get("number", 0)
        out.append(
            SlurmJob(
                job_id=str(j.get("job_id")),
                name=str(j.get("name") or ""),
                states=states or ("UNKNOWN",),
                reason=str(j.get("state_reason") or ""),
                partition=str(j.get("partition") or ""),
                restarts=int(restarts or 0),
                comment=str(j.get("comment") or ""),
                nodes=str(j.get("nodes") or ""),
            )
        )
    return out


# --format for Slurm without --json: the comment (which may hold anything) goes last
SQUEUE_FORMAT = "%i|%j|%T|%r|%P|%N|%k"


def parse_squeue_format(text: str) -> list[SlurmJob]:
    """Jobs from ``squeue --noheader --format SQUEUE_FORMAT`` (no restart count there)."""
    out = []
    for line in text.splitlines():
        parts = line.split("|", 6)
        if len(parts) != 7:
            continue
        job_id, name, state, reason, partition, nodes, comment = parts
        out.append(
            SlurmJob(
                job_id=job_id.strip(),
                name=name,
                states=(state.strip() or "UNKNOWN",),
                reason=reason,
                partition=partition,
                restarts=0,
                comment=comment,
                nodes=nodes.strip(),
            )
        )
    return out


def instance_state(job: SlurmJob) -> tuple[InstanceState, str]:
    """What spotd sees of a Slurm job, and why (the Slurm state is the reason)."""
    base, flags = job.states[0], set(job.states[1:])
    why = base if job.reason in ("", "None") else f"{base} ({job.reason})"
    requeued = flags & _PREEMPTED
    if requeued:
        return InstanceState.PREEMPTED, f"{why}, {'/'.join(sorted(requeued))}"
    if base in _PREEMPTED:
        return InstanceState.PREEMPTED, why
    if job.restarts > 0 and base not in ("COMPLETED", "CANCELLED"):
        return InstanceState.PREEMPTED, f"{why}, requeued {job.restarts}x"
    if base in _PENDING:
        return InstanceState.PENDING, why
    if base in _RUNNING:
        return InstanceState.RUNNING, ""
    return InstanceState.TERMINATED, why


def job_name(spec: InstanceSpec) -> tuple[str, str]:
    """(job name, the attempt's key prefix) for a spec; one job per attempt."""
    n = spec.agent.num_nodes
    if n <= 1:
        return JOB_PREFIX + spec.key, spec.key
    m = re.fullmatch(r"(.+)-n(\d+)", spec.key)
    if m is None or int(m.group(2)) != spec.agent.node_rank:
        raise InvalidRequest(
            f"a {n}-node Slurm job needs keys ending in -n<rank>; got {spec.key!r}"
        )
    return JOB_PREFIX + m.group(1), m.group(1)


def node_keys(spec: InstanceSpec, prefix: str) -> list[str]:
    """Every node's key of the attempt, in rank order (one key for a one-node job)."""
    n = spec.agent.num_nodes
    return [spec.key] if n <= 1 else [f"{prefix}-n{r}" for r in range(n)]


def sbatch_argv(
    spec: InstanceSpec,
    part: Partition,
    *,
    name: str,
    prefix: str,
    job_dir: Path,
    python: str,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The sbatch command for one attempt: a single agent, or ``srun`` starting one per node.

    ``--no-requeue`` stops Slurm from rerunning the job behind spotd's back after a node
    failure; the comment carries the tags (and every node's key) that make the job ours.
    """
    n = max(1, spec.agent.num_nodes)
    entry = f"{python} -m spotd.providers.slurm node {job_dir}"
    wrap = (
        f"exec {entry}"
        if n == 1
        else f"exec srun --nodes={n} --ntasks={n} --ntasks-per-node=1 --kill-on-bad-exit=0 {entry}"
    )
    argv = [
        "sbatch",
        "--parsable",
        f"--job-name={name}",
        f"--comment={encode_comment(spec.tags, node_keys(spec, prefix))}",
        "--no-requeue",
        f"--partition={part.name}",
        f"--nodes={n}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={max(1, int(part.cpus))}",
        f"--mem={max(1, int(part.memory_gb * 1024))}M",
        f"--chdir={job_dir}",
        f"--output={job_dir}/slurm-%j.out",
    ]
    if part.gpus:
        argv.append(f"--gres=gpu:{part.gpu}:{part.gpus:g}")
    if part.qos:
        argv.append(f"--qos={part.qos}")
    if part.time_limit:
        argv.append(f"--time={part.time_limit}")
    return [*argv, *extra_args, *part.sbatch_args, f"--wrap={wrap}"]
