"""A job's environment is built from an allowlist, never the daemon's (or its agent's) whole.

The attack, as a user found it: the daemon runs with its admin API token (``SPOTD_API_TOKEN``)
and the operator's AWS keys in its environment; a job launched with a mere *project* token
ran ``env`` and printed both. The local provider started agents with the daemon's
environment, and the agent gave its job ``dict(os.environ)``.

Now the job sees its task's envs and secrets, spotd's and SkyPilot's names, and a minimal base
(``spotd.agent.environment``); the agent itself is started with an allowlist too
(``spotd.providers.childenv``), with the AWS chain only when it reads S3.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spotd.agent.environment import BASE_NAMES, DEFAULT_PATH, build_env, job_environment
from spotd.providers.childenv import AGENT_NAMES, agent_environment, uses_s3
from spotd.providers.slurm.provider import command_env
from spotd.types import AgentConfig
from tests.conftest import DaemonProc, kill_instance_groups
from tests.e2e.helpers import logs, wait_log

ADMIN = "admin-tok-Zq81"  # the daemon's admin API token
AWS_KEY = "AKIA-sentinel-7731"
AWS_SECRET = "aws-secret-sentinel-5521"
DB_PASSWORD = "db-pw-sentinel-9102"

# the daemon's environment, as an operator's might be
DAEMON_ENV = {
    "PATH": "/opt/spotd/bin:/usr/bin:/bin",
    "HOME": "/home/ops",
    "USER": "ops",
    "LOGNAME": "ops",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "LC_TIME": "en_GB.UTF-8",
    "TERM": "xterm",
    "TZ": "UTC",
    "TMPDIR": "/var/tmp",
    "CUDA_VISIBLE_DEVICES": "0,1",
    "SLURM_JOB_ID": "4242",
    "SPOTD_API_TOKEN": ADMIN,
    "SPOTD_ADMIN_TOKEN": ADMIN,
    "SPOTD_LB_TOKEN": "lb-tok",
    "SPOTD_DB_URL": f"postgresql://spotd:{DB_PASSWORD}@db/spotd",
    "SPOTD_PROVIDERS_JSON": '{"aws": {}}',
    "SPOTD_HOME": "/var/lib/spotd",
    "SKYPILOT_API_SERVER_TOKEN": "sky-tok",
    "AWS_ACCESS_KEY_ID": AWS_KEY,
    "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    "AWS_SESSION_TOKEN": "aws-session",
    "GITHUB_TOKEN": "ghp_x",
    "SLURM_JWT": "slurm-jwt",
    "NOTIFY_SOCKET": "/run/systemd/notify",
    "FOO": "bar",
    "PYTHONPATH": "/opt/spotd/lib",
    "SPOTD_FAKE_NVML": "/tmp/nvml.json",
    "HTTPS_PROXY": "http://proxy:3128",
}


@pytest.mark.parametrize(
    ("name", "passes"),
    [
        # the minimal base
        ("PATH", True),
        ("HOME", True),
        ("USER", True),
        ("LOGNAME", True),
        ("LANG", True),
        ("LC_ALL", True),
        ("LC_TIME", True),
        ("TERM", True),
        ("TZ", True),
        ("TMPDIR", True),
        # the GPUs a scheduler gave this node, and Slurm's description of the allocation
        ("CUDA_VISIBLE_DEVICES", True),
        ("SLURM_JOB_ID", True),
        # the daemon's tokens and settings
        ("SPOTD_API_TOKEN", False),
        ("SPOTD_ADMIN_TOKEN", False),
        ("SPOTD_LB_TOKEN", False),
        ("SPOTD_DB_URL", False),
        ("SPOTD_PROVIDERS_JSON", False),
        ("SPOTD_HOME", False),
        ("SPOTD_FAKE_NVML", False),
        ("SKYPILOT_API_SERVER_TOKEN", False),
        # cloud credentials and other people's tokens
        ("AWS_ACCESS_KEY_ID", False),
        ("AWS_SECRET_ACCESS_KEY", False),
        ("AWS_SESSION_TOKEN", False),
        ("GITHUB_TOKEN", False),
        ("SLURM_JWT", False),
        # systemd's, the agent's own, anything else
        ("NOTIFY_SOCKET", False),
        ("PYTHONPATH", False),
        ("HTTPS_PROXY", False),
        ("FOO", False),
    ],
)
def test_what_of_the_machine_a_job_sees(name: str, passes: bool) -> None:
    env = job_environment(task_envs={}, secrets={}, spotd_vars={}, base_env=DAEMON_ENV)
    assert (name in env) == passes
    if passes:
        assert env[name] == DAEMON_ENV[name]


@pytest.mark.parametrize(
    ("task", "secret", "spotd", "expected"),
    [
        ({}, {}, {}, "/usr/bin"),  # the machine's PATH
        ({"PATH": "/task/bin"}, {}, {}, "/task/bin"),  # the task's env over the machine's
        ({"PATH": "/task/bin"}, {"PATH": "/secret/bin"}, {}, "/secret/bin"),  # a secret over it
        ({"PATH": "/t"}, {"PATH": "/s"}, {"PATH": "/spotd/bin"}, "/spotd/bin"),  # spotd's win
    ],
)
def test_layers_go_base_task_secrets_spotd(
    task: dict[str, str], secret: dict[str, str], spotd: dict[str, str], expected: str
) -> None:
    env = job_environment(
        base_env={"PATH": "/usr/bin"}, task_envs=task, secrets=secret, spotd_vars=spotd
    )
    assert env["PATH"] == expected


def test_a_job_without_a_path_gets_a_sane_one_and_nothing_else() -> None:
    assert job_environment(task_envs={}, secrets={}, spotd_vars={}, base_env={}) == {
        "PATH": DEFAULT_PATH
    }


def test_a_task_may_name_any_variable_itself() -> None:
    """The allowlist guards the machine's environment, not the user's: a task that sets
    ``AWS_ACCESS_KEY_ID`` in its secrets gets it."""
    env = job_environment(
        task_envs={"FOO": "mine"},
        secrets={"AWS_ACCESS_KEY_ID": "the-project's-own"},
        spotd_vars={"SPOTD_JOB_ID": "7"},
        base_env=DAEMON_ENV,
    )
    assert (env["FOO"], env["AWS_ACCESS_KEY_ID"], env["SPOTD_JOB_ID"]) == (
        "mine",
        "the-project's-own",
        "7",
    )
    assert "AWS_SECRET_ACCESS_KEY" not in env and "SPOTD_API_TOKEN" not in env


def test_the_agent_builds_its_jobs_environment_from_its_config(tmp_path: Path) -> None:
    cfg = AgentConfig(
        instance_key="j3-a2-n1",
        attempt_id="j3-a2",
        job_id=3,
        task_id="t-3",
        attempt=2,
        node_rank=1,
        num_nodes=2,
        setup=None,
        run="env",
        envs={"GREETING": "hi", "HF_TOKEN": "hf-secret", "SPOTD_NODE_IPS": "10.0.0.1\n10.0.0.2"},
        secret_names=("HF_TOKEN",),
        num_gpus_per_node=8,
    )
    env = build_env(cfg, tmp_path / "ckpt", DAEMON_ENV)
    assert {k: v for k, v in env.items() if k.startswith(("SPOTD_", "SKYPILOT_"))} == {
        "SPOTD_JOB_ID": "3",
        "SKYPILOT_JOB_ID": "3",
        "SPOTD_TASK_ID": "t-3",
        "SKYPILOT_TASK_ID": "t-3",
        "SPOTD_ATTEMPT": "2",
        "SPOTD_NODE_RANK": "1",
        "SKYPILOT_NODE_RANK": "1",
        "SPOTD_NUM_NODES": "2",
        "SKYPILOT_NUM_NODES": "2",
        "SPOTD_NODE_IPS": "10.0.0.1\n10.0.0.2",
        "SKYPILOT_NODE_IPS": "10.0.0.1\n10.0.0.2",
        "SPOTD_NUM_GPUS_PER_NODE": "8",
        "SKYPILOT_NUM_GPUS_PER_NODE": "8",
        "SPOTD_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
    }
    assert (env["GREETING"], env["HF_TOKEN"]) == ("hi", "hf-secret")
    assert not {ADMIN, AWS_SECRET, AWS_KEY} & set(env.values())


# -- the agent's own environment, as the local and Slurm providers start it -------------------


@pytest.mark.parametrize(
    ("name", "plain", "with_s3"),
    [
        ("PATH", True, True),
        ("HOME", True, True),
        ("PYTHONPATH", True, True),  # the daemon's package, where it is not installed
        ("LANG", True, True),
        ("LC_TIME", True, True),
        ("CUDA_VISIBLE_DEVICES", True, True),
        ("SPOTD_FAKE_NVML", True, True),  # the agent's GPU telemetry reads it
        ("AWS_ACCESS_KEY_ID", False, True),  # only an agent that reads S3 needs the chain
        ("AWS_SECRET_ACCESS_KEY", False, True),
        ("HTTPS_PROXY", False, True),
        ("SPOTD_API_TOKEN", False, False),
        ("SPOTD_LB_TOKEN", False, False),
        ("SPOTD_DB_URL", False, False),
        ("SPOTD_PROVIDERS_JSON", False, False),
        ("GITHUB_TOKEN", False, False),
        ("NOTIFY_SOCKET", False, False),
        ("SLURM_JOB_ID", False, False),  # not on the daemon's machine
        ("FOO", False, False),
    ],
)
def test_what_of_the_daemon_an_agent_sees(name: str, plain: bool, with_s3: bool) -> None:
    assert (name in agent_environment(DAEMON_ENV)) == plain
    assert (name in agent_environment(DAEMON_ENV, s3=True)) == with_s3


def test_an_agent_keeps_every_name_its_job_may_take_from_it() -> None:
    assert BASE_NAMES <= AGENT_NAMES


@pytest.mark.parametrize(
    ("store", "blobs", "mounts", "s3"),
    [
        ("/home/ckpt/t1", "", {}, False),
        ("s3://bucket/ckpt/t1", "", {}, True),
        ("/home/ckpt/t1", "s3://bucket/packages", {}, True),
        ("/home/ckpt/t1", "/home/cas", {"/data": "s3://bucket/data"}, True),
        ("/home/ckpt/t1", "/home/cas", {"/data": "cas:abc"}, False),
    ],
)
def test_an_agent_reads_s3(store: str, blobs: str, mounts: dict[str, str], s3: bool) -> None:
    cfg = AgentConfig(
        instance_key="j1-a1-n0",
        attempt_id="j1-a1",
        job_id=1,
        task_id="t1",
        attempt=1,
        node_rank=0,
        num_nodes=1,
        setup=None,
        run="true",
        checkpoint_store=store,
        blob_store=blobs,
        file_mounts=mounts,
    )
    assert uses_s3(cfg) == s3


def test_slurm_commands_and_the_jobs_they_submit_get_an_allowlist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sbatch exports its environment into the job: what the daemon's Slurm commands get."""
    monkeypatch.setattr(os, "environ", dict(DAEMON_ENV, SBATCH_ACCOUNT="ml"))
    env = command_env("/etc/slurm/slurm.conf")
    assert env["SLURM_CONF"] == "/etc/slurm/slurm.conf"
    assert env["SBATCH_ACCOUNT"] == "ml" and env["PATH"] == DAEMON_ENV["PATH"]
    for name in ("SPOTD_API_TOKEN", "AWS_SECRET_ACCESS_KEY", "SPOTD_DB_URL", "FOO"):
        assert name not in env
    assert command_env(None, s3=True)["AWS_SECRET_ACCESS_KEY"] == AWS_SECRET


