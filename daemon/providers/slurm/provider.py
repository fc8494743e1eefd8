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
  machine the daemon's home) holds one ``n<rank>/agent.json`` per node (0600 in directories
  of mode 0700: it holds the agent's token and the task's secrets). The wrapper picks the
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

The pure parts (the comment, squeue parsing, states, the sbatch command) are ``jobs.py``; the
configuration is ``config.py``; what runs inside the job is ``node.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spotd.files.private import private_dir, write_private_json
from spotd.providers.base import (
    TAG_HOME,
    TAG_KEY,
    TAG_NODE,
    InstanceSpec,
    InvalidRequest,
    ObservedInstance,
    ProviderUnavailable,
)
from spotd.providers.childenv import agent_environment, uses_s3
from spotd.providers.slurm.config import PROVIDER_NAME, Partition, parse_config
from spotd.providers.slurm.jobs import (
    JOB_PREFIX,
    SQUEUE_FORMAT,
    SlurmJob,
    classify_error,
    decode_comment,
    instance_state,
    job_name,
    parse_squeue_format,
    parse_squeue_json,
    sbatch_argv,
)
from spotd.types import CatalogEntry, InstanceId, InstanceState, Market

GANG_WAIT_SECONDS = 30.0  # how long one node's launch waits for the other nodes' configs
# the daemon's variables that Slurm's own commands read (cluster, defaults of sbatch's options)
SLURM_COMMAND_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_", "SCANCEL_")


class SlurmProvider:
    """Batch jobs via sbatch/squeue/scancel on the cluster that ``slurm_conf`` names.

    Capability: ``AgentEndpoint`` (agents on the nodes call ``daemon_url``; Slurm's notices
    reach the job as signals, so ``notice_url`` is empty and the listing never says NOTICE).
    """

    name = PROVIDER_NAME
    notice_url = ""  # GraceTime signals the job itself; there is nothing for an agent to poll

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
        self._slurm_conf = slurm_conf
        self._env = command_env(slurm_conf)
        self._json: bool | None = None  # does this squeue speak --json? (learned on first use)
        self._submit_lock = asyncio.Lock()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, default_root: Path) -> SlurmProvider:
        c = parse_config(cfg, default_root=default_root)
        return cls(
            root=c.root,
            partitions=c.partitions,
            python=c.python,
            daemon_url=c.daemon_url,
            slurm_conf=c.slurm_conf,
            command_timeout=c.command_timeout,
            sbatch_args=c.sbatch_args,
        )

    # -- running the commands -------------------------------------------------------------

    async def _run(self, *argv: str, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of one Slurm command, bounded by the timeout."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(env if env is not None else self._env),
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
        name, prefix = job_name(spec)
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
                job_id = await self._submit(spec, part, name=name, prefix=prefix, job_dir=job_dir)
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
        """``agent.json`` (the agent's token, the task's secrets) on the shared storage: 0600,
        from its creation, in the attempt's directory and the node's, both 0700."""
        private_dir(node_dir.parent)
        private_dir(node_dir)
        agent = dataclasses.replace(spec.agent, instance_dir=str(node_dir))
        write_private_json(node_dir / "agent.json", dataclasses.asdict(agent))

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
        self, spec: InstanceSpec, part: Partition, *, name: str, prefix: str, job_dir: Path
    ) -> str:
        argv = sbatch_argv(
            spec,
            part,
            name=name,
            prefix=prefix,
            job_dir=job_dir,
            python=self._python,
            extra_args=self._sbatch_args,
        )
        if uses_s3(spec.agent):  # sbatch exports its environment: this agent needs the chain
            rc, out, err = await self._run(*argv, env=command_env(self._slurm_conf, s3=True))
        else:
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
        if rc != 0 and not re.search(
            r"invalid job id|already completing|job has already finished", err, re.IGNORECASE
        ):
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


def command_env(slurm_conf: str | None, *, s3: bool = False) -> dict[str, str]:
    """The environment of every Slurm command, hence of the agents (sbatch exports it).

    An allowlist of the daemon's (``spotd.providers.childenv``), never all of it: what an
    agent needs, and the variables Slurm's commands read (``SLURM_*``, ``SBATCH_*``, ...),
    with ``s3`` the AWS chain for an agent that reads S3."""
    env = agent_environment(os.environ, s3=s3, prefixes=SLURM_COMMAND_PREFIXES)
    if slurm_conf:
        env["SLURM_CONF"] = slurm_conf
    return env
