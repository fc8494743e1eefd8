"""Instances get their secrets once, over TLS, for a one-time bootstrap token.

Attack: EC2 user-data is readable, for the instance's whole life, by anyone allowed
``DescribeInstanceAttribute`` and by anything on the instance that reaches the metadata
service (a server-side request forgery in the job, another process). Before: the user-data
carried the agent's whole config, gzip+base64: the task's secrets and the agent's long-lived
bearer token. After: it carries the daemon's URL, its CA, the instance's key and a bootstrap
token that lasts 15 minutes and is good once; the agent trades it at ``POST
/agent/v1/bootstrap`` over TLS for its config, which it writes 0600. A replay — the user-data
read later by anyone — is refused (401), and so is a forged or expired token.

The real thing: a real daemon on https with AWS on moto launches a job whose task holds a
secret; the user-data moto stores does not contain it, the job still prints it, and the token
from the user-data, presented again, is refused.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import aioboto3
import aiohttp
import pytest

from spotd.agent import bootstrap as agent_side
from spotd.config import load_settings
from spotd.ops.tls import client_context
from spotd.providers.aws import bootstrap
from spotd.providers.aws.bootstrap import BootstrapVerdict, check_bootstrap, issue_token
from tests.aws.motoserver import Moto, aws_env, moto_server  # noqa: F401
from tests.aws.player import InstancePlayer
from tests.conftest import DaemonProc
from tests.e2e.helpers import logs, wait_job
from tests.security.test_agent_transport import (  # noqa: F401
    REGIONS,
    TERMINAL,
    https_daemon,
    tls_dir,
)

NOW = 1_000_000.0
AGENT_TOKEN = "long-lived-agent-token"
KEY = "j3-a1-n0"
GOOD = issue_token(AGENT_TOKEN, key=KEY, now=NOW)
UNKNOWN = BootstrapVerdict(False, 401, "unknown instance or wrong bootstrap token")


def test_the_token_carries_its_expiry_and_reveals_no_agent_token() -> None:
    expires, _, mac = GOOD.partition(".")
    assert int(expires) == int(NOW + bootstrap.BOOTSTRAP_TTL)
    assert len(mac) == 64 and AGENT_TOKEN not in GOOD
    assert issue_token(AGENT_TOKEN, key="j3-a1-n1", now=NOW) != GOOD  # per instance
    # an instance without an agent token: a token that nothing accepts
    tokenless = issue_token("", key=KEY, now=NOW)
    for agent_token in ("", None):
        v = check_bootstrap(
            tokenless,
            key=KEY,
            agent_token=agent_token,
            bootstrapped_at=None,
            holds_config=True,
            now=NOW,
        )
        assert (v.ok, v.status) == (False, 401)


@pytest.mark.parametrize(
    ("presented", "key", "agent_token", "used_at", "holds", "now", "ok", "status", "says"),
    [
        (GOOD, KEY, AGENT_TOKEN, None, True, NOW, True, 200, ""),
        (GOOD, KEY, AGENT_TOKEN, None, True, NOW + 899, True, 200, ""),
        # expired: 15 minutes after launch
        (GOOD, KEY, AGENT_TOKEN, None, True, NOW + 900, False, 401, "expired 0s ago"),
        (GOOD, KEY, AGENT_TOKEN, None, True, NOW + 3600, False, 401, "expired 2700s ago"),
        # used once already: a replay
        (GOOD, KEY, AGENT_TOKEN, NOW + 5, True, NOW + 6, False, 401, "already used"),
        (GOOD, KEY, AGENT_TOKEN, NOW + 5, False, NOW + 6, False, 401, "already used"),
        (GOOD, KEY, AGENT_TOKEN, NOW + 5, True, NOW + 9999, False, 401, "already used"),
        # forged, or for another instance, or an instance that does not exist: one answer
        ("", KEY, AGENT_TOKEN, None, True, NOW, False, 401, UNKNOWN.reason),
        ("garbage", KEY, AGENT_TOKEN, None, True, NOW, False, 401, UNKNOWN.reason),
        (GOOD + "0", KEY, AGENT_TOKEN, None, True, NOW, False, 401, UNKNOWN.reason),
        (
            f"{int(NOW) + 10**6}.{GOOD.split('.')[1]}",
            KEY,
            AGENT_TOKEN,
            None,
            True,
            NOW,
            False,
            401,
            UNKNOWN.reason,
        ),  # a later expiry, same MAC: the expiry is signed
        (GOOD, "j3-a1-n1", AGENT_TOKEN, None, True, NOW, False, 401, UNKNOWN.reason),
        (GOOD, KEY, "another-token", None, True, NOW, False, 401, UNKNOWN.reason),
        (GOOD, KEY, None, None, False, NOW, False, 401, UNKNOWN.reason),
        # genuine and fresh, but nothing held (a launch the daemon did not record)
        (GOOD, KEY, AGENT_TOKEN, None, False, NOW, False, 404, "holds no agent config"),
    ],
)
def test_check_bootstrap(
    presented: str,
    key: str,
    agent_token: str | None,
    used_at: float | None,
    holds: bool,
    now: float,
    ok: bool,
    status: int,
    says: str,
) -> None:
    v = check_bootstrap(
        presented,
        key=key,
        agent_token=agent_token,
        bootstrapped_at=used_at,
        holds_config=holds,
        now=now,
    )
    assert (v.ok, v.status) == (ok, status)
    assert says in v.reason


def test_the_agent_and_the_daemon_agree_on_the_protocol() -> None:
    assert agent_side.BOOTSTRAP_PATH == bootstrap.BOOTSTRAP_PATH
    assert agent_side.BOOTSTRAP_FILE == bootstrap.BOOTSTRAP_FILE
    assert agent_side.BOOTSTRAP_REFUSED_EXIT == bootstrap.BOOTSTRAP_REFUSED_EXIT


# -- the real daemon over https, AWS on moto ---------------------------------------------------

SECRET = "hf_s3cr3t-" + os.urandom(6).hex()
JOB = """
name: bootstrapped
resources:
  accelerators: T4:1
  use_spot: true
