"""SIGKILL one of the two real vLLM replicas (its whole process group) while a separate load
process sends plain completions through the spotd LB: not one request fails, and the tokens
are counted from each answer's ``usage``.

Runs after test_serving.py (file order); the ``vllm_service`` fixture restarts the victim for
any test that comes later."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from .conftest import HERE, ROOT, TIER_TIMEOUT_S, Service, group_alive

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(TIER_TIMEOUT_S)]

MAX_REQUESTS = 300
MAX_SECONDS = 60
CONCURRENCY = 8
MAX_TOKENS = 16
KILL_AFTER = 60  # answers before the kill


def test_sigkill_one_replica_under_load_loses_no_plain_request(vllm_service: Service) -> None:
    victim, survivor = vllm_service.replicas
    before = vllm_service.lb.replicas()
    load = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "load.py"),
            "--url",
            vllm_service.url,
            "--model",
            vllm_service.model,
            "--requests",
            str(MAX_REQUESTS),
            "--seconds",
            str(MAX_SECONDS),
            "--concurrency",
            str(CONCURRENCY),
            "--max-tokens",
            str(MAX_TOKENS),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    answered_at_kill = None
    kill_t = None
    result = None
    try:
        assert load.stdout is not None
        for line in load.stdout:
            if line.startswith("progress ") and answered_at_kill is None:
                n = int(line.split()[1])
                if n >= KILL_AFTER:
                    victim.kill9_group()
                    kill_t = time.monotonic()
                    answered_at_kill = n
            elif line.startswith("result "):
                result = json.loads(line[len("result ") :])
        load.wait(30)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(10)
        stderr = load.stderr.read() if load.stderr else ""
        if load.stderr:
            load.stderr.close()
        if load.stdout:
            load.stdout.close()
    assert result is not None, f"load process gave no result (exit {load.returncode}):\n{stderr}"
    assert answered_at_kill is not None, f"load ended before {KILL_AFTER} answers: {result}"

    # The kill took the whole group: API server and engine core alike.
    assert not group_alive(victim.pgid)
    # Not one plain request failed, and every answer carried MAX_TOKENS tokens in `usage`.
    assert result["failed"] == 0, result["failures"]
    assert result["ok"] == result["sent"]
    assert result["completion_tokens"] == MAX_TOKENS * result["ok"]
    assert result["prompt_tokens"] > 0
    # The load went on well past the kill, on the survivor alone.
    assert result["ok"] - answered_at_kill >= 50, result
    after = vllm_service.lb.replicas()
    assert after[victim.id]["ejected"] is True, after
    # Attempts the kill cut off (in flight, or sent to the dead port before the ejection) were
    # retried on the survivor: the client saw none of them.
    assert after[victim.id]["failures"] >= 1, after
    assert after[survivor.id]["ejected"] is False, after
    assert all(row["in_flight"] == 0 for row in after.values()), after
    survivor_share = after[survivor.id]["requests"] - before[survivor.id]["requests"]
    victim_share = after[victim.id]["requests"] - before[victim.id]["requests"]
    assert victim_share > 0, (before, after)  # it did serve load before it died
    assert survivor_share >= result["ok"] - victim_share, (before, after, result)
    assert kill_t is not None
    print(
        f"load: {result}; kill after {answered_at_kill} answers, "
        f"{time.monotonic() - kill_t:.1f} s of load after the kill (incl. drain); "
        f"attempts cut off by the kill and retried: {after[victim.id]['failures']}"
    )
