"""Slurm: an instance is a batch job running the agent; partitions are regions.

How the provider maps spotd onto Slurm
--------------------------------------

* **Regions and zones.** Every configured partition is a region with one zone of the same
  name (``infra: slurm/debug``). Slurm sells no capacity by the hour, so the catalog is
  generated from the configuration, not from a snapshot: each partition declares the shape one
  instance gets (``cpus``, ``memory_gb``, optional ``gpus``/``gpu``) and a notional ``price``
  (default 0.0, useful to rank partitions against each other and against clouds). A partition
  is sold *on-demand* unless it is configured ``preemptible: true``, which sells it as *spot*
  only (the usual "scavenger" partition whose jobs a higher-priority partition may preempt).

* **Instances.** One attempt is one Slurm batch job::

      sbatch --parsable --job-name spotd-<key> --comment '<tags as JSON>' --no-requeue \\
             --partition P --nodes N ... --wrap "python -m spotd.providers.slurm node DIR"

  ``DIR`` (under ``state_dir``, which must be on storage shared with the compute nodes; on one
  machine the daemon's home) holds one ``n<rank>/agent.json`` per node. The wrapper picks the
  node's file from ``SLURM_NODEID``, fills ``SPOTD_NODE_IPS`` from ``SLURM_JOB_NODELIST``, and
  execs the unmodified agent (``python -m spotd.agent DIR/n<rank>``). With ``N > 1`` the
  controller still calls ``launch`` once per node: each call writes its node's config, the
  calls wait for each other (bounded), and one ``sbatch --nodes N`` running ``srun`` (one agent
  per node) is submitted for them all. The job name for one node is ``spotd-<key>``; for a
  gang it is ``spotd-<attempt>`` (the key without ``-n<rank>``). The instance id is the Slurm
  job id (``<jobid>:<rank>`` for a gang node).

* **Idempotency.** Before submitting, ``launch`` looks the job up by name *and* by the owning
  daemon's home tag in the comment (two daemons may both have a ``j1-a1-n0``), so a retried
  launch — after a timeout that may have submitted, or after a daemon restart — returns the
  existing job instead of a second one. ``--no-requeue`` stops Slurm from rerunning a job
  behind spotd's back after a node failure: spotd does the recovery, elsewhere if it can.

* **Observation.** One ``squeue --json --states=all`` per tick for every partition (finished
  jobs stay listed for ``MinJobAge``), falling back to a ``squeue --format`` listing when the
  installed Slurm has no ``--json``. Jobs are ours if their comment parses as spotd tags.
  ``PREEMPTED``, ``NODE_FAIL``, ``BOOT_FAIL``, ``SUSPENDED`` and any requeue (a requeue state,
  or a restart count above zero) are reported as ``PREEMPTED`` with the Slurm state as the
  reason; ``COMPLETED``, ``FAILED``, ``CANCELLED``, ``TIMEOUT`` and the like as ``TERMINATED``.
  Slurm gives no advance notice a provider could see (``GraceTime`` signals the job itself), so
  no instance is ever reported in ``NOTICE``.

* **Failures.** Every command runs through ``asyncio.create_subprocess_exec`` with a timeout.
  sbatch's words are classified here, once, into the provider error types: an invalid
  partition, QOS, account, gres or node configuration → ``InvalidRequest``; ``QOSMax*``,
  ``AssocMax*``, ``*Grp*`` limits and accounting-policy violations → ``QuotaExceeded``; a
  controller that cannot be reached (or a command that times out or is missing) →
  ``ProviderUnavailable``. A queued job is not a stock-out: a job that never starts is caught
  by the agent's boot timeout (no heartbeat) and relaunched elsewhere.

Configuration (``providers: {slurm: {...}}``, or ``SPOTD_PROVIDERS_JSON``)::

    slurm:
      partitions:                 # required: partition -> instance shape
        debug: {cpus: 2, memory_gb: 1, price: 0.0}
        scavenger: {cpus: 8, memory_gb: 32, gpus: 1, gpu: A100, price: 0.5, preemptible: true}
      state_dir: /shared/spotd/slurm   # default: $SPOTD_HOME/slurm (same machine only)
      python: /opt/spotd/bin/python    # the agent's interpreter on the nodes (default: ours)
      daemon_url: http://head:8470     # where agents report (default: the daemon's socket)
      slurm_conf: /etc/slurm/slurm.conf   # exported as SLURM_CONF to every command
      command_timeout: 30              # seconds per sbatch/squeue/scancel call
      sbatch_args: ["--account=ml"]    # appended to every sbatch

Per partition also: ``instance_type`` (default ``<partition>-<cpus>cpu``), ``qos``,
``time_limit`` (sbatch ``--time``), ``sbatch_args``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotd.providers.base import (
    TAG_HOME,
    TAG_KEY,
    TAG_NODE,
    InstanceSpec,
    InvalidRequest,
    ObservedInstance,
    ProviderError,
    ProviderUnavailable,
    QuotaExceeded,
)
from spotd.types import CatalogEntry, InstanceId, InstanceState, Market

PROVIDER_NAME = "slurm"
JOB_PREFIX = "spotd-"
COMMENT_VERSION = 1
GANG_WAIT_SECONDS = 30.0  # how long one node's launch waits for the other nodes' configs

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


class SlurmConfigError(ValueError):
    """The ``slurm`` provider configuration is unusable; the message names the key."""


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


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition as a region: the shape one instance gets, and what it costs."""

    name: str
    instance_type: str
    cpus: float
    memory_gb: float
    gpus: float = 0
    gpu: str | None = None
    price: float = 0.0
    preemptible: bool = False
    qos: str | None = None
    time_limit: str | None = None
    sbatch_args: tuple[str, ...] = ()

    def catalog_entry(self) -> CatalogEntry:
        return CatalogEntry(
            provider=PROVIDER_NAME,
            region=self.name,
            zone=self.name,
            instance_type=self.instance_type,
            vcpus=self.cpus,
            memory_gb=self.memory_gb,
            accelerator=self.gpu if self.gpus else None,
            accelerator_count=self.gpus,
            # CatalogEntry always carries an on-demand price; a preemptible partition refuses
            # on-demand launches (see SlurmProvider.launch), so this number is never paid
            ondemand_price=self.price,
            spot_price=self.price if self.preemptible else None,
        )


