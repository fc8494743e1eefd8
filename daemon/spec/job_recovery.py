"""``job_recovery:``: how a managed job is recovered after a preemption or a failure.

Written as a strategy name (``job_recovery: EAGER_NEXT_REGION``) or a mapping. SkyPilot's
keys (``strategy``, ``max_restarts_on_errors``, ``recover_on_exit_codes``) mean what they mean
there; spotd adds ``deadline``, ``expected_duration`` and ``give_up_after``.

Deadlines: ``deadline`` is either an absolute ``datetime`` or a ``timedelta`` counted from the
job's submission (``deadline: 6h``); ``JobRecovery.resolve_deadline(now)`` turns either into
epoch seconds. A naive datetime is local time.

Older SkyPilot files put ``job_recovery`` under ``resources``; ``hoist_job_recovery`` moves it
to the top level before validation (the loader and ``Task`` both apply it).
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any

from pydantic import AliasChoices, Field, PlainSerializer, PlainValidator, model_validator

from spotd.spec.fields import SpecModel, enum_value, optional_seconds, seconds, spotd_error
from spotd.spec.values import Path, SyntaxProblem, format_duration, parse_duration
from spotd.types import RecoveryStrategy


def _v_strategy(value: Any) -> RecoveryStrategy:
    if isinstance(value, RecoveryStrategy):
        return value
    names = [s.value for s in RecoveryStrategy]
    if isinstance(value, str):
        text = value.strip().upper()
        if text in names:
            return RecoveryStrategy(text)
        return _unknown_choice("strategy", value, names)
    raise spotd_error(f"expected a strategy name: {', '.join(names)}")


def _unknown_choice(what: str, value: str, names: list[str]) -> typing.NoReturn:
    close = difflib.get_close_matches(value.strip().upper(), names, n=1, cutoff=0.5)
    hint = f"; did you mean `{close[0]}`?" if close else ""
    raise spotd_error(f"unknown {what} `{value}` (expected one of {', '.join(names)}){hint}")


def _v_deadline(value: Any) -> datetime | timedelta | None:
    """ISO-8601 time, or a duration from submission; YAML may already give a datetime/date."""
    if value is None or isinstance(value, datetime | timedelta):
        return value
    if isinstance(value, date):
        return datetime.combine(value, time())
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        try:
            return timedelta(seconds=parse_duration(value))
        except SyntaxProblem:
            pass
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.strip())
            except ValueError:
                pass
    raise spotd_error(
        "deadline is an ISO-8601 time (2025-06-01T12:00:00Z) or a duration from submission "
        "(6h, 90m)"
    )


def _s_deadline(value: datetime | timedelta | None) -> str | None:
    if value is None:
        return None
    text: str = (
        format_duration(value.total_seconds())
        if isinstance(value, timedelta)
        else value.isoformat()
    )
    return text


def _v_exit_codes(value: Any) -> list[int]:
    codes = value if isinstance(value, list) else [value]
    out: list[int] = []
    for i, code in enumerate(codes):
        at: Path = (i,) if isinstance(value, list) else ()
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 255:
            raise spotd_error(f"an exit code is an integer 0-255, got {code!r}", at)
        out.append(code)
    return out


class JobRecovery(SpecModel):
    """``job_recovery``: how a managed job is recovered, as a name or a mapping.

    ``max_restarts_on_errors`` / ``recover_on_exit_codes`` are SkyPilot's (restarts after the
    user's program fails; preemptions are always recovered). spotd adds ``deadline``,
    ``expected_duration`` (the compute time the job needs; the DEADLINE strategy requires it
    to know its slack) and ``give_up_after`` (how long to keep looking for capacity before
    ``FAILED_NO_RESOURCE``); for DEADLINE, ``restart_overhead`` (what one relaunch costs before
    the work resumes: boot, setup, restore; default 1m) and ``safety_margin`` (slack kept in
    reserve; default 30s). Durations are stored in seconds under ``*seconds`` names; the
    YAML names (``give_up_after: 1h``) and the stored names are both accepted.
    """

    strategy: Annotated[
        RecoveryStrategy, PlainValidator(_v_strategy), PlainSerializer(enum_value)
    ] = RecoveryStrategy.EAGER_NEXT_REGION
    max_restarts_on_errors: int = Field(default=0, ge=0)
    recover_on_exit_codes: Annotated[list[int], PlainValidator(_v_exit_codes)] = Field(
        default_factory=list
    )
    deadline: Annotated[
        datetime | timedelta | None, PlainValidator(_v_deadline), PlainSerializer(_s_deadline)
    ] = None
    expected_duration_seconds: Annotated[float | None, PlainValidator(optional_seconds)] = Field(
        default=None,
        validation_alias=AliasChoices("expected_duration", "expected_duration_seconds"),
        serialization_alias="expected_duration",
    )
    give_up_after_seconds: Annotated[float, PlainValidator(seconds(allow_zero=True))] = Field(
        default=3600.0,
        validation_alias=AliasChoices("give_up_after", "give_up_after_seconds"),
        serialization_alias="give_up_after",
    )
    # DEADLINE: what one (re)launch costs before work resumes, and the slack kept in reserve
    restart_overhead_seconds: Annotated[float, PlainValidator(seconds(allow_zero=True))] = Field(
        default=60.0,
        validation_alias=AliasChoices("restart_overhead", "restart_overhead_seconds"),
        serialization_alias="restart_overhead",
    )
    safety_margin_seconds: Annotated[float, PlainValidator(seconds(allow_zero=True))] = Field(
        default=30.0,
        validation_alias=AliasChoices("safety_margin", "safety_margin_seconds"),
        serialization_alias="safety_margin",
    )

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        if data is None:
            return {}
        return {"strategy": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _deadline_needs_duration(self) -> typing.Self:
        if self.strategy is RecoveryStrategy.DEADLINE and self.expected_duration_seconds is None:
            raise spotd_error(
                "the DEADLINE strategy needs `expected_duration` (the compute time of the job)",
                ("strategy",),
            )
        return self

    def resolve_deadline(self, now: float) -> float | None:
        """The deadline in epoch seconds, a relative one counted from ``now`` (submission)."""
        if self.deadline is None:
            return None
        if isinstance(self.deadline, timedelta):
            return now + self.deadline.total_seconds()
        return self.deadline.astimezone().timestamp()

    resolve = resolve_deadline


def hoist_job_recovery(data: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Move ``resources.job_recovery`` to the top level; True when it moved.

    Written in both places is an error, left in place so that validation reports it on
    ``resources.job_recovery``.
    """
    out = dict(data)
    resources = out.get("resources")
    if not isinstance(resources, dict) or "job_recovery" not in resources:
        return out, False
    if "job_recovery" in out:
        return out, False
    resources = dict(resources)
    out["job_recovery"] = resources.pop("job_recovery")
    out["resources"] = resources
    return out, True
