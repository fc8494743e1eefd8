"""Storage objects on the local provider's directory store, through a real daemon: every mode,
a relaunch after a preemption, ``source`` uploaded once, ``spotctl storage ls|delete``, and
one project's token never reaching another project's buckets."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from spotd.sdk.client import ApiError, Client
from tests.e2e.helpers import logs, wait_job, wait_log
from tests.ops.conftest import TERMINAL, free_port

pytestmark = [pytest.mark.slow]


def storage_yaml(node: Path, src: Path, *, sleep_first: bool) -> str:
    """A job that reads the COPY and the MOUNT, and writes a checkpoint per attempt into the
    MOUNT_CACHED directory (``node`` plays the instance's disk)."""
    hold = 'if [ "$SPOTD_ATTEMPT" = 1 ]; then sleep 60; fi' if sleep_first else "true"
    return f"""
name: storage
resources: {{cpus: 1+, use_spot: true}}
file_mounts:
  {node}/data: {{name: ds-local, source: {src}, mode: COPY}}
  {node}/live: {{name: ds-local, mode: MOUNT}}
  {node}/ckpt: {{name: ck-local, mode: MOUNT_CACHED}}
run: |
  echo "data=$(cat {node}/data/a.txt) restored=$(ls {node}/ckpt | tr '\\n' ,)" \\
    "attempt=$SPOTD_ATTEMPT"
  mkdir -p {node}/ckpt/step-$SPOTD_ATTEMPT
  echo w$SPOTD_ATTEMPT > {node}/ckpt/step-$SPOTD_ATTEMPT/w.bin
  echo "job $SPOTD_JOB_ID attempt $SPOTD_ATTEMPT" > {node}/live/job-$SPOTD_JOB_ID-$SPOTD_ATTEMPT.txt
  {hold}
"""


async def wait_path(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.05)


async def test_every_mode_a_relaunch_and_delete(daemon, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello")
    buckets = daemon.home / "storage" / "local" / "default"
    async with daemon.client() as c:
        job = await c.launch(
            storage_yaml(tmp_path / "n1", src, sleep_first=True), filename="s.yaml"
        )
        jid = job["id"]
        await wait_log(c, jid, "data=hello restored= attempt=1", attempt=1)
        # attempt 1's checkpoint settles and is committed while it runs
        await wait_path(buckets / "ck-local" / ".spotd" / "commits" / "step-1.json")
        # in use: not deleted, and the daemon says by whom
        refused = daemon.spotctl("storage", "delete", "ck-local", "-y")
        assert refused.returncode == 1 and f"in use by job {jid}" in refused.stderr
        await c.chaos("preempt", target=str(jid))
        job = await wait_job(c, jid, lambda j: j["status"] in TERMINAL, timeout=90)
        text = await logs(c, jid)

        # a second job, on a fresh "disk": everything comes back from the buckets
        job2 = await c.launch(
            storage_yaml(tmp_path / "n2", src, sleep_first=False), filename="s.yaml"
        )
        job2 = await wait_job(c, job2["id"], lambda j: j["status"] in TERMINAL, timeout=90)
        text2 = await logs(c, job2["id"])
    assert job["status"] == "SUCCEEDED" and len(job["attempts"]) == 2, text
    assert "restored 1 committed units" in text  # attempt 2 got step-1 from the bucket
    assert "data=hello restored=step-1, attempt=2" in text
    assert job2["status"] == "SUCCEEDED", text2
    assert "data=hello restored=step-1,step-2, attempt=1" in text2
    assert (tmp_path / "n2" / "ckpt" / "step-2" / "w.bin").read_text() == "w2\n"
    # MOUNT: what the jobs wrote is in the bucket itself
    written = sorted(p.name for p in (buckets / "ds-local").glob("job-*.txt"))
    assert written == [f"job-{jid}-1.txt", f"job-{jid}-2.txt", f"job-{job2['id']}-1.txt"]
    # the source went up once for three attempts of two jobs
    record = json.loads((daemon.home / "storage/registry/default/ds-local.json").read_text())
    assert len(record["sources"]) == 1
    assert len(list((buckets / "ds-local" / ".spotd" / "sources").glob("*.json"))) == 1

    listed = daemon.spotctl("storage", "ls", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    rows = {b["name"]: b for b in json.loads(listed.stdout)["buckets"]}
    assert set(rows) == {"ds-local", "ck-local"}
    assert rows["ck-local"]["store"] == "local" and rows["ck-local"]["used_by"] == []

    gone = daemon.spotctl("storage", "delete", "ck-local", "-y")
    assert gone.returncode == 0, gone.stderr
    assert not (buckets / "ck-local").exists()
    missing = daemon.spotctl("storage", "delete", "ck-local")
    assert missing.returncode == 1 and "no bucket ck-local" in missing.stderr
    bad = daemon.spotctl("storage", "delete", "Bad_Name")
    assert bad.returncode == 1 and "bucket name" in bad.stderr


TENANT_YAML = """
name: t
resources: {cpus: 1+}
file_mounts:
  NODE/ckpt: {name: shared-name, mode: MOUNT_CACHED}
run: |
  echo "saw=$(ls NODE/ckpt | tr '\\n' ,)"
  mkdir -p NODE/ckpt/PROJ && echo secret > NODE/ckpt/PROJ/w.bin
"""


async def test_project_tokens_reach_only_their_buckets(make_daemon, tmp_path: Path) -> None:
    port = free_port()
    d = make_daemon(SPOTD_TCP=f"127.0.0.1:{port}", SPOTD_API_TOKEN="admin-s3cret")
    url = f"http://127.0.0.1:{port}"
    async with Client.connect(url=url, token="admin-s3cret") as admin:
        ml = (await admin.create_project("ml"))["token"]
        web = (await admin.create_project("web"))["token"]
    async with (
        Client.connect(url=url, token=ml) as c_ml,
        Client.connect(url=url, token=web) as c_web,
    ):
        texts = {}
        for proj, c in (("ml", c_ml), ("web", c_web)):
            yaml = TENANT_YAML.replace("NODE", str(tmp_path / proj)).replace("PROJ", proj)
            j = await c.launch(yaml, filename="t.yaml")
            j = await wait_job(c, j["id"], lambda j: j["status"] in TERMINAL, timeout=60)
            assert j["status"] == "SUCCEEDED"
            texts[proj] = await logs(c, j["id"])
        # the same bucket name is two buckets: web's job saw nothing of ml's
        assert "saw=\n" in texts["ml"] and "saw=\n" in texts["web"]
        assert [b["project"] for b in (await c_ml.request("GET", "/v1/storage"))["buckets"]] == [
            "ml"
        ]
        with pytest.raises(ApiError) as e:  # another project's bucket: not reachable
            await c_ml.request("POST", "/v1/storage/shared-name/delete", params={"project": "web"})
        assert e.value.status == 403
        with pytest.raises(ApiError) as e:
            await c_ml.request("POST", "/v1/storage/no..name/delete")
        assert e.value.status == 400
        with pytest.raises(ApiError) as e:  # an agent's route wants that instance's token
            await c_ml.request("POST", "/agent/v1/storage", json={"key": "j1-a1-n0"})
        assert e.value.status == 401
        await c_ml.request("POST", "/v1/storage/shared-name/delete")
    async with Client.connect(url=url, token="admin-s3cret") as admin:
        left = (await admin.request("GET", "/v1/storage"))["buckets"]
    assert [(b["project"], b["name"]) for b in left] == [("web", "shared-name")]
    web_dir = d.home / "storage" / "local" / "web" / "shared-name"
    assert (web_dir / "web" / "w.bin").read_text() == "secret\n"
    assert not (d.home / "storage" / "local" / "ml" / "shared-name").exists()
