"""The embedded default provider: an instance is a process group on this machine.

Each instance is a directory ``$SPOTD_HOME/local/instances/<id>/`` holding ``meta.json`` (who
it is, its pid and the pid's start time, so a recycled pid is never mistaken for it), the
agent's ``agent.json``, and the agent's own files; it is 0700 and what is written there 0600
(the agent's token and the task's secrets are in ``agent.json``). The agent is started in a
new session, so it and the job it runs form one process group that outlives the daemon, with
an environment from an allowlist, never the daemon's. The directory is the instance's "disk":
it is removed when the instance is terminated.

Tenancy (``spotd.providers.local_tenancy``, the admin's ``providers.local`` section): a
project not in ``projects`` is refused; with ``run_as_project_users`` each project's agent and
job run as ``spotd-p-<project>`` (``setpriv``), the instance directory is that user's (0700),
and so is the project's checkpoint directory ``local/checkpoints/<user>/``. What the daemon
trusts about an instance (``meta.json`` with the pid it kills, ``ended.json``) then lives in
``local/state/<id>/``, root's, never in a directory the job could write; the directories a
project user must pass through (``local/``, ``instances/``, ``checkpoints/``) are 0711:
traversable, not listable.

Regions, zones and prices come from the same catalog format as the clouds, so placement and
failover run for real on one machine. The provider also carries the test controls that chaos
and the tests share (``preempt``, ``kill``, ``stockout``, ``partition``): they act the way a
cloud would — a notice the agent can see, then the machine disappears — and leave their
evidence in files, so they survive a daemon restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pwd
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spotd.files.private import open_private_append, private_dir, write_private_json
from spotd.files.storage import uses_storage
from spotd.pricing.live import price_walk
from spotd.providers.base import (
    TAG_PROJECT,
    CapacityUnavailable,
    InstanceSpec,
    InvalidRequest,
    ObservedInstance,
)
from spotd.providers.capabilities import SpotQuotes
from spotd.providers.childenv import agent_environment, uses_s3
from spotd.providers.local_tenancy import (
    DEFAULT_PROJECT,
    LocalTenancy,
    TenancyError,
    as_user,
    ensure_user,
    local_refusal,
    project_user,
)
from spotd.types import CatalogEntry, InstanceId, InstanceState, Market

PROVIDER_NAME = "local"
TRAVERSE_DIR = 0o711  # a project user may pass through, not list


def _proc_start_ticks(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks, state letter) of a live pid, None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    rest = raw[raw.rindex(")") + 2 :].split()
    return int(rest[19]), rest[0]


def _alive(pid: int, start_ticks: int) -> bool:
    info = _proc_start_ticks(pid)
    return info is not None and info[0] == start_ticks and info[1] not in ("Z", "X")


def _child_groups(pid: int) -> set[int]:
    """Process groups of ``pid``'s children that are not ``pid``'s own group: the agent runs
    setup/run in a session of their own, which would otherwise outlive the "machine"."""
    groups: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        rest = raw[raw.rindex(")") + 2 :].split()
        if int(rest[1]) == pid and int(rest[2]) != pid:
            groups.add(int(rest[2]))
    return groups


def _kill_group(pgid: int, sig: int) -> None:
    """Kill the agent's process group and its job's: everything on the instance goes.

    The agent goes first: were the job killed first, the agent could see its run exit with
    -9 and report a user failure in the instant before its own death. The job's groups are
    found before (once the agent is dead they are reparented and no longer its children)."""
    children = _child_groups(pgid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for group in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)


def _kill_live(meta: dict[str, Any]) -> None:
    """SIGKILL the instance's groups only if its agent is still the process we started: a
    dead agent's pid may have been reused (by a restarted daemon, say), and killing that
    process group would take an innocent bystander down."""
    if _alive(meta["pid"], meta["start_ticks"]):
        _kill_group(meta["pid"], signal.SIGKILL)


def _kill_orphans(d: Path) -> None:
    """SIGKILL every process group working inside ``d``: what a launch interrupted between
    starting the agent and recording its pid (a daemon SIGKILLed there) left behind."""
    inside = str(d)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd").removesuffix(" (deleted)")
        except OSError:
            continue
        if cwd == inside or cwd.startswith(inside + "/"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(int(proc.name)), signal.SIGKILL)


def _stockout_key(region: str, market: Market) -> str:
    """The key of a one-market stockout in ``stockouts.json``; a region's bare name is the key
    of a stockout of both markets (the file's original format, still read as such)."""
    return f"{region}:{market}"


def _write_owned_json(path: Path, data: Any, owner: pwd.struct_passwd) -> None:
    """``data`` as ``path``, 0600 and ``owner``'s from birth: chowned through the descriptor
    before it is renamed into place, so a job that owns the directory cannot swap in a link
    and have root chown something else."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        os.fchown(fd, owner.pw_uid, owner.pw_gid)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _blob_store_for_project_user(agent: Any) -> str:
    """The package store an agent running as a project user may be handed: the daemon's own
    (``$SPOTD_HOME/cas``, 0700) it cannot read, so a task that stages files from it is refused
    (an S3 store, or no staged files at all, is fine)."""
    store = str(agent.blob_store)
    if not store or store.startswith("s3://"):
        return store
    refs = (agent.workdir or "", *agent.file_mounts.values())
    if any(r.startswith("cas:") for r in refs):
        raise InvalidRequest(
            "a workdir or file mounts from the daemon's package store cannot run on the local "
            "provider with run_as_project_users yet (its users cannot read $SPOTD_HOME/cas); "
            "use an S3 package store or no workdir"
        )
    return ""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class LocalProvider:
    """Process groups grouped into configured regions and zones.

    Capabilities: ``Chaos`` (``preempt``, ``kill``, ``partition``, ``stockout``),
    ``AdvanceNotices`` (a chaos notice is listed as NOTICE until its deadline) and
    ``SpotPriceFeed`` (a seeded walk around the catalog's spot prices,
    ``spotd.pricing.live.price_walk``). Not an ``AgentEndpoint``: its agents use the daemon's
    unix socket and read notices from files.
    """

    name = PROVIDER_NAME
    notice_source = "a chaos notice (notice.json in the instance's directory)"

    def __init__(
        self,
        root: Path,
        catalog: Sequence[CatalogEntry],
        *,
        python: str = sys.executable,
        clock: Any = time.time,
        tenancy: LocalTenancy | None = None,
        price_seed: int = 0,
    ) -> None:
        self._root = root
        self._price_seed = price_seed
        self._instances = root / "instances"
        self._tenancy = tenancy or LocalTenancy()
        # every instance's directory holds its agent's token and its task's secrets: 0700
        # all the way down from here, narrowed if an older spotd made them wider; with a user
        # per project, the way down is 0711 and each instance's directory is its user's 0700
        private_dir(root)
        private_dir(self._instances)
        if self._tenancy.run_as_project_users:
            private_dir(self._root / "state")
            private_dir(self._root / "checkpoints")
            for d in (root, self._instances, self._root / "checkpoints"):
                os.chmod(d, TRAVERSE_DIR)
        self._catalog = [e for e in catalog if e.provider == PROVIDER_NAME]
        self._python = self._tenancy.python or python
        self._clock = clock
        self._children: dict[str, asyncio.subprocess.Process] = {}

    # -- the provider interface -------------------------------------------------------------

    def catalog(self) -> Sequence[CatalogEntry]:
        return self._catalog

    def _dir(self, instance_id: str) -> Path:
        return self._instances / instance_id

    def _state(self, d: Path) -> Path:
        """Where the daemon's own records of instance ``d`` are: in it, or (with a user per
        project, whose jobs own ``d``) in a directory of root's beside it."""
        return self._root / "state" / d.name if self._tenancy.run_as_project_users else d

    def _owner(self, project: str) -> pwd.struct_passwd | None:
        """The user a project's processes run as; None: the daemon's own."""
        if not self._tenancy.run_as_project_users:
            return None
        return ensure_user(project_user(project))

    async def spot_quotes(self, types_by_region: Mapping[str, set[str]]) -> SpotQuotes:
        """Today's spot price of the asked types: the seeded walk at the clock's step."""
        asked = [e for e in self._catalog if e.instance_type in types_by_region.get(e.region, ())]
        return price_walk(asked, now=self._clock(), seed=self._price_seed)

    async def launch(self, spec: InstanceSpec) -> InstanceId:
        instance_id = InstanceId(f"local-{spec.key}")
        d = self._dir(instance_id)
        if (self._state(d) / "meta.json").exists():
            return instance_id  # idempotent: this key was launched already
        if not any(
            e.region == spec.region
            and e.zone == spec.zone
            and e.instance_type == spec.instance_type
            for e in self._catalog
        ):
            raise InvalidRequest(
                f"{spec.instance_type} is not offered in {spec.region}/{spec.zone}"
            )
        project = spec.tags.get(TAG_PROJECT, DEFAULT_PROJECT)
        refusal = local_refusal(project, self._tenancy)
        if refusal:
            raise InvalidRequest(refusal)
        stockouts = self._stockouts()
        until = max(
            stockouts.get(spec.region, 0.0),
            stockouts.get(_stockout_key(spec.region, spec.market), 0.0),
        )
        if until > self._clock():
            raise CapacityUnavailable(
                f"no {spec.market} capacity in {spec.region} (stocked out for another "
                f"{until - self._clock():.0f}s)"
            )
        try:
            owner = await asyncio.to_thread(self._owner, project)
        except TenancyError as exc:
            raise InvalidRequest(str(exc)) from exc
        if d.exists():
            _kill_orphans(d)  # an earlier launch of this key died before writing meta.json
            if owner is not None:  # what a job's user left there is not to be trusted
                await asyncio.to_thread(shutil.rmtree, d, True)
        private_dir(d)
        agent = dataclasses.replace(spec.agent, instance_dir=str(d))
        # a storage object may be an S3 bucket: its agent gets the chain too (its job does not)
        env = agent_environment(os.environ, s3=uses_s3(agent) or uses_storage(agent.file_mounts))
        prefix: tuple[str, ...] = ()
        if owner is None:
            write_private_json(d / "agent.json", dataclasses.asdict(agent))
            out = open_private_append(d / "agent.out")  # handed to the child
        else:
            agent = dataclasses.replace(
                agent,
                checkpoint_store=self._checkpoints(agent, owner),
                blob_store=_blob_store_for_project_user(agent),
            )
            _write_owned_json(d / "agent.json", dataclasses.asdict(agent), owner)
            out = open_private_append(d / "agent.out")
            os.fchown(out.fileno(), owner.pw_uid, owner.pw_gid)
            os.chown(d, owner.pw_uid, owner.pw_gid, follow_symlinks=False)
            private_dir(self._state(d))
            env |= {"HOME": str(d), "USER": owner.pw_name, "LOGNAME": owner.pw_name}
            prefix = as_user(owner)
        try:
            proc = await asyncio.create_subprocess_exec(
                *prefix,
                self._python,
                "-m",
                "spotd.agent",
                str(d),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                cwd=d,
                # an allowlist, never the daemon's whole environment (its tokens, its cloud
                # credentials): the agent's job would see them
                env=env,
            )
        finally:
            out.close()
        info = _proc_start_ticks(proc.pid)
        meta = {
            "id": instance_id,
            "key": spec.key,
            "region": spec.region,
            "zone": spec.zone,
            "instance_type": spec.instance_type,
            "market": str(spec.market),
            "tags": dict(spec.tags),
            "pid": proc.pid,
            "start_ticks": info[0] if info else -1,
            "created_at": self._clock(),
        }
        write_private_json(self._state(d) / "meta.json", meta)
        self._children[instance_id] = proc  # keep it so asyncio reaps it when it exits
        return instance_id

    def _checkpoints(self, agent: Any, owner: pwd.struct_passwd) -> str:
        """The job's checkpoint store in its project user's own directory (the daemon's
        ``checkpoints/`` is 0700, and the agent locks beside the store): an S3 store as is."""
        if str(agent.checkpoint_store).startswith("s3://") or not agent.checkpoint_store:
            return str(agent.checkpoint_store)
        mine = self._root / "checkpoints" / owner.pw_name
        if not mine.exists():
            private_dir(mine)
            os.chown(mine, owner.pw_uid, owner.pw_gid, follow_symlinks=False)
        return str(mine / Path(agent.checkpoint_store).name)

    async def list_instances(self) -> Sequence[ObservedInstance]:
        now = self._clock()
        out: list[ObservedInstance] = []
        for d in sorted(self._instances.iterdir()):
            meta = _read_json(self._state(d) / "meta.json")
            if meta is None:
                continue
            notice = _read_json(d / "notice.json")
            ended = _read_json(self._state(d) / "ended.json")
            alive = _alive(meta["pid"], meta["start_ticks"])
            if alive and notice and now >= notice["deadline"]:
                # the provider reclaims the machine when the notice runs out
                self._reclaim(d, meta, "preempted: notice deadline reached")
                alive = False
                ended = _read_json(self._state(d) / "ended.json")
            if alive:
                state = InstanceState.NOTICE if notice else InstanceState.RUNNING
                reason = "spot interruption notice" if notice else ""
            elif ended:
                state = InstanceState(ended["state"])
                reason = ended["reason"]
            else:
                state, reason = InstanceState.TERMINATED, "process group exited"
            out.append(
                ObservedInstance(
                    id=InstanceId(meta["id"]),
                    key=meta["key"],
                    region=meta["region"],
                    zone=meta["zone"],
                    state=state,
                    tags=meta["tags"],
                    reason=reason,
                    notice_deadline=notice["deadline"] if notice else None,
                )
            )
        return out

    async def terminate(self, instance_id: InstanceId) -> None:
        d = self._dir(instance_id)
        meta = _read_json(self._state(d) / "meta.json")
        if meta is None:
            _kill_orphans(d)
            shutil.rmtree(d, ignore_errors=True)
            return
        if _alive(meta["pid"], meta["start_ticks"]):
            _kill_group(meta["pid"], signal.SIGKILL)
        proc = self._children.pop(instance_id, None)
        if proc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 2.0)
        await asyncio.to_thread(shutil.rmtree, d, True)
        if self._state(d) != d:
            await asyncio.to_thread(shutil.rmtree, self._state(d), True)

    async def close(self) -> None:
        self._children.clear()

    # -- test and chaos controls -------------------------------------------------------------

    def _reclaim(self, d: Path, meta: dict[str, Any], reason: str) -> None:
        write_private_json(
            self._state(d) / "ended.json", {"state": str(InstanceState.PREEMPTED), "reason": reason}
        )
        _kill_live(meta)

    def _find(self, instance_id: str) -> tuple[Path, dict[str, Any]]:
        d = self._dir(instance_id)
        meta = _read_json(self._state(d) / "meta.json")
        if meta is None:
            raise KeyError(f"no local instance {instance_id}")
        return d, meta

    def preempt(self, instance_id: str, *, notice_seconds: float | None = None) -> None:
        """Reclaim an instance like a spot market would: with an advance notice, or at once."""
        d, meta = self._find(instance_id)
        if notice_seconds:
            self._tell(d, "notice.json", {"deadline": self._clock() + notice_seconds})
        else:
            self._reclaim(d, meta, "preempted: spot capacity reclaimed without notice")

    def kill(self, instance_id: str) -> None:
        """SIGKILL the whole process group: the machine vanishes with no notice at all."""
        d, meta = self._find(instance_id)
        write_private_json(
            self._state(d) / "ended.json",
            {"state": str(InstanceState.PREEMPTED), "reason": "instance killed (no notice)"},
        )
        _kill_live(meta)

    def partition(self, instance_id: str, *, seconds: float) -> None:
        """Cut the instance off from the daemon: it keeps running but its heartbeats stop."""
        d, _ = self._find(instance_id)
        self._tell(d, "partition.json", {"until": self._clock() + seconds})

    def _tell(self, d: Path, name: str, data: Any) -> None:
        """Write a file the instance's agent reads, as the directory's owner's."""
        st = d.stat()
        if st.st_uid == os.geteuid():
            write_private_json(d / name, data)
        else:
            _write_owned_json(d / name, data, pwd.getpwuid(st.st_uid))

    def stockout(self, region: str, *, seconds: float, market: Market | None = None) -> None:
        """Make launches in ``region`` fail with CapacityUnavailable for ``seconds``: of one
        ``market`` only (a spot crunch, while on-demand still sells), or of both (None).
        ``seconds=0`` ends that stockout now; a stockout of both markets and one of a single
        market are separate, and a launch is refused while either lasts."""
        if not any(e.region == region for e in self._catalog):
            raise KeyError(f"no local region {region}")
        data = self._stockouts()
        data[region if market is None else _stockout_key(region, market)] = self._clock() + seconds
        write_private_json(self._root / "stockouts.json", data)

    def _stockouts(self) -> dict[str, float]:
        data = _read_json(self._root / "stockouts.json")
        return dict(data) if isinstance(data, dict) else {}
