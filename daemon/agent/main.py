"""The agent: runs one node of one attempt on an instance and reports to the daemon.

``python -m spotd.agent INSTANCE_DIR`` reads ``agent.json`` (an ``AgentConfig``; on an instance
whose user-data carried only a bootstrap token, it first fetches it: ``spotd.agent.bootstrap``)
and:

1. restores the checkpoint directory from the checkpoint store, copies the workdir;
2. runs ``setup`` then ``run`` with bash, in their own process group, output appended to
   ``job.log`` (0600), with an environment built from an allowlist (``spotd.agent.environment``:
   the task's envs and secrets, spotd's names and a small base, never the agent's whole);
3. heartbeats to the daemon every ``heartbeat_seconds`` with its phase, exit code, notice and the
   next slice of ``job.log`` (the daemon acknowledges the byte offset it has stored, so a
   reconnecting agent resends exactly what was missed and nothing twice);
4. watches for a preemption notice (the provider's metadata URL — EC2's with IMDSv2 session
   tokens, ``spotd.agent.imds`` — or a local notice file): on one it reports at once, sends
   SIGTERM to the job, SIGKILL after the grace period, and syncs the checkpoint;
5. syncs the checkpoint directory up periodically and when the job ends;
6. keeps running while the daemon is away, and exits only once the daemon has acknowledged the
   final state, so a result is never lost to a daemon restart.

A daemon reached over https whose certificate does not verify (``spotd.agent.transport``) is
not "away": the agent stops the job and exits with ``UNTRUSTED_EXIT``, sending it nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from spotd.agent.bootstrap import BOOTSTRAP_REFUSED_EXIT, BootstrapRefused, bootstrap_if_needed
from spotd.agent.checkpoints import CheckpointStore, open_checkpoint_store
from spotd.agent.environment import build_env
from spotd.agent.gang import Gang, parse_order
from spotd.agent.groups import group_gone, signal_group
from spotd.agent.imds import Imds
from spotd.agent.pool import is_pool_worker, serve_pool
from spotd.agent.storage import AgentStorage, prepare_storage
from spotd.agent.syncing import Syncer
from spotd.agent.transport import UNTRUSTED_EXIT, DaemonUntrusted, daemon_session, untrusted
from spotd.aiokit import sleep
from spotd.files import mounts
from spotd.files.private import (
    forbid_inspection,
    open_private_append,
    private_dir,
    write_private_json,
)
from spotd.files.storage import STORAGE_REF
from spotd.files.workdir import CAS_PREFIX, BlobStore, materialize
from spotd.telemetry.gpu import GpuReader
from spotd.types import AgentConfig

__all__ = ["Agent", "CheckpointStore", "amain", "build_env", "main", "open_checkpoint_store"]

LOG_CHUNK = 256 * 1024


class Agent:
    def __init__(self, cfg: AgentConfig, root: Path) -> None:
        self.cfg = cfg
        self.root = root
        self.work = root / "work"
        self.checkpoint = root / "checkpoint"
        self.log_path = root / "job.log"
        self.state_path = root / "state.json"
        self.phase = "starting"
        self.exit_code: int | None = None
        self.notice_deadline: float | None = None
        self.acked_offset = 0
        self.acked_phase = ""
        self.wake = asyncio.Event()
        self.stop = asyncio.Event()
        self.notice = asyncio.Event()
        self.job: asyncio.subprocess.Process | None = None
        # the run's process group, kept after its shell exits: at SIGTERM the shell of a `run`
        # of several commands (a pipe into tee, `cd x && python train.py`) dies at once while
        # the trainer it started is still saving its checkpoint
        self.group: int | None = None
        self.ckpt = open_checkpoint_store(cfg)
        self.storage = AgentStorage()  # the task's storage objects (spotd.agent.storage)
        self.gang = Gang(cfg)  # the run restarts with the others when a node is replaced
        self.syncer = Syncer(self.ckpt, self.checkpoint, self.gang, say=self._log)
        self._said_no_bash = False
        self.gpus = GpuReader()  # no GPU (or no NVML) reads as an empty list, never an error
        ec2 = bool(cfg.notice_url) and not cfg.notice_url.startswith("gce+")
        self.imds = Imds(cfg.notice_url, say=self._log) if ec2 else None
        saved = self._load_state()
        if saved:  # an agent restarted on the same instance resumes its bookkeeping
            self.acked_offset = saved.get("acked_offset", 0)

    def _load_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_path.read_text())
            return data if isinstance(data, dict) else None
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _save_state(self) -> None:
        write_private_json(
            self.state_path,
            {
                "phase": self.phase,
                "exit_code": self.exit_code,
                "notice_deadline": self.notice_deadline,
                "acked_offset": self.acked_offset,
            },
        )

    def _set_phase(self, phase: str, exit_code: int | None = None) -> None:
        self.phase = phase
        self.exit_code = exit_code
        self._save_state()
        self.wake.set()

    def _log(self, line: str) -> None:
        with open_private_append(self.log_path) as f:  # the job's output may print a secret
            f.write(f"[spotd-agent] {line}\n".encode())

    # -- the job ---------------------------------------------------------------------------

    def _shell(self) -> str:
        """bash, as SkyPilot runs ``setup`` and ``run``; ``/bin/sh`` in an image without it
        (a task's own ``image_id`` needs only that), said once in the job's log."""
        found = shutil.which("bash")
        if found is None and not self._said_no_bash:
            self._log("no bash in this image: setup and run go to /bin/sh")
            self._said_no_bash = True
        return found or "/bin/sh"

    async def _run_script(self, script: str, env: dict[str, str]) -> int:
        # the child's stdout: a local file opened for append, which does not block
        with open_private_append(self.log_path) as out:
            self.job = await asyncio.create_subprocess_exec(
                self._shell(),
                "-c",
                script,
                cwd=self.work,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        group = self.group = self.job.pid  # start_new_session: the group is the shell's pid
        rc = await self.job.wait()
        self.job = None
        if self.group == group and await group_gone(group, 0.0):
            self.group = None  # its number may be another group's later: never signalled
        return rc

    async def _end_group(self, grace: float) -> None:
        """SIGTERM the run's whole process group and wait, up to ``grace``, until none of it
        is left (not only its shell); SIGKILL what is left then. Return once it is gone (or
        2 s after the SIGKILL: a zombie no one reaps is not the job)."""
        group = self.group
        if group is None:
            return
        signal_group(group, signal.SIGTERM)
        if not await group_gone(group, grace):
            signal_group(group, signal.SIGKILL)
            await group_gone(group, 2.0)
        self.group = None

    def _stage_files(self) -> None:
        """Workdir and file_mounts, from the daemon's package store (never the user's disk)."""
        fresh = not any(self.work.iterdir())
        if self.cfg.blob_store.startswith("s3://"):
            return  # packages in S3: _stage_s3
        store = BlobStore(Path(self.cfg.blob_store)) if self.cfg.blob_store else None
        wd = self.cfg.workdir
        if wd and fresh:
            if wd.startswith(CAS_PREFIX) and store is not None:
                n = materialize(wd, store, self.work)
                self._log(f"workdir: {n} bytes from package {wd[len(CAS_PREFIX) :][:12]}")
            elif Path(wd).is_dir():
                shutil.copytree(wd, self.work, dirs_exist_ok=True)
        for remote, ref in self.cfg.file_mounts.items():
            if store is None:
                break
            if ref.startswith(("s3://", STORAGE_REF)):
                continue  # a bucket source (_stage_s3) or a storage object (agent.storage)
            target = Path(remote).expanduser()
            if not target.is_absolute():
                target = self.work / target
            n = materialize(ref, store, target)
            self._log(f"file_mounts: {remote} ({n} bytes)")

    def _mount_target(self, remote: str) -> Path:
        target = Path(remote).expanduser()
        return target if target.is_absolute() else self.work / target

    async def _stage_s3(self, fresh: bool) -> None:
        """Bucket sources, and packages when the daemon put them in S3 (spotd.files.mounts)."""
        bucket_sources = {r: u for r, u in self.cfg.file_mounts.items() if u.startswith("s3://")}
        in_s3 = self.cfg.blob_store.startswith("s3://")
        if not bucket_sources and not in_s3:
            return
        endpoint = self.cfg.s3_endpoint_url or None
        if in_s3:
            store = mounts.S3PackageStore(self.cfg.blob_store, endpoint_url=endpoint)
            wd = self.cfg.workdir
            if wd and fresh and wd.startswith(CAS_PREFIX):
                n = await store.materialize(wd, self.work)
                self._log(f"workdir: {n} bytes from package {wd[len(CAS_PREFIX) :][:12]} in S3")
            for remote, ref in self.cfg.file_mounts.items():
                if ref.startswith(CAS_PREFIX):
                    n = await store.materialize(ref, self._mount_target(remote))
                    self._log(f"file_mounts: {remote} ({n} bytes from S3)")
        for remote, url in bucket_sources.items():
            files, n = await mounts.download(url, self._mount_target(remote), endpoint_url=endpoint)
            self._log(f"file_mounts: {remote} ({files} objects, {n} bytes from {url})")

    async def _await_predecessor(self) -> None:
        """After a notice the replacement starts at once, while the old attempt is still
        checkpointing: wait (until its deadline at most) for its last snapshot to land."""
        prev, until = self.cfg.await_final_from, self.cfg.await_final_until
        if not prev or time.time() >= until:
            return
        self._log(
            f"waiting for attempt {prev}'s final checkpoint (until {until - time.time():.1f}s)"
        )
        said = ""
        while time.time() < until and not self.stop.is_set():
            try:
                if await self.ckpt.final_from() >= prev:
                    return
            except Exception as exc:  # noqa: BLE001 - S3 not answering yet: not there yet
                if repr(exc) != said:
                    self._log(f"looking for attempt {prev}'s final checkpoint: {exc!r}"[:300])
                said = repr(exc)
            await sleep(0.1, self.stop)

    def _syncing(self) -> bool:
        """Periodic syncs run while the job runs, until a notice (its own sync is final)."""
        return self.phase == "run" and not self.notice.is_set()

    async def run_job(self) -> None:
        private_dir(self.work)  # the job's files (a checkpoint, a key it wrote): its user's only
        fresh = not any(self.work.iterdir())
        try:
            await asyncio.to_thread(self._stage_files)
            await self._stage_s3(fresh)
        except Exception as exc:  # noqa: BLE001 - a missing package, S3 unreachable: no job
            self._log(f"staging workdir/file_mounts failed: {type(exc).__name__}: {exc}")
            self._set_phase("setup_failed", 1)
            return
        await self._await_predecessor()
        try:  # after the predecessor's last flush, before setup
            self.storage = await prepare_storage(
                self.cfg, work=self.work, cache_dir=self.root, say=self._log
            )
        except Exception as exc:  # noqa: BLE001 - a bucket refused, no mounter: no job
            self._log(f"storage objects failed: {type(exc).__name__}: {exc}")
            self._set_phase("setup_failed", 1)
            return
        restored = await self.syncer.restore()
        if restored is None:
            self._set_phase("setup_failed", 1)
            return
        self._log(
            f"attempt {self.cfg.attempt} node {self.cfg.node_rank}/{self.cfg.num_nodes}: "
            f"checkpoint {'restored' if restored else 'empty'}"
        )
        env = build_env(self.cfg, self.checkpoint, os.environ)
        if self.cfg.setup and not self.notice.is_set():
            self._set_phase("setup")
            rc = await self._run_script(self.cfg.setup, env)
            if self.notice.is_set():
                return
            if rc != 0:
                self._log(f"setup exited with {rc}")
                self._set_phase("setup_failed", rc)
                return
        if self.notice.is_set():
            return
        syncer = asyncio.create_task(
            self.syncer.loop(self.cfg.checkpoint_sync_seconds, self._syncing, self.stop),
            name="checkpoint-sync",
        )
        try:
            code = await self._run_together(env)
        finally:
            syncer.cancel()
        if code is None or self.notice.is_set():
            return
        await self._flush_storage()
        await self.syncer.last(final=False, until=time.time() + 10.0)
        self._log(f"run exited with {code}")
        self._set_phase("exited", code)

    async def _run_together(self, env: dict[str, str]) -> int | None:
        """Run ``run``. When the daemon replaced a lost node of the job (``spotd.agent.gang``)
        stop it, wait until every node is ready, and run it again with the new node list.
        None: a notice (or the agent's end) came first."""
        while True:
            if self.gang.must_wait():
                self._set_phase("waiting")
                while not (self.gang.go.is_set() or self.stop.is_set() or self.notice.is_set()):
                    await sleep(1.0, self.gang.go, self.stop, self.notice)
                if not self.gang.go.is_set() or self.notice.is_set():
                    return None
                self.cfg = self.gang.apply(self.cfg)
                env = build_env(self.cfg, self.checkpoint, os.environ)
                if self.gang.generation == 0:  # the first run: restored at boot already
                    self._log(f"every node is up: {self.cfg.num_nodes} nodes, go")
                else:
                    resumed = await self.gang.resume(self.ckpt, self.checkpoint)  # one snapshot
                    self._log(
                        f"generation {self.gang.generation}: {self.cfg.num_nodes} nodes, go"
                        + (" (checkpoint restored from the store)" if resumed else "")
                    )
            self.gang.started()
            self._set_phase("run")
            program = (  # a pool's worker runs the pool's jobs instead (spotd.agent.pool)
                serve_pool(self, env)
                if is_pool_worker(self.cfg)
                else self._run_script(self.cfg.run or "true", env)
            )
            script = asyncio.ensure_future(program)
            changed = asyncio.ensure_future(self.gang.changed.wait())
            try:
                await asyncio.wait({script, changed}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # the agent is leaving: asyncio.wait does not cancel what it waits on, and a
                # run still being started would set self.job after kill_job looked (a leak)
                script.cancel()
                await asyncio.gather(script, return_exceptions=True)
                raise
            finally:
                changed.cancel()
            if not self.gang.changed.is_set() or self.notice.is_set():
                return await script
            self._set_phase("restarting")
            self._log(f"a node was replaced (generation {self.gang.generation}): run stopped")
            await self._stop_run(script)
            await self.syncer.sync()

    async def _stop_run(self, script: asyncio.Future[int]) -> None:
        """SIGTERM the run's process group (the job checkpoints), SIGKILL it after the grace
        period; return once it has exited."""
        for _ in range(500):  # the run's process may still be being started (5 s at most)
            if self.job is not None or script.done():
                break
            await asyncio.sleep(0.01)
        await self._end_group(self.cfg.term_grace_seconds)
        await script

    async def _flush_storage(self) -> None:
        """Before the end is reported: commit what the job left in its MOUNT_CACHED
        directories and unmount its MOUNTs (rclone uploads its write cache first), so that
        what the job wrote is in the buckets once the daemon hears it ended."""
        try:
            if await self.storage.flush():
                self._log("storage: cached directories flushed")
            await self.storage.close()
        except Exception as exc:  # noqa: BLE001 - S3 away: the exit code still matters more
            self._log(f"storage: flushing cached directories failed: {exc}")

    def kill_job(self) -> None:
        """SIGKILL what is left of the job's process group (the agent is leaving), its shell
        gone or not."""
        if self.group is not None:
            signal_group(self.group, signal.SIGKILL)

    async def on_notice(self) -> None:
        """Checkpoint before the machine goes: SIGTERM, grace, SIGKILL, sync. A service
        replica (no job) keeps serving until the daemon drains it, once its replacement is
        READY (``control/draining.py``): it gets SIGTERM only its grace before the deadline."""
        await self.notice.wait()
        self._log(f"preemption notice: instance reclaimed at {self.notice_deadline}")
        self.wake.set()
        if self.cfg.job_id == 0 and self.notice_deadline is not None:
            left = self.notice_deadline - self.cfg.term_grace_seconds - 1.0 - time.time()
            await sleep(left, self.stop)
        remaining = (self.notice_deadline or time.time()) - time.time() - 1.0
        await self._end_group(max(0.5, min(self.cfg.term_grace_seconds, remaining)))
        await self._flush_storage()  # only now: nothing of the job writes any more
        if await self.syncer.last(final=True, until=(self.notice_deadline or time.time()) - 1.0):
            self._log("checkpoint synced after notice")
        else:
            self._log("the checkpoint could not be synced after the notice")
        self._set_phase("preempted", None)

    async def watch_notice(self, session: aiohttp.ClientSession | None) -> None:
        notice_file = self.root / "notice.json"
        while not self.stop.is_set() and not self.notice.is_set():
            deadline = await self._poll_notice(notice_file, session)
            if deadline is not None:
                self.notice_deadline = deadline
                self._save_state()
                self.notice.set()
                return
            await sleep(0.2, self.stop)

    async def _poll_notice(
        self, notice_file: Path, session: aiohttp.ClientSession | None
    ) -> float | None:
        if not self.cfg.notice_url:
            try:
                return float(json.loads(notice_file.read_text())["deadline"])
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                return None
        if session is None:
            return None
        if self.imds is None:
            return await self._poll_gce(session, self.cfg.notice_url[len("gce+") :])
        try:
            status, text = await self.imds.get(session, "/latest/meta-data/spot/instance-action")
            if status != 200:
                return None
            data = json.loads(text)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        try:
            return datetime.fromisoformat(str(data["time"]).replace("Z", "+00:00")).timestamp()
        except (KeyError, ValueError):
            return time.time() + 120.0

    async def _poll_gce(self, session: aiohttp.ClientSession, base: str) -> float | None:
        """GCE: ``instance/preempted`` turns TRUE about 30 s before the VM is stopped."""
        url = base.rstrip("/") + "/computeMetadata/v1/instance/preempted"
        try:
            async with session.get(
                url, headers={"Metadata-Flavor": "Google"}, timeout=aiohttp.ClientTimeout(total=1)
            ) as r:
                if r.status != 200 or (await r.text()).strip().upper() != "TRUE":
                    return None
        except (aiohttp.ClientError, TimeoutError):
            return None
        return time.time() + 30.0

    # -- talking to the daemon -------------------------------------------------------------

    def _partitioned(self) -> bool:
        try:
            until = float(json.loads((self.root / "partition.json").read_text())["until"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return False
        return time.time() < until

    async def report_loop(self, session: aiohttp.ClientSession, base: str) -> None:
        """Heartbeat until the daemon has acknowledged the final state. A daemon away is
        retried for ever; one whose certificate does not verify raises ``DaemonUntrusted``."""
        headers = {"Authorization": f"Bearer {self.cfg.token}"}
        while not self.stop.is_set():
            self.wake.clear()
            if not self._partitioned():
                try:
                    await self._report_once(session, base, headers)
                except aiohttp.ClientConnectorCertificateError as exc:
                    raise untrusted(self.cfg, exc) from exc
                except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
                    pass  # the daemon is away (restarting, partitioned): the next beat retries
            if self.phase in ("exited", "setup_failed", "preempted") and self._all_acked():
                self.stop.set()
                return
            await sleep(self.cfg.heartbeat_seconds, self.wake, self.stop)

    def _all_acked(self) -> bool:
        size = self.log_path.stat().st_size if self.log_path.exists() else 0
        return self.acked_phase == self.phase and self.acked_offset >= size

    def _unacked_log(self) -> bytes:
        """Up to LOG_CHUNK bytes of the log past what the daemon acknowledged."""
        if not self.log_path.exists():
            return b""
        with open(self.log_path, "rb") as f:
            f.seek(self.acked_offset)
            return f.read(LOG_CHUNK)

    async def _report_once(
        self, session: aiohttp.ClientSession, base: str, headers: dict[str, str]
    ) -> None:
        chunk = await asyncio.to_thread(self._unacked_log)
        phase = self.phase
        body = {
            "key": self.cfg.instance_key,
            "phase": phase,
            "exit_code": self.exit_code,
            "notice_deadline": self.notice_deadline,
            "log_offset": self.acked_offset,
            "log_b64": base64.b64encode(chunk).decode(),
            "checkpoint_synced_at": self.syncer.last_sync,
            "checkpoint_progress": self.syncer.progress,
            "gpus": [g.to_json() for g in await self.gpus.read_async()],
            "generation": self.gang.generation,
        }
        async with session.post(
            f"{base}/agent/v1/heartbeat",
            json=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=5),
        ) as r:
            if r.status != 200:
                return
            data = await r.json()
        self.acked_offset = int(data.get("log_offset", self.acked_offset))
        self.acked_phase = phase
        self._save_state()
        order = parse_order(data.get("restart"))
        if order is not None:
            self.gang.on_order(order)
        if len(chunk) == LOG_CHUNK:
            self.wake.set()  # more log to send: go again at once


async def amain(root: Path) -> int:
    # its environment may hold cloud credentials for the task's storage and its job runs as
    # its user: /proc/<agent>/environ must not be the job's to read
    forbid_inspection()
    # the instance's directory holds the agent's config (its token, the task's secrets), the
    # job's log and its files: the provider made it private; narrow it here too, for a
    # machine that did not (an emptyDir a container may not be allowed to chmod: tolerated)
    with contextlib.suppress(OSError):
        private_dir(root)

    def say(line: str) -> None:
        with open_private_append(root / "job.log") as f:
            f.write(f"[spotd-agent] {line}\n".encode())

    try:
        await bootstrap_if_needed(root, say=say)
    except (BootstrapRefused, DaemonUntrusted) as exc:
        say(str(exc))
        print(f"spotd-agent: {exc}", file=sys.stderr, flush=True)
        return BOOTSTRAP_REFUSED_EXIT if isinstance(exc, BootstrapRefused) else UNTRUSTED_EXIT
    raw = json.loads((root / "agent.json").read_text())
    raw["secret_names"] = tuple(raw.get("secret_names") or ())
    cfg = AgentConfig(**raw)
    agent = Agent(cfg, root)
    try:
        return await _serve(agent)
    except DaemonUntrusted as exc:
        agent._log(str(exc))
        print(f"spotd-agent: {exc}", file=sys.stderr, flush=True)
        return UNTRUSTED_EXIT


async def _serve(agent: Agent) -> int:
    """Run the job, watch for notices and report, until the daemon has the final state."""
    session, base = daemon_session(agent.cfg)
    # the metadata service is link-local plain HTTP: never the daemon's session, or its CA
    async with session, aiohttp.ClientSession() as metadata:
        reporter = asyncio.create_task(agent.report_loop(session, base), name="report")
        watcher = asyncio.create_task(agent.watch_notice(metadata), name="notice")
        noticer = asyncio.create_task(agent.on_notice(), name="on-notice")
        job = asyncio.create_task(agent.run_job(), name="job")
        try:
            await asyncio.wait({job, noticer, reporter}, return_when=asyncio.FIRST_COMPLETED)
            if reporter.done():
                reporter.result()  # ended before the job: an untrusted daemon, raised here
            for task in (job, noticer):
                if task.done() and not task.cancelled() and task.exception() is not None:
                    # the agent cannot go on (a bug, a store that failed past its retries):
                    # said in the job's log, and the agent leaves, its job killed below; the
                    # daemon finds the instance gone or silent and recovers the job, where
                    # reporting on would show a phase that is over for ever
                    agent._log(f"the agent failed: {task.exception()!r}"[:600])
                    task.result()
            if agent.notice.is_set():
                await noticer
            job.cancel()
            watcher.cancel()
            await reporter  # returns once the daemon acknowledged the final state
        finally:
            tasks = (job, watcher, noticer, reporter)
            for task in tasks:
                task.cancel()
            agent.kill_job()
            await asyncio.gather(*tasks, return_exceptions=True)
            agent.kill_job()  # a run that was being started while the tasks were cancelled
            await agent.storage.close()
    return 0


def main() -> None:
    if len(sys.argv) != 2:
        print("usage: python -m spotd.agent INSTANCE_DIR", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(asyncio.run(amain(Path(sys.argv[1]))))


if __name__ == "__main__":
    main()
