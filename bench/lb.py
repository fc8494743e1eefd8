"""Load-balancer benchmark: spotd's LB against nginx and against no proxy at all.

Starts, as separate processes on loopback:

- two stub replicas (``spotd.serve.stub_replica``, uvloop, 16 tokens, no artificial delay —
  the cheapest possible backend, so the proxy's own cost shows);
- the spotd LB (``python -m spotd.lb``, one process, least_load);
- nginx with ``worker_processes 1`` (one worker, like the one LB process), an ``upstream``
  with ``keepalive 64``, ``proxy_http_version 1.1``, ``proxy_set_header Connection ""`` and
  ``proxy_buffering off`` — config written to a temp dir (``apt-get install -y nginx`` when
  it is missing);
- the load generator, ``wrk`` (one thread; ``apt-get install -y wrk`` when missing), in its
  own process. "direct" runs two wrk processes, one per replica, with half the connections
  each (rps summed, percentiles averaged).

Modes: ``json`` (POST /v1/completions, plain JSON answer) and ``sse`` (the same with
``"stream": true``: 18 SSE events per answer). Concurrency 32 and 128 (closed loops: the
machine saturates, and p50 there is queueing), a one-connection cell per proxy, and
``json-paced``/``sse-paced``: 32 connections with a 50 ms think time each (about 600
requests/s offered, the machine far from saturated), which show the latency a hop adds.
Each cell runs a bounded time (4 s, ``--quick`` 2 s) after a 1 s warm-up; the cells of the
three proxies run back to back, in a rotating order, for 3 rounds (``--quick`` 2), and the
table gives medians (p99: the worst round; ratios: the median of per-round ratios).

Everything — backends, proxy, load generator — shares this machine's cores, so absolute
numbers are low and the ratios are what to read. RSS is the proxy's resident memory after the
cell (nginx: master + worker); cpu_us_per_req is the proxy's own CPU time (user + system, from
/proc) per request served in the cell — the number a busy shared machine distorts least.

    python bench/lb.py [--quick] [--json] [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

POST_LUA = """
wrk.method = "POST"
wrk.body   = '{"model":"stub-model","prompt":"hello world","max_tokens":16%s}'
wrk.headers["Content-Type"] = "application/json"
"""

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream replicas {{
        server 127.0.0.1:{p1};
        server 127.0.0.1:{p2};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=2048;
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


@dataclass
class Cell:
    proxy: str
    mode: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    rss_mb: float | None
    errors: int = 0
    cpu_us_per_req: float | None = None  # the proxy's own CPU time (user+sys) per request
    rps_vs_nginx: float | None = None
    p50_added_vs_direct_ms: float | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def ensure_tool(name: str) -> str:
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
    )
    if path:
        return path
    print(f"installing {name} (apt-get install -y {name})", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-q", name], check=True, stdout=subprocess.DEVNULL)
    path = shutil.which(name) or f"/usr/sbin/{name}"
    if not os.path.exists(path):
        raise SystemExit(f"{name} is not available")
    return path


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return round(total / 1024, 1)


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU time of ``pids`` (a shared machine's load does not inflate it)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = [pid]
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids = (task / "children").read_text().split()
            out += [int(k) for k in kids]
    return out


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> tuple[float, float, float, int]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    return rps, p50, p99, errors


def run_wrk(
    wrk: str, urls: list[str], conns: int, seconds: float, script: str
) -> tuple[float, float, float, int]:
    per = max(1, conns // len(urls))
    procs = [
        subprocess.Popen(
            [
                wrk,
                "-t1",
                f"-c{per}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "--timeout",
                "10s",
                "-s",
                script,
                url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for url in urls
    ]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        results.append(parse_wrk(out))
    rps = sum(r[0] for r in results)
    p50 = sum(r[1] for r in results) / len(results)
    p99 = sum(r[2] for r in results) / len(results)
    return rps, p50, p99, sum(r[3] for r in results)


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], **kw: object) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw
        )  # type: ignore[call-overload]
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


PACED_DELAY_MS = 50  # think time per connection in the paced cells (32 conns: ~600 req/s)
PACE_LUA = "\nfunction delay()\n    return %d\nend\n"


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _aggregate(runs: list[Cell]) -> Cell:
    """One cell from the same cell's rounds: medians of rps, p50, CPU; the worst p99."""
    first = runs[0]
    cpu = [c.cpu_us_per_req for c in runs if c.cpu_us_per_req is not None]
    return Cell(
        first.proxy,
        first.mode,
        first.concurrency,
        round(_median([c.rps for c in runs]), 1),
        round(_median([c.p50_ms for c in runs]), 3),
        round(max(c.p99_ms for c in runs), 3),
        max((c.rss_mb or 0.0) for c in runs) if first.rss_mb is not None else None,
        sum(c.errors for c in runs),
        round(_median(cpu)) if cpu else None,
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="2 rounds of 2 s cells")
    ap.add_argument("--json", action="store_true", help="print the cells as a JSON list")
    ap.add_argument("--seconds", type=float, default=None, help="seconds per cell")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (medians are reported)")
    args = ap.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 4.0)
    rounds = args.rounds or (2 if args.quick else 3)
    wrk = ensure_tool("wrk")
    nginx = ensure_tool("nginx")
    tmp = Path(tempfile.mkdtemp(prefix="spotd-bench-lb-"))
    procs = Procs()
    runs: dict[tuple[str, str, int], list[Cell]] = {}
    try:
        p1, p2, lb_port, lb_ctl, ng_port = (free_port() for _ in range(5))
        for port in (p1, p2):
            procs.start(
                [
                    PY,
                    "-m",
                    "spotd.serve.stub_replica",
                    "--port",
                    str(port),
                    "--tokens",
                    "16",
                    "--uvloop",
                ]
            )
        lb = procs.start(
            [
                PY,
                "-m",
                "spotd.lb",
                "--port",
                str(lb_port),
                "--control-port",
                str(lb_ctl),
                "--replica",
                f"r1=http://127.0.0.1:{p1}",
                "--replica",
                f"r2=http://127.0.0.1:{p2}",
                "--log-level",
                "WARNING",
            ]
        )
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, p1=p1, p2=p2, port=ng_port))
        ng = procs.start([nginx, "-c", str(conf), "-p", str(tmp)])
        for port in (p1, p2, lb_port, ng_port):
            wait_http(f"http://127.0.0.1:{port}/health")
        scripts = {}
        for mode, extra in (("json", ""), ("sse", ',"stream":true')):
            scripts[mode] = str(tmp / f"{mode}.lua")
            Path(scripts[mode]).write_text(POST_LUA % extra)
            scripts[f"{mode}-paced"] = str(tmp / f"{mode}-paced.lua")
            Path(scripts[f"{mode}-paced"]).write_text(POST_LUA % extra + PACE_LUA % PACED_DELAY_MS)
        targets = {
            "direct": (
                [f"http://127.0.0.1:{p1}/v1/completions", f"http://127.0.0.1:{p2}/v1/completions"],
                None,
            ),
            "nginx": ([f"http://127.0.0.1:{ng_port}/v1/completions"], ng.pid),
            "spotd": ([f"http://127.0.0.1:{lb_port}/v1/completions"], lb.pid),
        }
        for urls, _ in targets.values():
            run_wrk(wrk, urls, 32, 1, scripts["json"])  # warm-up: pools, caches
        grid = [(mode, conns) for mode in ("json", "sse") for conns in (1, 32, 128)]
        grid += [("json-paced", 32), ("sse-paced", 32)]
        order = list(targets)
        for rnd in range(rounds):
            for i, (mode, conns) in enumerate(grid):
                # the proxies of one cell run back to back, in an order that rotates, so a
                # burst of other work on the machine does not always land on the same one
                k = (rnd + i) % len(order)
                for proxy in order[k:] + order[:k]:
                    urls, pid = targets[proxy]
                    if conns == 1:
                        urls_c, secs = urls[:1], min(seconds, 2.0)
                    else:
                        urls_c, secs = urls, seconds
                    cpu0 = cpu_seconds(children(pid)) if pid else 0.0
                    rps, p50, p99, errors = run_wrk(wrk, urls_c, conns, secs, scripts[mode])
                    rss = rss_mb(children(pid)) if pid else None
                    n = rps * max(1, round(secs))
                    cpu_us = (
                        round(1e6 * (cpu_seconds(children(pid)) - cpu0) / n) if pid and n else None
                    )
                    runs.setdefault((proxy, mode, conns), []).append(
                        Cell(
                            proxy,
                            mode,
                            conns,
                            round(rps, 1),
                            round(p50, 3),
                            round(p99, 3),
                            rss,
                            errors,
                            cpu_us,
                        )
                    )
                    print(
                        f"  round {rnd + 1}/{rounds} {proxy:6} {mode:10} c={conns:<3} "
                        f"{rps:9.1f} rps  p50 {p50:7.3f} ms  p99 {p99:7.3f} ms",
                        file=sys.stderr,
                    )
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    cells = [
        _aggregate(runs[(proxy, mode, conns)])
        for proxy in targets
        for mode, conns in grid
        if (proxy, mode, conns) in runs
    ]
    by = {(c.proxy, c.mode, c.concurrency): c for c in cells}
    for c in cells:
        key = (c.mode, c.concurrency)
        mine = runs[(c.proxy, *key)]
        ng_runs = runs.get(("nginx", *key))
        d_runs = runs.get(("direct", *key))
        if ng_runs:  # the median of the rounds' ratios: each round's cells ran side by side
            c.rps_vs_nginx = round(
                _median([a.rps / b.rps for a, b in zip(mine, ng_runs, strict=True) if b.rps]), 3
            )
        if d_runs and c.proxy != "direct":
            c.p50_added_vs_direct_ms = round(
                _median([a.p50_ms - b.p50_ms for a, b in zip(mine, d_runs, strict=True)]), 3
            )
    if args.json:
        print(json.dumps([asdict(c) for c in cells], indent=2))
        return
    cols = (
        "proxy",
        "mode",
        "concurrency",
        "rps",
        "p50_ms",
        "p99_ms",
        "rss_mb",
        "errors",
        "cpu_us_per_req",
        "rps_vs_nginx",
        "p50_added_vs_direct_ms",
    )
    rows = [[("-" if getattr(c, k) is None else str(getattr(c, k))) for k in cols] for c in cells]
    widths = [max(len(k), *(len(r[i]) for r in rows)) for i, k in enumerate(cols)]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{rounds} rounds of {seconds:g} s cells (medians; p99: the worst round); wrk -t1; "
        f"nginx worker_processes 1; spotd LB 1 process; *-paced: {PACED_DELAY_MS} ms think "
        f"time per connection ({os.cpu_count()} cores shared by everything; load average "
        f"at the end {load})"
    )
    print("  ".join(k.ljust(w) for k, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    s = {k: by[k] for k in by if k[0] == "spotd"}
    print()
    for mode, target in (("json", 0.30), ("sse", 0.80)):
        for conns in (32, 128):
            sc = s.get(("spotd", mode, conns))
            if sc and sc.rps_vs_nginx is not None:
                verdict = "ok" if sc.rps_vs_nginx >= target else "BELOW TARGET"
                print(
                    f"spotd/nginx rps, {mode} c={conns}: {sc.rps_vs_nginx:.2f}x "
                    f"(target >= {target:.2f}x) {verdict}"
                )
    for mode, conns in (("json", 1), ("json", 32), ("json-paced", 32), ("sse-paced", 32)):
        sc = s.get(("spotd", mode, conns))
        if sc and sc.p50_added_vs_direct_ms is not None:
            verdict = (
                "" if conns == 1 else " ok" if sc.p50_added_vs_direct_ms <= 2.0 else " ABOVE TARGET"
            )
            print(
                f"spotd p50 added over direct, {mode} c={conns}: "
                f"{sc.p50_added_vs_direct_ms:.3f} ms (target <= 2 ms at c=32){verdict}"
            )
    rss = max((c.rss_mb or 0) for c in s.values()) if s else 0
    print(f"spotd RSS max: {rss} MB (target <= 80 MB)")


if __name__ == "__main__":
    main()
