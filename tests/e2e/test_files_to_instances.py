"""A job's code and data reach every attempt from the daemon's package store.

The client uploads them (``spotd.sdk.uploads``); daemon-host paths are the admin's, under the
daemon's ``file_roots`` (the last test)."""

from __future__ import annotations

import uuid

import aiohttp

from tests.e2e.helpers import logs, wait_job, wait_log
from tests.ops.conftest import make_daemon  # noqa: F401 - the fixture

TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}


def _yaml(workdir, data) -> str:
    mount = f"/tmp/spotd-e2e-mount-{id(data)}/data"
    return f"""
name: files
resources: {{cpus: 1+, use_spot: true}}
workdir: {workdir}
file_mounts:
  {mount}: {data}
run: |
  echo "code=$(cat code.txt) data=$(cat {mount}/input.txt) attempt=$SPOTD_ATTEMPT"
  test -e ignored.log && echo LEAKED-IGNORED
  sleep 2
"""


async def test_job_reads_workdir_and_mounts_on_every_attempt(daemon, tmp_path):
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "code.txt").write_text("v1")
    (wd / "ignored.log").write_text("x")
    (wd / ".gitignore").write_text("*.log\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("dataset-1")
    async with daemon.client() as c:
        job = await c.launch(_yaml(wd, data), filename="f.yaml")
        jid = job["id"]
        await wait_log(c, jid, "code=v1 data=dataset-1 attempt=1", attempt=1)
        # the user edits their files after submission: attempts must not see it
        (wd / "code.txt").write_text("v2")
        (data / "input.txt").write_text("dataset-2")
        await c.chaos("preempt", target=str(jid))
        job = await wait_job(c, jid, lambda j: j["status"] in TERMINAL, timeout=60)
        text = await logs(c, jid)
        events = await c.events(jid)
    assert job["status"] == "SUCCEEDED" and len(job["attempts"]) == 2
    assert job["attempts"][0]["region"] != job["attempts"][1]["region"]
    assert "code=v1 data=dataset-1 attempt=2" in text
    assert "LEAKED-IGNORED" not in text
    packaged = [e for e in events if e["kind"] == "files.packaged"]
    assert len(packaged) == 2  # once per launch, never again for the relaunch


async def test_relaunch_with_one_changed_file_transfers_only_it(daemon, tmp_path):
    wd = tmp_path / "wd"
    wd.mkdir()
    for i in range(30):
        (wd / f"part{i}.txt").write_text(f"{i}" * 1000)
    yaml = f"resources: {{cpus: 1+}}\nworkdir: {wd}\nrun: cat part3.txt | wc -c\n"
    async with daemon.client() as c:
        first = await c.launch(yaml, filename="a.yaml")
        (wd / "part3.txt").write_text("changed")
        second = await c.launch(yaml, filename="a.yaml")
        stats = []
        for j in (first, second):
            await wait_job(c, j["id"], lambda x: x["status"] in TERMINAL)
            ev = [e for e in await c.events(j["id"]) if e["kind"] == "files.packaged"]
            stats.append(ev[0]["message"])
        text = await logs(c, second["id"])
    # the client sent every file and the manifest, then the changed file and the new manifest
    assert (first["upload"]["files"], first["upload"]["uploaded_blobs"]) == (30, 31)
    assert (second["upload"]["files"], second["upload"]["uploaded_blobs"]) == (30, 2)
    assert second["upload"]["uploaded_bytes"] < first["upload"]["uploaded_bytes"] / 5
    assert all("30 files" in m and "uploaded by the client" in m for m in stats), stats
    assert "\n7\n" in text  # the job saw the changed file


async def _post(daemon, yaml: str):
    conn = aiohttp.UnixConnector(path=str(daemon.socket))
    async with (
        aiohttp.ClientSession(connector=conn) as s,
        s.post("http://spotd/v1/jobs", json={"yaml": yaml, "base_dir": "/tmp"}) as r,
    ):
        return r.status, await r.json()


async def test_bad_paths_are_refused_before_anything_launches(make_daemon, tmp_path):  # noqa: F811
    # daemon-host paths, named by the admin under the daemon's file_roots
    daemon = make_daemon(SPOTD_FILE_ROOTS=str(tmp_path))
    missing = f"spotd-missing-{uuid.uuid4().hex[:12]}"
    cases = [
        (f"workdir: {tmp_path}/missing\nrun: x\n", 400, "missing"),
        (f"file_mounts: {{/tmp/x: {tmp_path}/nope}}\nrun: x\n", 400, "nope"),
        (f"file_mounts: {{/etc/ssh: {tmp_path}}}\nrun: x\n", 400, "/etc/ssh"),
        # a bucket that does not exist (or, without AWS credentials here, cannot be read):
        # refused with the bucket in the message; tests/aws/test_s3_mounts.py pins it on moto
        (f"file_mounts: {{/tmp/x: s3://{missing}/p}}\nrun: x\n", 400, f"s3://{missing}/p"),
        # outside the roots: not the admin's to name either
        (f"workdir: {tmp_path.parent}\nrun: x\n", 403, "outside its file_roots"),
    ]
    for yaml, status_wanted, needle in cases:
        status, body = await _post(daemon, yaml)
        assert status == status_wanted and needle in body["error"], body
    async with daemon.client() as c:
        assert await c.jobs() == []
