"""Fuzzing a real daemon: every operation of its OpenAPI document, and hostile task YAML.

1. schemathesis reads ``/v1/openapi.json`` from a daemon listening on loopback TCP with a
   token and sends each operation inputs generated from the document: valid ones (positive)
   and ones that break it (negative: wrong types, out-of-range ids, unknown enum values, bad
   bodies). Not one answer may be a 5xx (schemathesis' ``not_a_server_error``).
2. hypothesis feeds task YAML — the shipped examples and the spec's test files mutated byte
   by byte and key by key, and task-shaped documents built from hostile values — to the
   launch endpoint as dry runs and to ``spotctl check`` (in-process through click's runner,
   and a few real processes): no 5xx, no traceback, a refusal for what is wrong.

Throughout both, a process of its own asks ``/v1/health`` every 100 ms; every answer must come
within 2 s (a loop blocked by one input shows as seconds).
Each test prints how many requests it made, in every run (not only with ``-s``). The seed is random
unless ``SPOTD_FUZZ_SEED`` fixes it; it is printed so a failure can be replayed.
``SPOTD_FUZZ_API_EXAMPLES`` and ``SPOTD_FUZZ_YAML_EXAMPLES`` make a longer hunt.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from spotd.cli.main import main as spotctl
from tests.conftest import DaemonProc, kill_instance_groups

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "fuzz-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SEED = int(os.environ.get("SPOTD_FUZZ_SEED") or random.randrange(2**32))
# per operation and generation mode (2 modes x 25 operations); more for a longer hunt
API_EXAMPLES = int(os.environ.get("SPOTD_FUZZ_API_EXAMPLES") or 100)
YAML_EXAMPLES = int(os.environ.get("SPOTD_FUZZ_YAML_EXAMPLES") or 600)


def _settings(max_examples: int) -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # a failure is reported as found, not shrunk
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def tcp_daemon() -> Iterator[tuple[DaemonProc, str]]:
    port = _free_port()
    home = Path(f"/tmp/spotd-z{os.getpid()}-{time.monotonic_ns() % 10**9}")
    d = DaemonProc(home, {"SPOTD_TCP": f"127.0.0.1:{port}", "SPOTD_API_TOKEN": TOKEN})
    d.start()
    try:
        yield d, f"http://127.0.0.1:{port}"
    finally:
        d.stop()
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)


# the health prober: a process of its own, so the time it measures is the daemon's, not this
# test process's (whose in-process `spotctl check` runs hold its GIL for a while)
PROBE = r"""
import http.client, signal, sys, time
port, token = int(sys.argv[1]), sys.argv[2]
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
def ask():
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/v1/health", headers={"Authorization": "Bearer " + token})
        ok = conn.getresponse().status == 200
    except OSError:
        ok = False
    finally:
        conn.close()
    return time.monotonic() - t0 if ok else float("inf")
while not stop:
    print(ask(), flush=True)
    time.sleep(0.1)
print(ask(), flush=True)  # and once more, after everything
"""
SLOW = 2.0  # a loop blocked by one input shows as seconds; CI's 2 busy cores add a few 100 ms


class HealthWatch:
    """Asks ``/v1/health`` every 100 ms from a process of its own; ``latencies`` holds each
    answer's time (inf: no answer within 5 s, or not a 200)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> HealthWatch:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", PROBE, str(self.port), TOKEN],
            stdout=subprocess.PIPE,
            text=True,
        )
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._proc is not None
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=15)
        self.latencies = [float(line) for line in out.split()]

    def check(self) -> str:
        slow = [t for t in self.latencies if t > SLOW]
        assert self.latencies and not slow, f"/v1/health slower than {SLOW} s: {slow[:10]}"
        return (
            f"/v1/health answered {len(self.latencies)} times, slowest {max(self.latencies):.3f} s"
        )


def _no_server_errors(daemon: DaemonProc) -> None:
    log = daemon.log_tail(2_000_000)
    assert "unhandled error" not in log and "Traceback" not in log, log[-4000:]


