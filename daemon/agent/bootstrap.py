"""The agent's first start on an instance whose user-data carried no secrets.

User-data wrote ``bootstrap.json`` (the daemon's URL and CA, the instance's key, a one-time
bootstrap token: ``spotd.providers.aws.bootstrap``). Before anything else the agent trades the
token for its config at ``POST /agent/v1/bootstrap`` — over the same verified session as its
heartbeats, so the token goes only to a daemon whose certificate the CA signed — writes it as
``agent.json`` (0600), and removes ``bootstrap.json``. A restarted agent finds ``agent.json``
and never asks again (the daemon would refuse: the token is good once).

A daemon that is away is retried (it may be restarting); one that refuses the token (used,
expired, unknown) ends the agent with ``BOOTSTRAP_REFUSED_EXIT``: asking again cannot help.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from spotd.agent.transport import daemon_session, untrusted
from spotd.files.private import write_private_json
from spotd.types import AgentConfig

__all__ = [
    "BOOTSTRAP_FILE",
    "BOOTSTRAP_PATH",
    "BOOTSTRAP_REFUSED_EXIT",
    "BootstrapRefused",
    "bootstrap_if_needed",
]

# The daemon's side says these too (spotd.providers.aws.bootstrap); the agent does not import
# the AWS provider (nor aioboto3 with it), so they are repeated here and a test compares them.
BOOTSTRAP_PATH = "/agent/v1/bootstrap"
BOOTSTRAP_FILE = "bootstrap.json"
BOOTSTRAP_REFUSED_EXIT = 4  # the user-data's unit does not restart an agent that exits so

RETRY_SECONDS = 2.0


class BootstrapRefused(Exception):
    """The daemon will not hand this instance its config (the token was used, or expired)."""


async def bootstrap_if_needed(root: Path, *, say: Callable[[str], None]) -> None:
    """Fetch ``agent.json`` with the bootstrap token, unless it is already there."""
    boot_path = root / BOOTSTRAP_FILE
    if (root / "agent.json").exists() or not boot_path.exists():
        return
    boot = json.loads(boot_path.read_text())
    # the session needs only where the daemon is and its CA: the rest comes from the daemon
    cfg = AgentConfig(
        instance_key=boot["instance_key"],
        attempt_id="",
        job_id=0,
        task_id="",
        attempt=0,
        node_rank=0,
        num_nodes=1,
        setup=None,
        run=None,
        daemon_url=boot["daemon_url"],
        daemon_ca_pem=boot.get("daemon_ca_pem", ""),
    )
    session, base = daemon_session(cfg)
    async with session:
        config = await _fetch(session, base, boot, cfg, say)
    config["instance_dir"] = str(root)  # where this agent actually keeps its files
    write_private_json(root / "agent.json", config)
    with contextlib.suppress(FileNotFoundError):
        boot_path.unlink()
    say(f"bootstrapped: config for {cfg.instance_key} fetched from {cfg.daemon_url}")


async def _fetch(
    session: aiohttp.ClientSession,
    base: str,
    boot: dict[str, Any],
    cfg: AgentConfig,
    say: Callable[[str], None],
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {boot['bootstrap_token']}"}
    while True:
        try:
            async with session.post(
                f"{base}{BOOTSTRAP_PATH}",
                json={"key": cfg.instance_key},
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as r:
                if r.status == 200:
                    data: dict[str, Any] = (await r.json())["config"]
                    return data
                text = await r.text()
                if r.status in (401, 403, 404):
                    raise BootstrapRefused(
                        f"the daemon at {cfg.daemon_url} refused this instance's bootstrap "
                        f"token ({r.status}): {_message(text)}. Not retrying"
                    )
                say(f"bootstrap: the daemon answered {r.status}; retrying")
        except aiohttp.ClientConnectorCertificateError as exc:
            raise untrusted(cfg, exc) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            say(f"bootstrap: the daemon is not reachable ({type(exc).__name__}); retrying")
        await asyncio.sleep(RETRY_SECONDS)


def _message(text: str) -> str:
    try:
        return str(json.loads(text).get("error", text))
    except (ValueError, AttributeError):
        return text[:200]
