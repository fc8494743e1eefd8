"""One daemon under thousands of running jobs on the fleet provider.

    python bench/fleet.py [--jobs N ...] [--json] [--clients C] [--preempt K] [--deadline]

For each N (default 1,000 and 10,000) a fresh daemon (``python -m spotd.main``) and a fresh
fleet process (``python -m spotd.providers.fleet``: every instance a record, every agent one
task in it, reporting over the daemon's real agent API) are started, and:

1. N jobs (``run: sleep infinity``, spot; with ``--deadline`` DEADLINE jobs) are submitted
   through the API by C concurrent clients: ``submit_per_s`` is N over the time from the
   first request to the last answer;
2. once every job is RUNNING (``lost_before_running``: attempts that had ended by then, though
   nothing was reclaimed yet: losses the daemon made up itself; 0 is right), the daemon is
   left alone for ``--steady`` seconds (default: one keep-alive period, so every agent's
   keep-alive and every job's periodic look fall in it once): ``rss_mb`` (VmRSS at the end)
   and ``cpu_cores`` (the daemon's user+system CPU seconds per second over the window, from
   /proc), the agents' reports per second, and the fleet's listing calls per region per
   observe tick;
3. ``queue_ms``: ``GET /v1/jobs?limit=50`` (the first page ``spotctl jobs queue`` shows), median
   of 5; ``metrics_ms``: a Prometheus scrape (``GET /metrics``: job counts and DEADLINE paces
   read from the store), median of 5; ``cli_queue_ms``: ``spotctl jobs queue`` itself (a new
   Python process), median of 3;
4. ``cli_submit_per_s``: ``spotctl jobs launch -d -y`` run one after another, 5 times;
5. detection: K running instances are reclaimed without notice (one every 50 ms, through the
   fleet's test API); the latency is each one's attempt ``ended_at`` (the daemon's verdict,
   read from its database) minus the moment it was reclaimed: median and p99.

``load_1m`` / ``load_1m_end``: the machine's load average when the row began and ended (the
daemon shares the machine). A reference is measured in the same run: the idle daemon (no job
at all) gives the row ``jobs: 0``; ``spotctl --help`` is timed too (median of 5 new
processes). Everything runs on this machine: the fleet process and the load generator share
its cores with the daemon, whose own CPU is what ``cpu_cores`` counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SPOTCTL = str(Path(PY).parent / "spotctl")
TASK = """\
name: fleet-bench
resources:
  cpus: 1
  use_spot: true
run: sleep infinity
"""
# ``--deadline``: every job DEADLINE, so a scrape computes 10,000 paces (wall time: no progress)
DEADLINE_TASK = (
    TASK
    + """\
job_recovery:
  strategy: DEADLINE
  deadline: 20h
  expected_duration: 10h
