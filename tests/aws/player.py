"""The test plays EC2's machines: moto keeps the instance records, this starts their agents.

moto creates instance *records*; nothing boots and no user-data runs. So for every instance of
the daemon's that moto reports running, the player reads the instance's own user-data over the
EC2 API (``DescribeInstanceAttribute``), decodes what the user-data script would have written
(a job's node: the bootstrap the agent trades for its config; a replica: the agent config),
and starts ``python -m spotd.agent`` on this machine with it — the one
change being the instance directory (``/var/lib/spotd/<key>`` becomes a temporary directory).
When moto reports the instance shutting down or terminated — because the daemon terminated it
or a test staged a spot interruption — the player SIGKILLs the agent's process group: the
machine is gone, with whatever was running on it. The agents reach the daemon over its TCP API
and checkpoint to moto's S3 (``AWS_ENDPOINT_URL``), exactly as on EC2 minus the install step.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import aioboto3

from spotd.providers.aws import agent_from_user_data
from spotd.providers.aws.bootstrap import BOOTSTRAP_FILE
from spotd.providers.base import TAG_ATTEMPT, TAG_HOME, TAG_JOB, TAG_KEY


class InstancePlayer:
    def __init__(
        self,
        *,
        url: str,
        home_tag: str,
        regions: tuple[str, ...],
        root: Path,
        env: dict[str, str],
        rewrite: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.url = url
        self.rewrite = rewrite  # a test's change to what the user-data carried (a forged CA)
        self.home_tag = home_tag
        self.regions = regions
        self.root = root
        self.env = env
        self.agents: dict[str, subprocess.Popen[bytes]] = {}  # instance id -> agent
        self.keys: dict[str, str] = {}  # instance id -> spotd key
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._loop(), name="instance-player")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for iid in list(self.agents):
            self._kill(iid)

    async def _loop(self) -> None:
        session = aioboto3.Session()
        async with contextlib.AsyncExitStack() as stack:
            clients = {
                r: await stack.enter_async_context(
                    session.client("ec2", region_name=r, endpoint_url=self.url)
                )
                for r in self.regions
            }
            while True:
                for region, ec2 in clients.items():
                    await self._tick(ec2, region)
                await asyncio.sleep(0.2)

    async def _tick(self, ec2: Any, region: str) -> None:
        r = await ec2.describe_instances(
            Filters=[{"Name": f"tag:{TAG_HOME}", "Values": [self.home_tag]}]
        )
        for inst in (i for res in r["Reservations"] for i in res["Instances"]):
            iid, state = inst["InstanceId"], inst["State"]["Name"]
            if state == "running" and iid not in self.agents:
                ud = await ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
                tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
                self._boot(iid, base64.b64decode(ud["UserData"]["Value"]).decode(), tags)
                self.keys[iid] = tags[TAG_KEY]
            elif state in ("shutting-down", "terminated", "stopping", "stopped"):
                self._kill(iid)

    def _boot(self, iid: str, user_data: str, tags: dict[str, str]) -> None:
        cfg = agent_from_user_data(user_data)
        # a job's node carries only a bootstrap (the agent fetches its config from the daemon);
        # a test's rewrite still sees which job and attempt the instance belongs to
        boot = "bootstrap_token" in cfg
        if boot:
            cfg = {**cfg, "job_id": int(tags[TAG_JOB]), "attempt_id": tags[TAG_ATTEMPT]}
        d = self.root / cfg["instance_key"]
        d.mkdir(parents=True, exist_ok=True)
        cfg["instance_dir"] = str(d)
        if self.rewrite is not None:
            cfg = self.rewrite(cfg)
        (d / (BOOTSTRAP_FILE if boot else "agent.json")).write_text(json.dumps(cfg))
        out = open(d / "agent.out", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.agents[iid] = subprocess.Popen(
                [sys.executable, "-m", "spotd.agent", str(d)],
                cwd=d,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        finally:
            out.close()

    def _kill(self, iid: str) -> None:
        proc = self.agents.get(iid)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
