"""A user program exited non-zero on a live instance: restart it or fail the job?

SkyPilot's ``job_recovery`` semantics:

- an exit code listed in ``recover_on_exit_codes`` always restarts the job, and that restart
  does *not* count towards ``max_restarts_on_errors`` (these codes mean "transient, try
  again", e.g. an NCCL timeout; a program can also exit with one on purpose to be restarted);
- any other non-zero code restarts the job while fewer than ``max_restarts_on_errors`` counted
  restarts have happened, and fails it after that (the default, 0, fails at once).

Preemptions never come here: they are always recovered and counted apart (see
``detection``). Exit code 0 is success and is not a question for this module.

    exit 1, max 0, codes [],   so far 0 -> Fail
    exit 1, max 2, codes [],   so far 1 -> Restart (counts: 2 of 2)
    exit 1, max 2, codes [],   so far 2 -> Fail
    exit 33, max 0, codes [33], so far 5 -> Restart (does not count)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Fail", "Restart", "on_job_exit"]


@dataclass(frozen=True, slots=True)
class Restart:
    reason: str
    counts: bool  # True: the restart counts towards max_restarts_on_errors


@dataclass(frozen=True, slots=True)
class Fail:
    reason: str


def on_job_exit(
    exit_code: int,
    *,
    max_restarts_on_errors: int,
    recover_on_exit_codes: Sequence[int],
    user_restarts_so_far: int,
) -> Restart | Fail:
    """Decide what a non-zero exit of the user's program leads to (module docstring)."""
    if exit_code == 0:
        raise ValueError("exit code 0 is success, not a failure to recover from")
    if exit_code in recover_on_exit_codes:
        return Restart(
            f"exit code {exit_code} is in recover_on_exit_codes (not counted)", counts=False
        )
    if user_restarts_so_far < max_restarts_on_errors:
        n = user_restarts_so_far + 1
        return Restart(f"restart {n} of {max_restarts_on_errors} on errors", counts=True)
    if max_restarts_on_errors <= 0:
        return Fail(f"exit code {exit_code}; max_restarts_on_errors is 0")
    return Fail(f"exit code {exit_code}; all {max_restarts_on_errors} restart(s) on errors used")