"""
)
# The agents' keep-alive: a change (phase, exit, notice) is reported at once, silence once a
# minute; heartbeat loss makes a node suspect after 2.5 keep-alives, lost after 5. Detection of
# a reclaim comes from the provider's listing (every OBSERVE_INTERVAL) and notices.
HEARTBEAT_SECONDS = 60.0
OBSERVE_INTERVAL = 0.5


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Rig:
    """A fleet process and a daemon on a fresh home, torn down by ``close``."""

    def __init__(self, *, concurrency: int) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="sfb-", dir="/tmp"))
        self.fleet_sock = self.home / "fleet.sock"
        self.env = {
            **os.environ,
            "SPOTD_HOME": str(self.home),
            "SPOTD_PROVIDERS_JSON": json.dumps(
                {"local": {"enabled": False}, "fleet": {"url": f"unix:{self.fleet_sock}"}}
            ),
            "SPOTD_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
            "SPOTD_SUSPECT_AFTER": str(2.5 * HEARTBEAT_SECONDS),
            "SPOTD_LOST_AFTER": str(5 * HEARTBEAT_SECONDS),
            "SPOTD_OBSERVE_INTERVAL": str(OBSERVE_INTERVAL),
        }
        self.env.pop("SPOTD_URL", None)
        self.fleet_config = {"launch_seconds": 0.5, "concurrency": concurrency}
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.home / log, "ab") as out:
            p = subprocess.Popen(
                argv, env=self.env, stdout=out, stderr=out, start_new_session=True, cwd=ROOT
            )
        self.procs.append(p)
        return p

    def start(self) -> None:
        self._spawn(
            [
                PY,
                "-m",
                "spotd.providers.fleet",
                "--socket",
                str(self.fleet_sock),
                "--config",
                json.dumps(self.fleet_config),
            ],
            "fleet.log",
        )
        self.daemon = self._spawn([PY, "-m", "spotd.main", "--json-logs"], "spotd.log")
        deadline = time.monotonic() + 30
        while not (self.home / "spotd.sock").exists() or not self.fleet_sock.exists():
            if time.monotonic() > deadline or self.daemon.poll() is not None:
                raise RuntimeError((self.home / "spotd.log").read_text()[-3000:])
            time.sleep(0.05)

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
        shutil.rmtree(self.home, ignore_errors=True)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.home / 'state.db'}?mode=ro", uri=True, timeout=30)

    def status_counts(self) -> dict[str, int]:
        with self.db() as c:
            return dict(c.execute("select status, count(*) from job group by status").fetchall())

    def ended_attempts(self) -> int:
        with self.db() as c:
            (n,) = c.execute("select count(*) from attempt where status = 'ENDED'").fetchone()
            return int(n)

    def spotctl(self, *args: str) -> float:
        t0 = time.perf_counter()
        subprocess.run(
            [SPOTCTL, *args], env=self.env, cwd=ROOT, capture_output=True, check=True, timeout=120
        )
        return time.perf_counter() - t0


def api(rig: Rig) -> aiohttp.ClientSession:
    conn = aiohttp.UnixConnector(path=str(rig.home / "spotd.sock"), limit=256)
    return aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600))


def fleet(rig: Rig) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(rig.fleet_sock)))


async def submit_all(rig: Rig, n: int, clients: int, task: str) -> float:
    counter = iter(range(n))
    errors: list[str] = []

    async def client(s: aiohttp.ClientSession) -> None:
        for i in counter:
            body = {"yaml": task, "filename": "bench.yaml", "name": f"b{i}"}
            async with s.post("http://spotd/v1/jobs", json=body) as r:
                if r.status != 201:
                    errors.append(f"{r.status} {await r.text()}")

    async with api(rig) as s:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(s) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} launches failed, e.g. {errors[0]}")
    return n / elapsed


def wait_running(rig: Rig, n: int, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if rig.status_counts().get("RUNNING", 0) >= n:
            return time.monotonic() - t0
        time.sleep(1.0)
    raise RuntimeError(f"not all {n} jobs RUNNING after {timeout}s: {rig.status_counts()}")


async def fleet_stats(rig: Rig) -> dict[str, Any]:
    async with fleet(rig) as s, s.get("http://fleet/v1/stats") as r:
        return dict(await r.json())


async def steady(rig: Rig, seconds: float) -> dict[str, float]:
    pid = rig.daemon.pid
    before = await fleet_stats(rig)
    c0, t0 = proc_cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    c1, t1 = proc_cpu_seconds(pid), time.monotonic()
    after = await fleet_stats(rig)
    ticks = (t1 - t0) / OBSERVE_INTERVAL
    calls = [after["list_calls"][r] - before["list_calls"][r] for r in after["list_calls"]]
    return {
        "rss_mb": round(proc_rss_mb(pid), 1),
        "cpu_cores": round((c1 - c0) / (t1 - t0), 3),
        "list_calls_per_region_per_tick": round(max(calls) / ticks, 2),
        "agent_reports_per_s": round(
            (after["reports_sent"] - before["reports_sent"]) / (t1 - t0), 1
        ),
    }


async def get_ms(rig: Rig, path: str, params: dict[str, str] | None = None) -> float:
    """``GET path``, median of 5, in ms."""
    times = []
    async with api(rig) as s:
        for _ in range(5):
            t0 = time.perf_counter()
            async with s.get(f"http://spotd{path}", params=params or {}) as r:
                await r.read()
                assert r.status == 200, r.status
            times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 1)


async def detection(rig: Rig, k: int) -> tuple[float, float]:
    with rig.db() as c:
        rows = c.execute(
            "select i.key, i.instance_id, i.attempt_id from instance i join attempt a "
            "on a.id = i.attempt_id where a.status = 'RUNNING' and i.instance_id is not null "
            "order by random() limit ?",
            (k,),
        ).fetchall()
    reclaimed: dict[str, float] = {}
    async with fleet(rig) as s:
        for _key, iid, aid in rows:
            async with s.post("http://fleet/v1/preempt", json={"id": iid}) as r:
                assert r.status == 200, await r.text()
            reclaimed[aid] = time.time()
            await asyncio.sleep(0.05)
    lat: dict[str, float] = {}
    deadline = time.monotonic() + 120
    while len(lat) < len(reclaimed) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        marks = ",".join("?" * len(reclaimed))
        with rig.db() as c:
            for aid, ended in c.execute(
                f"select id, ended_at from attempt where id in ({marks}) and ended_at is not null",
                list(reclaimed),
            ):
                lat[aid] = ended - reclaimed[aid]
    if len(lat) < len(reclaimed):
        raise RuntimeError(f"{len(reclaimed) - len(lat)} preemptions never got a verdict")
    values = list(lat.values())
    return round(statistics.median(values), 3), round(pct(values, 0.99), 3)


def cli_submit_per_s(rig: Rig, n: int = 5) -> float:
    task = rig.home / "task.yaml"
    task.write_text(TASK)
    total = sum(rig.spotctl("jobs", "launch", "-d", "-y", str(task)) for _ in range(n))
    return round(n / total, 2)


def help_seconds() -> float:
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([SPOTCTL, "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 3)


def run_row(
    n: int, *, clients: int, preempt: int, steady_s: float, task: str = TASK
) -> dict[str, Any]:
    rig = Rig(concurrency=64)
    try:
        rig.start()
        row: dict[str, Any] = {"jobs": n, "load_1m": round(os.getloadavg()[0], 2)}
        if n:
            c0 = proc_cpu_seconds(rig.daemon.pid)
            row["submit_per_s"] = round(asyncio.run(submit_all(rig, n, clients, task)), 1)
            row["to_running_s"] = round(wait_running(rig, n, timeout=120 + n / 20), 1)
            # nothing is reclaimed before step 5: an attempt that ended by now was lost by the
            # daemon itself (a verdict from a listing older than its launch, say)
            row["lost_before_running"] = rig.ended_attempts()
            # the daemon's CPU per job from submit to RUNNING: what a busy machine distorts least
            row["cpu_ms_per_job"] = round((proc_cpu_seconds(rig.daemon.pid) - c0) / n * 1000, 2)
        row.update(asyncio.run(steady(rig, steady_s if n else min(steady_s, 10.0))))
        row["queue_ms"] = asyncio.run(get_ms(rig, "/v1/jobs", {"limit": "50"}))
        row["metrics_ms"] = asyncio.run(get_ms(rig, "/metrics"))
        row["cli_queue_ms"] = round(
            statistics.median(rig.spotctl("jobs", "queue") for _ in range(3)) * 1000, 1
        )
        if n:
            row["detect_p50_s"], row["detect_p99_s"] = asyncio.run(detection(rig, min(preempt, n)))
            row["cli_submit_per_s"] = cli_submit_per_s(rig)
        row["load_1m_end"] = round(os.getloadavg()[0], 2)  # the machine's, not the daemon's
        return row
    finally:
        rig.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, action="append", help="running jobs (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--clients", type=int, default=16, help="concurrent API clients")
    parser.add_argument("--preempt", type=int, default=100, help="instances reclaimed")
    parser.add_argument(
        "--steady", type=float, default=HEARTBEAT_SECONDS, help="seconds of steady state"
    )
    parser.add_argument(
        "--deadline", action="store_true", help="every job DEADLINE (20 h for 10 h of work)"
    )
    args = parser.parse_args()
    sizes = [0, *(args.jobs or [1000, 10000])]
    task = DEADLINE_TASK if args.deadline else TASK
    rows = [
        run_row(n, clients=args.clients, preempt=args.preempt, steady_s=args.steady, task=task)
        for n in sizes
    ]
    rows[0]["spotctl_help_s"] = help_seconds()  # the reference row carries the CLI's start
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    cols = sorted({k for r in rows for k in r}, key=lambda k: (k != "jobs", k))
    print("  ".join(cols))
    for r in rows:
        print("  ".join(str(r.get(c, "-")) for c in cols))


if __name__ == "__main__":
    main()