# -- 1. every operation, from the document ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_schemathesis_finds_no_server_error(
    tcp_daemon: tuple[DaemonProc, str], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon, base = tcp_daemon
    schema = schemathesis.openapi.from_url(f"{base}/v1/openapi.json", headers=AUTH, timeout=10)
    session = requests.Session()
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    t0 = time.monotonic()
    with HealthWatch(int(base.rsplit(":", 1)[1])) as health:
        for op in operations:
            for mode in modes:

                @hypothesis.seed(SEED)
                @_settings(API_EXAMPLES)
                @hypothesis.given(case=op.as_strategy(generation_mode=mode))
                def fuzz(case: schemathesis.Case) -> None:
                    response = case.call(base_url=base, session=session, headers=AUTH, timeout=15)
                    statuses[response.status_code] += 1
                    case.validate_response(response, checks=[not_a_server_error])

                try:
                    fuzz()
                except Exception as exc:  # noqa: BLE001 - every operation is fuzzed; all failures told
                    failures.append(f"{op.method.upper()} {op.path} ({mode.value}): {exc}")
    took = time.monotonic() - t0
    total = sum(statuses.values())
    report = (
        f"\nschemathesis {schemathesis.__version__}: {total} requests over {len(operations)} "
        f"operations x {len(modes)} modes in {took:.0f} s (seed {SEED}); statuses "
        f"{dict(sorted(statuses.items()))}; {health.check()}"
    )
    with capsys.disabled():  # the counts belong in every run's output, not only -s
        print(report)
    # every operation the document has; schemathesis leaves out the document's own URL
    doc = session.get(f"{base}/v1/openapi.json", headers=AUTH, timeout=10).json()
    documented = {f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m in ops}
    assert {op.label for op in operations} == documented - {"GET /v1/openapi.json"}
    assert not failures, "\n\n".join(failures)
    assert not [s for s in statuses if s >= 500]
    _no_server_errors(daemon)


# -- 2. task YAML, mutated and generated ------------------------------------------------------

SEEDS = [
    p.read_bytes()
    for p in sorted((ROOT / "examples").glob("*.yaml"))
    + sorted((ROOT / "tests/spec/data").glob("*.yaml"))
]

# fmt: off
HOSTILE = [
    10**30, -1, 0, -(10**30), 2**63, 1e308, ".inf", "-.inf", ".nan", float("inf"),
    "²", "١٢", "A100:1e999", "A100:-1", "A100:inf", "A100:nan", "H100:0", "A100:8:8",
    "1e999+", "inf+", "-4+", "4x", "nanGB", "99999999999999999999", "~", "~root/x",
    "~nosuchuser/x", "/etc/shadow", "../../..", "a\x00b", "\udcff", "", " ", "*", "&a",
    "!!python/object", "aws//x", "local/nowhere/none", True, False, None, [], {}, "x" * 5000,
]
# fmt: on
HOSTILE_SCALARS = st.one_of(
    st.sampled_from(HOSTILE),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)

TASK_KEYS = {
    "": ["name", "workdir", "num_nodes", "resources", "envs", "secrets", "file_mounts",
         "setup", "run", "service", "job_recovery", "config", "bogus_key"],
    "resources": ["accelerators", "cpus", "memory", "use_spot", "infra", "instance_type",
                  "disk_size", "ports", "region", "zone", "any_of", "ordered", "cloud",
                  "accelerator_args", "job_recovery", "labels", "image_id", "accelrators"],
    "service": ["readiness_probe", "replicas", "replica_policy", "load_balancing_policy",
                "ports", "min_replicas"],
    "job_recovery": ["strategy", "max_restarts_on_errors", "recover_on_exit_codes",
                     "give_up_after", "backoff"],
}  # fmt: skip
ALL_KEYS = sorted({k for keys in TASK_KEYS.values() for k in keys})


def _values(key: str) -> st.SearchStrategy[Any]:
    """Hostile values, or a mapping of hostile values under the keys a section has."""
    leaf = HOSTILE_SCALARS | st.lists(HOSTILE_SCALARS, max_size=4)
    if key in TASK_KEYS:
        return st.dictionaries(st.sampled_from(TASK_KEYS[key]), leaf, max_size=6) | leaf
    return leaf | st.dictionaries(st.text(max_size=8), leaf, max_size=4)


@st.composite
def generated_task(draw: st.DrawFn) -> str:
    keys = draw(st.lists(st.sampled_from(TASK_KEYS[""]), max_size=8, unique=True))
    doc = {k: draw(_values(k)) for k in keys}
    if draw(st.booleans()):
        doc.setdefault("run", "echo hi")
    return yaml.safe_dump(doc, allow_unicode=draw(st.booleans()), sort_keys=False)


def _paths(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield at
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*at, i))