# -- end to end: a real daemon, a project token, a job that prints its environment -----------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def secret_daemon() -> Iterator[tuple[DaemonProc, str]]:
    """A daemon whose environment holds an admin token, AWS keys and a database password."""
    port = _free_port()
    home = Path(f"/tmp/spotd-e{os.getpid()}-{time.monotonic_ns() % 10**9}")
    d = DaemonProc(
        home,
        {
            "SPOTD_TCP": f"127.0.0.1:{port}",
            "SPOTD_API_TOKEN": ADMIN,
            "AWS_ACCESS_KEY_ID": AWS_KEY,
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "SPOTD_TEST_DB_PASSWORD": DB_PASSWORD,
            "FOO": "from-the-daemon",
        },
    )
    d.start()
    try:
        yield d, f"http://127.0.0.1:{port}"
    finally:
        d.stop()
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)


JOB = """
name: printenv
resources: {cpus: 1+}
envs: {GREETING: hello}
secrets: {HF_TOKEN: null}
run: |
  env | sort
  echo ENV-DONE
  sleep 60
"""


def _agent_environ(home: Path) -> dict[str, str]:
    [meta] = list((home / "local" / "instances").glob("*/meta.json"))
    raw = Path(f"/proc/{json.loads(meta.read_text())['pid']}/environ").read_bytes()
    return dict(e.split("=", 1) for e in raw.decode().split("\0") if "=" in e)


