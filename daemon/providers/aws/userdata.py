"""What an EC2 instance is given at launch, built without I/O: the idempotency token, the
agent's config as it runs there, and the user-data script that installs and starts it."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import json
import shlex
from typing import Any

from spotd.providers.aws.bootstrap import BOOTSTRAP_FILE, BOOTSTRAP_REFUSED_EXIT
from spotd.providers.base import TAG_HOME, InstanceSpec, InvalidRequest
from spotd.types import AgentConfig

# the agent's exit status for a daemon it cannot verify (spotd.agent.transport.UNTRUSTED_EXIT;
# providers do not import the agent, so the number is repeated here and a test compares them)
UNTRUSTED_EXIT = 3
AGENT_ROOT = "/var/lib/spotd"  # where user-data puts the agent's files on the instance
USER_DATA_LIMIT = 16 * 1024  # EC2 refuses larger user-data


def client_token(spec: InstanceSpec) -> str:
    """EC2's idempotency token for one node of one attempt of one daemon (at most 64 chars)."""
    raw = f"spotd-{spec.tags.get(TAG_HOME, '')}-{spec.key}"
    if len(raw) <= 64:
        return raw
    return "spotd-" + hashlib.sha256(raw.encode()).hexdigest()[:58]


def agent_for_instance(
    agent: AgentConfig, *, notice_url: str, checkpoint_store: str | None
) -> AgentConfig:
    """The agent's config as it runs on the instance: its own directory, the metadata service,
    and the S3 checkpoint prefix of the task (the daemon's local directory means nothing there)."""
    store = agent.checkpoint_store
    if checkpoint_store:
        store = f"{checkpoint_store}/{agent.task_id}/"
    return dataclasses.replace(
        agent,
        instance_dir=f"{AGENT_ROOT}/{agent.instance_key}",
        notice_url=notice_url,
        checkpoint_store=store,
    )


def _blob(data: dict[str, Any]) -> str:
    return base64.b64encode(gzip.compress(json.dumps(data).encode(), mtime=0)).decode()


def _script(agent: AgentConfig, *, install: str, file: str, blob: str, what: str) -> str:
    """The bash EC2 runs as root on first boot: install spotd, write ``file`` 0600 in the
    instance directory, start the agent.

    Under systemd the agent is a transient unit, restarted if it crashes (it resumes from its
    state file), not when it exits because the daemon's certificate does not verify or the
    daemon refused its bootstrap token (a restart would not change either). Without systemd
    (a container, a minimal image: no ``systemd-run``, or no systemd running) it is started
    once with nohup, its output in ``agent.out``, and not restarted.
    """
    key = agent.instance_key
    d = shlex.quote(agent.instance_dir)
    py = "/opt/spotd/bin/python"
    script = f"""#!/bin/bash
# spotd agent bootstrap for {key} (EC2 user-data; runs once, as root)
set -euo pipefail
exec >>/var/log/spotd-bootstrap.log 2>&1
mkdir -p {d}
chmod 700 {d}
if ! [ -x {py} ]; then
  command -v python3 >/dev/null || (dnf install -y python3 || apt-get install -y python3-venv)
  python3 -m venv /opt/spotd
  /opt/spotd/bin/pip install --quiet {shlex.quote(install)}
fi
umask 077  # {what}: 0600 from birth
echo {blob} | base64 -d | gunzip > {d}/{file}
umask 022
chmod 600 {d}/{file}
if command -v systemd-run >/dev/null && [ -d /run/systemd/system ]; then
  systemd-run --unit=spotd-agent-{shlex.quote(key)} --property=Restart=on-failure \\
    --property=RestartPreventExitStatus={UNTRUSTED_EXIT} \\
    --property=RestartPreventExitStatus={BOOTSTRAP_REFUSED_EXIT} \\
    --working-directory={d} {py} -m spotd.agent {d}
else
  cd {d}
  nohup {py} -m spotd.agent {d} >>{d}/agent.out 2>&1 </dev/null &
fi
"""
    if len(script.encode()) > USER_DATA_LIMIT:
        raise InvalidRequest(
            f"user-data for {key} is {len(script.encode())} bytes, over EC2's "
            f"16 KiB: shorten the task's setup/run/envs"
        )
    return script


def render_user_data(agent: AgentConfig, *, install: str) -> str:
    """User-data that carries the agent's whole config, gzip+base64 (the job's scripts, envs,
    secrets and the per-instance token). Only for agents the daemon holds no config for (a
    service replica): a job's node gets ``render_bootstrap_user_data``."""
    return _script(
        agent,
        install=install,
        file="agent.json",
        blob=_blob(dataclasses.asdict(agent)),
        what="agent.json holds the agent's token and the task's secrets",
    )


def render_bootstrap_user_data(agent: AgentConfig, *, bootstrap_token: str, install: str) -> str:
    """User-data that carries no secret: where the daemon is, its CA, the instance's key and a
    one-time bootstrap token (``spotd.providers.aws.bootstrap``) the agent trades for its
    config over TLS."""
    boot = {
        "daemon_url": agent.daemon_url,
        "daemon_ca_pem": agent.daemon_ca_pem,
        "instance_key": agent.instance_key,
        "bootstrap_token": bootstrap_token,
    }
    return _script(
        agent,
        install=install,
        file=BOOTSTRAP_FILE,
        blob=_blob(boot),
        what="the bootstrap token is good once, but only the agent should use it",
    )


def agent_from_user_data(script: str) -> dict[str, Any]:
    """What the user-data embeds: the agent config of ``render_user_data``, or the bootstrap of
    ``render_bootstrap_user_data`` (it has ``bootstrap_token``): for tests that play the
    instance."""
    for line in script.splitlines():
        if line.startswith("echo ") and "| base64 -d | gunzip" in line:
            blob = line.split()[1]
            data: dict[str, Any] = json.loads(gzip.decompress(base64.b64decode(blob)))
            return data
    raise ValueError("no agent config in this user-data")
