"""Helpers for end-to-end tests against a real daemon."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Any

ROOT_TRAIN = "examples"


def train_yaml(
    *,
    steps: int = 30,
    step_seconds: float = 0.05,
    ckpt_every: int = 5,
    extra_envs: str = "",
    recovery: str = "EAGER_NEXT_REGION",
    max_restarts: int = 0,
    name: str = "train",
) -> str:
    return f"""
name: {name}
resources:
  cpus: 1+
  use_spot: true
workdir: examples
envs:
  TRAIN_STEPS: {steps}
  STEP_SECONDS: {step_seconds}
  CKPT_EVERY: {ckpt_every}
{extra_envs}
job_recovery:
  strategy: {recovery}
  max_restarts_on_errors: {max_restarts}
run: python3 train.py
"""


def expected_digest(steps: int) -> str:
    state = hashlib.sha256(b"spotd-train-seed").hexdigest()
    for step in range(steps):
        state = hashlib.sha256(f"{state}:{step}".encode()).hexdigest()
    return state


async def wait_job(
    client: Any,
    job_id: int,
    pred: Callable[[dict[str, Any]], bool],
    timeout: float = 120.0,
    what: str = "condition",
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = await client.job(job_id)
        if pred(job):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; job is {job}")


async def logs(client: Any, job_id: int, attempt: int | None = None) -> str:
    return b"".join([c async for c in client.logs(job_id, attempt=attempt)]).decode()


async def wait_log(
    client: Any, job_id: int, needle: str, *, attempt: int | None = None, timeout: float = 60.0
) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    from spotd.sdk.client import ApiError

    while time.monotonic() < deadline:
        try:
            text = await logs(client, job_id, attempt)
        except ApiError as exc:  # the attempt does not exist yet
            if exc.status != 404:
                raise
            text = ""
        if needle in text:
            return text
        await asyncio.sleep(0.1)
    raise AssertionError(f"{needle!r} never appeared in the logs:\n{text[-2000:]}")


def digest_of(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("DIGEST "):
            return line.split()[1]
    return None