async def test_a_project_job_does_not_see_the_daemons_secrets(
    secret_daemon: tuple[DaemonProc, str],
) -> None:
    from spotd.sdk.client import Client

    d, url = secret_daemon
    async with Client.connect(url=url, token=ADMIN) as admin:
        project_token = (await admin.create_project("ml"))["token"]
    async with Client.connect(url=url, token=project_token) as c:
        job = await c.launch(JOB, filename="p.yaml", env={"HF_TOKEN": "hf-project-secret"})
        assert job["project"] == "ml"
        await wait_log(c, job["id"], "ENV-DONE")
        text = await logs(c, job["id"])
        agent_env = _agent_environ(d.home)
        await c.cancel(job["id"])
    lines = set(text.splitlines())
    # what the job must see: its envs and secrets, spotd's and SkyPilot's names, a PATH
    for line in (
        "GREETING=hello",
        "HF_TOKEN=hf-project-secret",
        f"SPOTD_JOB_ID={job['id']}",
        f"SKYPILOT_TASK_ID={job['task_id']}",
        "SPOTD_ATTEMPT=1",
        "SPOTD_NUM_NODES=1",
    ):
        assert line in lines, text
    assert any(line.startswith("PATH=") for line in lines)
    assert any(line.startswith("SPOTD_CHECKPOINT_DIR=") for line in lines)
    # what it must not: the daemon's token, its cloud keys, anything else it had
    for leaked in (ADMIN, AWS_KEY, AWS_SECRET, DB_PASSWORD, "from-the-daemon"):
        assert leaked not in text, f"{leaked!r} reached the job:\n{text}"
    for name in ("SPOTD_API_TOKEN", "SPOTD_TCP", "SPOTD_HOME", "AWS_ACCESS_KEY_ID", "FOO"):
        assert not any(line.startswith(f"{name}=") for line in lines), name
    # nor is any of it in the agent's own environment (which a same-user job could read)
    for leaked in (ADMIN, AWS_KEY, AWS_SECRET, DB_PASSWORD, "from-the-daemon"):
        assert leaked not in agent_env.values()
    assert "PATH" in agent_env