_PARTITION_KEYS = {
    "cpus", "memory_gb", "gpus", "gpu", "price", "preemptible", "instance_type", "qos",
    "time_limit", "sbatch_args",
}
_TOP_KEYS = {
    "partitions", "state_dir", "python", "daemon_url", "slurm_conf", "command_timeout",
    "sbatch_args",
}


def _number(value: Any, where: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise SlurmConfigError(f"slurm: {where}: expected a non-negative number, got {value!r}")
    if positive and value == 0:
        raise SlurmConfigError(f"slurm: {where}: expected a positive number, got {value!r}")
    return float(value)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SlurmConfigError(f"slurm: {where}: expected a list of strings, got {value!r}")
    return tuple(value)


def parse_partitions(raw: Any) -> list[Partition]:
    """The ``partitions`` mapping of the provider config, validated."""
    if not isinstance(raw, Mapping) or not raw:
        raise SlurmConfigError(
            "slurm: partitions: expected a non-empty mapping of partition name to its shape, "
            'e.g. {"debug": {"cpus": 2, "memory_gb": 1}}'
        )
    out = []
    for name, body in raw.items():
        where = f"partitions.{name}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise SlurmConfigError(f"slurm: {where}: not a usable partition name")
        if not isinstance(body, Mapping):
            raise SlurmConfigError(f"slurm: {where}: expected a mapping, got {body!r}")
        unknown = sorted(set(body) - _PARTITION_KEYS)
        if unknown:
            raise SlurmConfigError(
                f"slurm: {where}: unknown key {unknown[0]!r} "
                f"(expected one of: {', '.join(sorted(_PARTITION_KEYS))})"
            )
        for key in ("cpus", "memory_gb"):
            if key not in body:
                raise SlurmConfigError(f"slurm: {where}: missing required key {key!r}")
        cpus = _number(body["cpus"], f"{where}.cpus", positive=True)
        gpus = _number(body.get("gpus", 0), f"{where}.gpus")
        gpu = body.get("gpu")
        if gpus and not isinstance(gpu, str):
            raise SlurmConfigError(f"slurm: {where}: gpus is set, so gpu (the model) is required")
        out.append(
            Partition(
                name=name,
                instance_type=str(body.get("instance_type") or f"{name}-{cpus:g}cpu"),
                cpus=cpus,
                memory_gb=_number(body["memory_gb"], f"{where}.memory_gb", positive=True),
                gpus=gpus,
                gpu=gpu if gpus else None,
                price=_number(body.get("price", 0.0), f"{where}.price"),
                preemptible=bool(body.get("preemptible", False)),
                qos=body.get("qos"),
                time_limit=body.get("time_limit"),
                sbatch_args=_strings(body.get("sbatch_args", []), f"{where}.sbatch_args"),
            )
        )
    return out


# -- what the job's comment carries ---------------------------------------------------------


def encode_comment(tags: Mapping[str, str], keys: Sequence[str]) -> str:
    """The tags shared by every node, and each node's key in rank order, as compact JSON."""
    common = {k: v for k, v in tags.items() if k not in (TAG_NODE, TAG_KEY)}
    return json.dumps({"spotd": COMMENT_VERSION, "tags": common, "keys": list(keys)},
                      separators=(",", ":"), sort_keys=True)


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
        raise ProviderUnavailable(f"squeue --json printed something that is not JSON: {exc}") from exc
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


def _job_name(spec: InstanceSpec) -> tuple[str, str]:
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


def _node_keys(spec: InstanceSpec, prefix: str) -> list[str]:
    n = spec.agent.num_nodes
    return [spec.key] if n <= 1 else [f"{prefix}-n{r}" for r in range(n)]


class SlurmProvider:
    """Batch jobs via sbatch/squeue/scancel on the cluster that ``slurm_conf`` names."""

    name = PROVIDER_NAME

    def __init__(
        self,
        *,
        root: Path,
        partitions: Sequence[Partition],
        python: str = sys.executable,
        daemon_url: str | None = None,
        slurm_conf: str | None = None,
        command_timeout: float = 30.0,
        sbatch_args: Sequence[str] = (),
    ) -> None:
        self._root = root
        self._partitions = {p.name: p for p in partitions}
        self._catalog = [p.catalog_entry() for p in partitions]
        self._python = python
        # read by the controller: where agents on the nodes report (None: the daemon's socket)
        self.daemon_url = daemon_url
        self._timeout = command_timeout
        self._sbatch_args = tuple(sbatch_args)
        self._env = _command_env(slurm_conf)
        self._json: bool | None = None  # does this squeue speak --json? (learned on first use)
        self._submit_lock = asyncio.Lock()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, default_root: Path) -> SlurmProvider:
        unknown = sorted(set(cfg) - _TOP_KEYS)
        if unknown:
            raise SlurmConfigError(
                f"slurm: unknown key {unknown[0]!r} (expected one of: {', '.join(sorted(_TOP_KEYS))})"
            )
        timeout = _number(cfg.get("command_timeout", 30.0), "command_timeout", positive=True)
        return cls(
            root=Path(cfg.get("state_dir") or default_root).expanduser(),
            partitions=parse_partitions(cfg.get("partitions")),
            python=str(cfg.get("python") or sys.executable),
            daemon_url=cfg.get("daemon_url") or None,
            slurm_conf=cfg.get("slurm_conf") or None,
            command_timeout=timeout,
            sbatch_args=_strings(cfg.get("sbatch_args", []), "sbatch_args"),
        )

    # -- running the commands -------------------------------------------------------------

    async def _run(self, *argv: str) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of one Slurm command, bounded by the timeout."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
            )
        except FileNotFoundError as exc:
            raise ProviderUnavailable(f"{argv[0]} is not installed here (not on PATH)") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self._timeout)
        except TimeoutError as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5.0)
            raise ProviderUnavailable(
                f"{argv[0]} did not answer within {self._timeout:g}s (slurmctld unreachable?)"
            ) from exc
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def _squeue(self, *extra: str) -> list[SlurmJob]:
        if self._json is not False:
            rc, out, err = await self._run("squeue", "--json", "--states=all", *extra)
            if rc == 0 or out.lstrip().startswith("{"):
                self._json = True
                return parse_squeue_json(out)
            if re.search(r"unrecognized option|invalid option|unknown option", err):
                self._json = False  # an old Slurm: use the format listing from now on
            else:
                raise classify_error("squeue", err)
        rc, out, err = await self._run(
            "squeue", "--noheader", "--states=all", f"--format={SQUEUE_FORMAT}", *extra
        )
        if rc != 0:
            raise classify_error("squeue", err)
        return parse_squeue_format(out)

    # -- the provider interface -----------------------------------------------------------

    def catalog(self) -> Sequence[CatalogEntry]:
        return self._catalog

    async def launch(self, spec: InstanceSpec) -> InstanceId:
        part = self._partitions.get(spec.region)
        if part is None or spec.zone != part.name or spec.instance_type != part.instance_type:
            raise InvalidRequest(
                f"{spec.instance_type} is not offered in {spec.region}/{spec.zone} "
                f"(partitions: {', '.join(sorted(self._partitions))})"
            )
        if part.preemptible and spec.market != Market.SPOT:
            raise InvalidRequest(f"partition {part.name} is preemptible: it sells spot only")
        name, prefix = _job_name(spec)
        n = max(1, spec.agent.num_nodes)
        home = spec.tags.get(TAG_HOME, "")
        job_dir = self._job_dir(home, name)
        node_dir = job_dir / f"n{spec.agent.node_rank}"
        await asyncio.to_thread(self._write_node_config, node_dir, spec)
        if n > 1:
            await self._wait_for_gang(job_dir, n)
        async with self._submit_lock:  # one lookup-then-submit at a time: no twin jobs
            job_id = await self._existing(name, home)
            if job_id is None:
                job_id = await self._submit(spec, part, name, prefix, job_dir, n)
            await asyncio.to_thread(self._index, job_id, job_dir)
        return InstanceId(job_id if n == 1 else f"{job_id}:{spec.agent.node_rank}")

    def _job_dir(self, home: str, name: str) -> Path:
        # per owning daemon: a state_dir shared by several daemons never mixes their files
        return self._root / (home or "untagged") / name

    def _index(self, job_id: str, job_dir: Path) -> None:
        """by-id/<job id> -> the job's directory, so terminate can remove it."""
        link = self._root / "by-id" / job_id
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            tmp = link.with_name(f".{job_id}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(job_dir)
            os.replace(tmp, link)

    def _write_node_config(self, node_dir: Path, spec: InstanceSpec) -> None:
        node_dir.mkdir(parents=True, exist_ok=True)
        agent = dataclasses.replace(spec.agent, instance_dir=str(node_dir))
        tmp = node_dir / "agent.json.tmp"
        tmp.write_text(json.dumps(dataclasses.asdict(agent)))
        os.replace(tmp, node_dir / "agent.json")

    async def _wait_for_gang(self, job_dir: Path, n: int) -> None:
        """Until every node of the attempt has written its config (they launch concurrently)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GANG_WAIT_SECONDS
        while not all((job_dir / f"n{r}" / "agent.json").exists() for r in range(n)):
            if loop.time() > deadline:
                missing = [r for r in range(n) if not (job_dir / f"n{r}" / "agent.json").exists()]
                raise ProviderUnavailable(
                    f"{job_dir.name}: nodes {missing} never asked to launch within "
                    f"{GANG_WAIT_SECONDS:g}s; not submitting a partial {n}-node job"
                )
            await asyncio.sleep(0.05)

    async def _existing(self, name: str, home: str) -> str | None:
        """The id of our job with this name, live or finished, if Slurm still knows it.

        A job that ended without ever being given a node does not count: sbatch records a job
        it then rejects (``BadConstraints``), and that job must not stand for a launch that
        never happened. A job that ran and finished does count: submitting again would run the
        node twice.
        """
        for job in await self._squeue(f"--name={name}"):
            decoded = decode_comment(job.comment)
            if job.name != name or decoded is None or decoded[0].get(TAG_HOME) != home:
                continue
            if instance_state(job)[0] == InstanceState.TERMINATED and not job.nodes:
                continue
            return job.job_id
        return None

    async def _submit(
        self, spec: InstanceSpec, part: Partition, name: str, prefix: str, job_dir: Path, n: int
    ) -> str:
        entry = f"{self._python} -m spotd.providers.slurm node {job_dir}"
        wrap = (
            f"exec {entry}" if n == 1
            else f"exec srun --nodes={n} --ntasks={n} --ntasks-per-node=1 --kill-on-bad-exit=0 "
            f"{entry}"
        )
        argv = [
            "sbatch", "--parsable",
            f"--job-name={name}",
            f"--comment={encode_comment(spec.tags, _node_keys(spec, prefix))}",
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
        argv += [*self._sbatch_args, *part.sbatch_args, f"--wrap={wrap}"]
        rc, out, err = await self._run(*argv)
        if rc != 0:
            raise classify_error("sbatch", err)
        job_id = out.strip().split(";")[0]  # "--parsable" prints "id" or "id;cluster"
        if not job_id.isdigit():
            raise ProviderUnavailable(f"sbatch printed no job id: {out.strip()!r} {err.strip()}")
        return job_id

    async def list_instances(self) -> Sequence[ObservedInstance]:
        out: list[ObservedInstance] = []
        for job in await self._squeue():
            if not job.name.startswith(JOB_PREFIX):
                continue
            decoded = decode_comment(job.comment)
            if decoded is None:
                continue
            tags, keys = decoded
            state, reason = instance_state(job)
            if state not in (InstanceState.PENDING, InstanceState.RUNNING) and not (
                self._job_dir(tags.get(TAG_HOME, ""), job.name).exists()
            ):
                # ended, and we terminated it already (its directory is gone): squeue keeps
                # finished jobs for MinJobAge, but there is nothing left to observe or reap
                continue
            for rank, key in enumerate(keys):
                out.append(
                    ObservedInstance(
                        id=InstanceId(job.job_id if len(keys) == 1 else f"{job.job_id}:{rank}"),
                        key=key,
                        region=job.partition,
                        zone=job.partition,
                        state=state,
                        tags={**tags, TAG_NODE: str(rank), TAG_KEY: key},
                        reason=reason,
                    )
                )
        return out

    async def terminate(self, instance_id: InstanceId) -> None:
        job_id = str(instance_id).split(":")[0]
        if not job_id.isdigit():
            return  # never ours
        rc, _, err = await self._run("scancel", job_id)
        if rc != 0 and not re.search(r"invalid job id|already completing|job has already finished",
                                     err, re.IGNORECASE):
            raise classify_error("scancel", err)
        await asyncio.to_thread(self._forget, job_id)

    def _forget(self, job_id: str) -> None:
        """Remove the job's directory (the instance's "disk") once Slurm has been told."""
        link = self._root / "by-id" / job_id
        if link.is_symlink():
            shutil.rmtree(os.readlink(link), ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                link.unlink()

    async def close(self) -> None:
        return None


def _command_env(slurm_conf: str | None) -> dict[str, str]:
    """The environment of every Slurm command, hence of the jobs (sbatch exports it)."""
    from spotd.ops.sdnotify import scrub_env

    env: dict[str, str] = dict(scrub_env(os.environ))  # a job must not think it is systemd
    if slurm_conf:
        env["SLURM_CONF"] = slurm_conf
    return env


# -- inside the job: the per-node entry point --------------------------------------------------


def _hostnames(nodelist: str) -> list[str]:
    """Expand a Slurm node list ("gpu[01-03],cpu7"), with scontrol when it is there."""
    if not nodelist:
        return []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        res = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True, text=True, timeout=30, check=True,
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
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cfg))
        os.replace(tmp, path)
    return node_dir


def main(argv: Sequence[str]) -> None:
    if len(argv) != 2 or argv[0] != "node":
        print("usage: python -m spotd.providers.slurm node JOB_DIR", file=sys.stderr)
        raise SystemExit(2)
    node_dir = node_entry(Path(argv[1]), os.environ)
    os.execv(sys.executable, [sys.executable, "-m", "spotd.agent", str(node_dir)])


if __name__ == "__main__":
    main(sys.argv[1:])
