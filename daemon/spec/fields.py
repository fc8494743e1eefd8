"""What every spec model shares: the base class, and validators that speak the user's syntax.

The models run ``spotd.spec.values``' parsers as pydantic validators (``syntax``), so a bad
value reports the parser's message, not pydantic's. A validator that knows *where inside* a
value the problem is (``resources.accelerators[1]``) raises ``spotd_error(message, at)``;
``spotd.spec.issues`` appends ``at`` to the field's path when it turns errors into issues.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationInfo
from pydantic_core import PydanticCustomError

from spotd.spec.values import Path, SyntaxProblem, parse_duration

T = TypeVar("T")


class SpecModel(BaseModel):
    """Base of every spec model: unknown keys are errors, values are immutable.

    ``special_keys`` maps keys this section does not accept but users will write (SkyPilot
    keys spotd does not support, keys in the wrong place) to the message they get instead of
    a generic "unknown key".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    special_keys: ClassVar[Mapping[str, str]] = types.MappingProxyType({})


def not_supported(*keys: str, hint: str = "") -> Mapping[str, str]:
    """``special_keys`` entries for SkyPilot keys spotd refuses: "not supported by spotd"."""
    return types.MappingProxyType(
        {k: "not supported by spotd" + (f" ({hint})" if hint else "") for k in keys}
    )


# The validation context ``spotctl check`` reads with (``{CHECKING: True}``): what launch refuses
# only because spotd lacks it yet (another cloud, a bucket store, a pool, a docker image)
# is kept in the model, and ``Task.advisories()`` turns it into a warning instead.
CHECKING = "spotd_checking"


def checking(info: ValidationInfo | None) -> bool:
    """Whether this validation is ``spotctl check``'s (see ``CHECKING``), not a launch's."""
    context = info.context if info is not None else None
    return isinstance(context, Mapping) and bool(context.get(CHECKING))


def spotd_error(message: str, at: Path = ()) -> PydanticCustomError:
    """A validation error whose ``ctx['at']`` extends the field's loc (a key inside it)."""
    return PydanticCustomError("spotd", "{msg}", {"msg": message, "at": at})


def syntax(parse: Callable[[Any], T]) -> Callable[[Any], T]:
    """Run a ``spotd.spec.values`` parser as a pydantic validator, keeping its inner path."""

    def validate(value: Any) -> T:
        try:
            return parse(value)
        except SyntaxProblem as exc:
            raise spotd_error(str(exc), exc.at) from None

    return validate


def seconds(*, allow_zero: bool) -> Callable[[Any], float]:
    """A duration field (``90s``, ``6h``, a plain number) validated into seconds."""

    def validate(value: Any) -> float:
        secs: float = parse_duration(value)
        if not allow_zero and secs == 0:
            raise SyntaxProblem("a duration must be > 0")
        return secs

    return syntax(validate)


def optional_seconds(value: Any) -> float | None:
    """A duration that may be left out (null); when given it must be > 0."""
    return None if value is None else seconds(allow_zero=False)(value)


def label_value(value: Any) -> str:
    """A label or header value: any scalar, kept as the string it prints as."""
    if isinstance(value, str | int | float | bool):
        return str(value)
    raise spotd_error("expected a string or a number")


def enum_value(value: enum.StrEnum) -> str:
    # explicit, because pydantic's own enum serializer does not see through PlainValidator
    return value.value