@st.composite
def mutated_keys(draw: st.DrawFn) -> str:
    """A seed file parsed, then keys and values replaced, removed, renamed or added."""
    docs = list(yaml.safe_load_all(draw(st.sampled_from(SEEDS))))
    which = draw(st.integers(0, len(docs) - 1))
    doc = docs[which]
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths))
        parent: Any = doc
        for p in path[:-1]:
            parent = parent[p]
        what = draw(st.sampled_from(["replace", "delete", "rename", "add", "nest"]))
        if not path:  # the whole document
            doc = draw(_values(""))
            continue
        last = path[-1]
        if what == "replace":
            parent[last] = draw(_values(str(last)))
        elif what == "delete":
            del parent[last]
        elif what == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=12) | st.sampled_from(TASK_KEYS["resources"]))] = (
                parent.pop(last)
            )
        elif what == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(ALL_KEYS))] = draw(_values(""))
        elif what == "nest":
            parent[last] = {"x": [parent[last]]}
    docs[which] = doc
    return yaml.safe_dump_all(docs, allow_unicode=True, sort_keys=False)


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    """A seed file with bytes flipped, cut, repeated or inserted (YAML's own syntax too)."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, max(0, len(data) - 1)))
        op = draw(st.sampled_from(["flip", "cut", "repeat", "insert", "syntax"]))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[i : i + draw(st.integers(1, 64))]
        elif op == "repeat":
            chunk = data[i : i + draw(st.integers(1, 64))]
            data[i:i] = chunk * draw(st.integers(1, 20))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            token = draw(st.sampled_from(
                [b"&a ", b"*a", b"<<: *a\n", b"!!binary ", b"!!python/name:os.system ", b"{",
                 b"[", b"\t", b"---\n", b"...\n", b"%YAML 1.1\n", b"? ", b"|-\n", b"\xef\xbb\xbf",
                 b"\\x00", b"\x00", b": ", b"- ", b"'", b'"', b"#", b"\r\n"]
            ))  # fmt: skip
            data[i:i] = token
    return bytes(data)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate: bytes that are not UTF-8


YAML_INPUTS = st.one_of(
    mutated_bytes(),
    mutated_keys().map(_encode),
    generated_task().map(_encode),
)


def _check_in_process(runner: CliRunner, path: Path) -> int:
    """``spotctl check`` on ``path``: its exit code, which must be 0 or 1, with no traceback."""
    result = runner.invoke(spotctl, ["check", str(path)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(
            f"spotctl check raised {type(result.exception).__name__}: {result.exception}"
        ) from result.exception
    assert result.exit_code in (0, 1) and "Traceback" not in result.output, result.output[-2000:]
    return result.exit_code


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_mutated_task_yaml_gets_refusals_not_tracebacks(
    tcp_daemon: tuple[DaemonProc, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon, base = tcp_daemon
    session = requests.Session()
    runner = CliRunner()
    statuses: Counter[int] = Counter()
    checks: Counter[int] = Counter()
    services: Counter[int] = Counter()
    kept: list[bytes] = []
    t0 = time.monotonic()

    @hypothesis.seed(SEED)
    @_settings(YAML_EXAMPLES)
    @hypothesis.given(data=YAML_INPUTS)
    def fuzz(data: bytes) -> None:
        text = data.decode("utf-8", errors="replace")
        r = session.post(
            f"{base}/v1/jobs",
            json={"yaml": text or " ", "dry_run": True, "filename": "fuzz.yaml"},
            headers=AUTH,
            timeout=15,
        )
        statuses[r.status_code] += 1
        assert r.status_code < 500, (
            f"{r.status_code} {r.text[:500]} for:\n{text[:2000]}\n{daemon.log_tail(3000)}"
        )
        assert "Traceback" not in r.text
        if r.status_code == 200:
            assert r.json()["dry_run"] is True
        # the service endpoint reads the same YAML; the name "-" is refused after the task
        # is read and before anything starts, so no service is ever created (or the task is
        # refused first: a workdir on the daemon's host outside file_roots is 403, as for jobs)
        r = session.post(
            f"{base}/v1/services",
            json={"yaml": text or " ", "name": "-", "filename": "fuzz.yaml"},
            headers=AUTH,
            timeout=15,
        )
        services[r.status_code] += 1
        assert r.status_code in (400, 403, 503), (
            f"{r.status_code} {r.text[:500]} for:\n{text[:2000]}"
        )
        path = tmp_path / "fuzz.yaml"
        path.write_bytes(data)
        checks[_check_in_process(runner, path)] += 1
        if sum(checks.values()) % 25 == 0 and len(kept) < 12:  # spread over the run
            kept.append(data)

    with HealthWatch(int(base.rsplit(":", 1)[1])) as health:
        fuzz()
        # a few real processes, as a user runs it: several mutated files per run
        files = []
        for i, data in enumerate(kept):
            f = tmp_path / f"kept-{i}.yaml"
            f.write_bytes(data)
            files.append(str(f))
        runs = [files[i : i + 4] for i in range(0, len(files), 4)]
        for chunk in runs:
            p = subprocess.run(
                [sys.executable, "-m", "spotd.cli.main", "check", *chunk],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=ROOT,
                env={**os.environ, "SPOTD_HOME": str(daemon.home)},
            )
            assert p.returncode in (0, 1), p.stderr[-2000:]
            assert "Traceback" not in p.stderr + p.stdout, p.stderr[-2000:]
    took = time.monotonic() - t0
    total = sum(statuses.values())
    report = (
        f"\ntask YAML fuzzer: {total} dry-run launches {dict(sorted(statuses.items()))}, "
        f"{sum(services.values())} service ups {dict(services)}, "
        f"{sum(checks.values())} in-process `spotctl check` runs (exit codes {dict(checks)}), "
        f"{len(runs)} `spotctl check` processes over "
        f"{len(files)} files, in {took:.0f} s (seed {SEED}); {health.check()}"
    )
    with capsys.disabled():
        print(report)
    assert total >= YAML_EXAMPLES // 2
    _no_server_errors(daemon)