secrets: {HF_TOKEN: null}
envs: {PLAIN: visible-env-value}
run: echo "job sees $HF_TOKEN and $PLAIN"
"""


async def _bootstrap(url: str, ca: str, key: str, token: str) -> tuple[int, dict[str, Any]]:
    conn = aiohttp.TCPConnector(ssl=client_context(ca_pem=ca))
    async with (
        aiohttp.ClientSession(connector=conn) as s,
        s.post(
            f"{url}{bootstrap.BOOTSTRAP_PATH}",
            json={"key": key},
            headers={"Authorization": f"Bearer {token}"},
        ) as r,
    ):
        return r.status, await r.json()


async def test_user_data_holds_no_secret_and_the_token_works_once(
    https_daemon: tuple[DaemonProc, str],  # noqa: F811
    moto_server: Moto,  # noqa: F811
    tls_dir: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    d, url = https_daemon
    home_tag = load_settings(d.home, env=d.env).home_tag
    scripts: list[str] = []
    seen: list[dict[str, Any]] = []
    player = InstancePlayer(
        url=moto_server.url,
        home_tag=home_tag,
        regions=REGIONS,
        root=tmp_path / "instances",
        env=aws_env(moto_server),
        rewrite=lambda cfg: seen.append(cfg) or cfg,
    )
    async with player, d.client() as c:
        job = await c.launch(JOB, filename="b.yaml", infra="aws", env={"HF_TOKEN": SECRET})
        job = await wait_job(
            c, job["id"], lambda j: j["status"] in TERMINAL, timeout=60, what="the job"
        )
        assert job["status"] == "SUCCEEDED", job
        assert f"job sees {SECRET} and visible-env-value" in await logs(c, job["id"])
        async with aioboto3.Session().client(
            "ec2", region_name=REGIONS[0], endpoint_url=moto_server.url
        ) as ec2:
            for iid in player.agents:
                r = await ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
                scripts.append(base64.b64decode(r["UserData"]["Value"]).decode())
    [script] = scripts
    [boot] = seen
    # what anyone who reads the user-data learns: no secret, no env value, no agent token
    inst = tmp_path / "instances" / boot["instance_key"]
    agent_json = json.loads((inst / "agent.json").read_text())
    for value in (SECRET, "visible-env-value", agent_json["token"]):
        assert value not in script
    assert "bootstrap_token" in boot and "token" not in boot and "envs" not in boot
    # the agent wrote what it fetched 0600, and the bootstrap file is gone
    assert agent_json["envs"]["HF_TOKEN"] == SECRET
    assert stat.S_IMODE((inst / "agent.json").stat().st_mode) == 0o600
    assert not (inst / bootstrap.BOOTSTRAP_FILE).exists()
    # the token read from the user-data later: refused, the config not handed out again
    ca = (tls_dir / "ca.pem").read_text()
    status, body = await _bootstrap(url, ca, boot["instance_key"], boot["bootstrap_token"])
    assert status == 401 and "already used" in body["error"], body
    assert SECRET not in json.dumps(body)
    forged = GOOD
    status, body = await _bootstrap(url, ca, boot["instance_key"], forged)
    assert (status, body["error"]) == (401, UNKNOWN.reason)
