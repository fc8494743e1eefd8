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


def render_user_data(agent: AgentConfig, *, install: str) -> str:
    """The bash script EC2 runs as root on first boot: install spotd, write the agent's config,
    start the agent as a systemd unit (restarted if it crashes; it resumes from its state file;
    not when it exits because the daemon's certificate does not verify: that would not change).

    The agent config (job scripts, envs and the per-instance token) is embedded gzip+base64.
    """
    blob = base64.b64encode(
        gzip.compress(json.dumps(dataclasses.asdict(agent)).encode(), mtime=0)
    ).decode()
    d = shlex.quote(agent.instance_dir)
    script = f"""#!/bin/bash
# spotd agent bootstrap for {agent.instance_key} (EC2 user-data; runs once, as root)
set -euo pipefail
exec >>/var/log/spotd-bootstrap.log 2>&1
mkdir -p {d}
chmod 700 {d}
if ! [ -x /opt/spotd/bin/python ]; then
  command -v python3 >/dev/null || (dnf install -y python3 || apt-get install -y python3-venv)
  python3 -m venv /opt/spotd
  /opt/spotd/bin/pip install --quiet {shlex.quote(install)}
fi
umask 077  # agent.json holds the agent's token and the task's secrets: 0600 from birth
echo {blob} | base64 -d | gunzip > {d}/agent.json
umask 022
chmod 600 {d}/agent.json
systemd-run --unit=spotd-agent-{agent.instance_key} --property=Restart=on-failure \\
  --property=RestartPreventExitStatus={UNTRUSTED_EXIT} \\
  --working-directory={d} /opt/spotd/bin/python -m spotd.agent {d}
"""
    if len(script.encode()) > USER_DATA_LIMIT:
        raise InvalidRequest(
            f"user-data for {agent.instance_key} is {len(script.encode())} bytes, over EC2's "
            f"16 KiB: shorten the task's setup/run/envs"
        )
    return script


def agent_from_user_data(script: str) -> dict[str, Any]:
    """The agent config embedded by ``render_user_data`` (for tests that play the instance)."""
    for line in script.splitlines():
        if line.startswith("echo ") and "| base64 -d | gunzip" in line:
            blob = line.split()[1]
            data: dict[str, Any] = json.loads(gzip.decompress(base64.b64decode(blob)))
            return data
    raise ValueError("no agent config in this user-data")
