"""The small syntaxes inside a task YAML, parsed into frozen values.

SkyPilot packs a lot into scalars: ``A100:8``, ``T4:0.5``, ``{A100:8, H100:8}``, ``4+``,
``32+``, ``4x``, ``aws/us-east-1/us-east-1a``, ``6h``. Each has one parser here, pure and
table-testable, that raises ``SyntaxProblem`` with a message saying what the syntax is, so
the user learns the right form from the error. ``SyntaxProblem.at`` locates the problem
inside the value (the key of a bad entry in an accelerator mapping, the index in a list), so
``spotd.spec`` can name ``resources.accelerators[1]`` rather than only the field.

Every value prints back in the YAML syntax it came from (``str(Amount(4, plus=True))`` is
``4+``), which is what makes ``Task.to_yaml`` round-trip.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

Path = tuple[str | int, ...]


class SyntaxProblem(ValueError):
    """A value that does not follow its syntax; ``at`` is the path inside the value."""

    def __init__(self, message: str, at: Path = ()) -> None:
        super().__init__(message)
        self.at = at


def number_text(x: float) -> str:
    """``8.0`` -> ``8``, ``0.5`` -> ``0.5``: counts print the way users write them."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def yaml_number(x: float) -> int | float:
    """The number as it should appear in YAML/JSON (``8``, not ``8.0``)."""
    return int(x) if float(x).is_integer() else float(x)


def _is_number(value: object) -> bool:
    # bool is an int subclass; `use_spot: yes` must never count as 1 GPU
    return isinstance(value, int | float) and not isinstance(value, bool)


def _shown(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


# -- durations ---------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)([smhdw])")
_UNIT_SECONDS = (("w", 604800.0), ("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0))
_DURATION_HELP = "a duration is seconds (90) or a number with a unit: 90s, 15m, 6h, 2d, 1h30m"


def parse_duration(value: str | float | timedelta) -> float:
    """Seconds in ``value``: ``"90s"``, ``"15m"``, ``"6h"``, ``"2d"``, ``"1h30m"``, plain
    numbers (and numeric strings) are seconds. Negative or non-finite durations are refused.

    Raises ``SyntaxProblem`` (a ``ValueError``) on anything else, ``TypeError`` never: the
    API passes user text straight in.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif _is_number(value):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            units = dict(_UNIT_SECONDS)
            pos, seconds = 0, 0.0
            for m in _DURATION_PART.finditer(text):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * units[m.group(2)]
                pos = m.end()
            if pos != len(text) or not text:
                raise SyntaxProblem(f"{_DURATION_HELP}; got `{_shown(value)}`") from None
    else:
        raise SyntaxProblem(f"{_DURATION_HELP}; got {_shown(value)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise SyntaxProblem(f"a duration must be a finite number >= 0; got `{_shown(value)}`")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact text for ``seconds``: 5400 -> ``1h30m``, 0.5 -> ``0.5s``."""
    if not float(seconds).is_integer():
        return f"{number_text(seconds)}s"
    left = int(seconds)
    parts: list[str] = []
    for unit, size in _UNIT_SECONDS:
        n, left = divmod(left, int(size))
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts) or "0s"


# -- accelerators ------------------------------------------------------------------------

# Canonical spellings of common accelerator names, so `a100:8` matches the catalog's `A100`.
# Names not listed are kept as written (a catalog may know types spotd does not).
_CANONICAL_ACCELERATORS = frozenset(
    {
        "A100",
        "A100-80GB",
        "A10",
        "A10G",
        "A40",
        "B100",
        "B200",
        "GB200",
        "GH200",
        "H100",
        "H100-MEGA",
        "H100-80GB",
        "H200",
        "K80",
        "L4",
        "L40",
        "L40S",
        "M60",
        "MI250",
        "MI300X",
        "P100",
        "P4",
        "T4",
        "T4G",
        "V100",
        "V100-32GB",
        "RTX4090",
        "RTX6000",
        "RTXPRO6000",
    }
)
_ACCEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_ACCEL_HELP = "an accelerator is NAME or NAME:COUNT, e.g. A100, A100:8, T4:0.5"


def canonical_accelerator(name: str) -> str:
    upper = name.upper()
    return upper if upper in _CANONICAL_ACCELERATORS else name


@dataclass(frozen=True, slots=True)
class Accelerator:
    """One accelerator model and how many of it a node needs (fractions below 1 share one)."""

    name: str
    count: float = 1.0

    def __str__(self) -> str:
        return f"{self.name}:{number_text(self.count)}"


def _check_count(count: float, what: str, at: Path) -> float:
    if not math.isfinite(count) or count <= 0:
        raise SyntaxProblem(f"accelerator count must be > 0 in `{what}`", at)
    if count > 1 and not count.is_integer():
        raise SyntaxProblem(
            f"a fractional accelerator count must be below 1 (T4:0.5), got `{what}`", at
        )
    return count


def _check_name(name: str, what: str, at: Path) -> str:
    if not name:
        raise SyntaxProblem(f"accelerator name is missing in `{what}`; {_ACCEL_HELP}", at)
    if not _ACCEL_NAME.fullmatch(name):
        raise SyntaxProblem(f"bad accelerator name `{name}`; {_ACCEL_HELP}", at)
    return canonical_accelerator(name)


def parse_accelerator(text: str, at: Path = ()) -> Accelerator:
    """``"A100:8"`` -> ``Accelerator("A100", 8)``; ``"A100"`` is one."""
    name, sep, count_text = text.strip().partition(":")
    name = _check_name(name.strip(), text, at)
    if not sep:
        return Accelerator(name, 1.0)
    try:
        count = float(count_text.strip())
    except ValueError:
        raise SyntaxProblem(
            f"accelerator count must be a number, got `{count_text.strip()}` in `{text}`; "
            f"{_ACCEL_HELP}",
            at,
        ) from None
    return Accelerator(name, _check_count(count, text, at))


@dataclass(frozen=True, slots=True)
class AcceleratorChoice:
    """What ``accelerators:`` asked for: one model, or several to choose from.

    ``ordered`` False is SkyPilot's mapping form ``{A100: 8, H100: 8}`` (any of them, the
    cheapest wins); True is the list form ``[A100:8, H100:8]`` (earlier entries preferred).
    """

    options: tuple[Accelerator, ...]
    ordered: bool = False

    @property
    def single(self) -> Accelerator | None:
        return self.options[0] if len(self.options) == 1 else None

    def yaml_value(self) -> str | dict[str, int | float] | list[str]:
        """The value in SkyPilot's syntax, the inverse of ``parse_accelerators``."""
        if len(self.options) == 1:
            return str(self.options[0])
        if self.ordered:
            return [str(a) for a in self.options]
        return {a.name: yaml_number(a.count) for a in self.options}

    def __str__(self) -> str:
        if len(self.options) == 1:
            return str(self.options[0])
        inner = ", ".join(str(a) for a in self.options)
        return f"[{inner}]" if self.ordered else f"{{{inner}}}"


def parse_accelerators(value: Any) -> AcceleratorChoice | None:
    """Every SkyPilot form of ``accelerators:``.

    ``A100:8`` (string), ``{A100: 8, H100: 8}`` (any of), ``[A100:8, H100:8]`` (ordered).
    Note that YAML reads the flow mapping ``{A100:8, H100:8}`` (no space after the colon) as
    the keys ``"A100:8"`` and ``"H100:8"`` with null values; that is accepted too, as
    SkyPilot does.
    """
    if value is None:
        return None
    if isinstance(value, AcceleratorChoice):
        return value
    if isinstance(value, str):
        return AcceleratorChoice((parse_accelerator(value),))
    if isinstance(value, dict):
        if not value:
            raise SyntaxProblem("an empty mapping of accelerators; " + _ACCEL_HELP)
        options: list[Accelerator] = []
        for key, count in value.items():
            key_text = str(key)
            at: Path = (key_text,)
            if count is None:
                options.append(parse_accelerator(key_text, at))
            elif ":" in key_text:
                raise SyntaxProblem(f"give the count once: `{key_text}: {count}`", at)
            elif not _is_number(count):
                raise SyntaxProblem(
                    f"the count of `{key_text}` must be a number, got {_shown(count)}", at
                )
            else:
                name = _check_name(key_text, key_text, at)
                options.append(Accelerator(name, _check_count(float(count), key_text, at)))
        return AcceleratorChoice(_unique(options, [(str(k),) for k in value]), ordered=False)
    if isinstance(value, list):
        if not value:
            raise SyntaxProblem("an empty list of accelerators; " + _ACCEL_HELP)
        items: list[Accelerator] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise SyntaxProblem(f"expected `NAME:COUNT`, got {_shown(item)}", (i,))
            items.append(parse_accelerator(item, (i,)))
        return AcceleratorChoice(_unique(items, [(i,) for i in range(len(items))]), ordered=True)
    raise SyntaxProblem(
        f"{_ACCEL_HELP}, a mapping of them (any of) or a list (in order of preference); "
        f"got {_shown(value)}"
    )


def _unique(options: list[Accelerator], places: list[Path]) -> tuple[Accelerator, ...]:
    seen: set[str] = set()
    for a, at in zip(options, places, strict=True):
        if a.name in seen:
            raise SyntaxProblem(f"`{a.name}` is listed twice", at)
        seen.add(a.name)
    return tuple(options)


# -- cpus and memory ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Amount:
    """``4`` (exactly 4) or ``4+`` (at least 4)."""

    value: float
    plus: bool = False

    def __str__(self) -> str:
        return f"{number_text(self.value)}{'+' if self.plus else ''}"

    def yaml_value(self) -> int | float | str:
        return str(self) if self.plus else yaml_number(self.value)


@dataclass(frozen=True, slots=True)
class Memory:
    """``32`` GiB exactly, ``32+`` at least 32 GiB, or ``4x``: at least 4 GiB per vCPU."""

    gib: float | None = None
    per_cpu: float | None = None
    plus: bool = False

    def __str__(self) -> str:
        if self.per_cpu is not None:
            return f"{number_text(self.per_cpu)}x"
        assert self.gib is not None
        return f"{number_text(self.gib)}{'+' if self.plus else ''}"

    def yaml_value(self) -> int | float | str:
        if self.per_cpu is None and not self.plus and self.gib is not None:
            return yaml_number(self.gib)
        return str(self)


_PLAIN_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def _positive(text: str) -> float | None:
    # a strict pattern: float() would also take "+4", "1e3", "inf" and "nan"
    if not _PLAIN_NUMBER.fullmatch(text):
        return None
    x = float(text)
    return x if x > 0 else None


_CPUS_HELP = "cpus is a number of vCPUs: 4 (exactly) or 4+ (at least 4)"
_MEMORY_HELP = (
    "memory is GiB: 32 (exactly) or 32+ (at least), or GiB per vCPU: 4x; "
    "units such as GB are not part of the syntax"
)


def parse_cpus(value: Any) -> Amount | None:
    if value is None or isinstance(value, Amount):
        return value
    if _is_number(value):
        if not (math.isfinite(value) and value > 0):
            raise SyntaxProblem(f"{_CPUS_HELP}; it must be > 0, got {value}")
        return Amount(float(value))
    if isinstance(value, str):
        text = value.strip()
        plus = text.endswith("+")
        x = _positive(text[:-1] if plus else text)
        if x is not None:
            return Amount(x, plus)
    raise SyntaxProblem(f"{_CPUS_HELP}; got `{_shown(value)}`")


def parse_memory(value: Any) -> Memory | None:
    if value is None or isinstance(value, Memory):
        return value
    if _is_number(value):
        if not (math.isfinite(value) and value > 0):
            raise SyntaxProblem(f"{_MEMORY_HELP}; it must be > 0, got {value}")
        return Memory(gib=float(value))
    if isinstance(value, str):
        text = value.strip()
        if text.lower().endswith("x"):
            x = _positive(text[:-1])
            if x is not None:
                return Memory(per_cpu=x, plus=True)
        else:
            plus = text.endswith("+")
            x = _positive(text[:-1] if plus else text)
            if x is not None:
                return Memory(gib=x, plus=plus)
    raise SyntaxProblem(f"{_MEMORY_HELP}; got `{_shown(value)}`")


# -- where: infra, cloud, region, zone ---------------------------------------------------

# provider names spotd has, keyed by every spelling SkyPilot users write
_PROVIDERS = (
    ("aws", "aws"),
    ("kubernetes", "k8s"),
    ("k8s", "k8s"),
    ("slurm", "slurm"),
    ("local", "local"),
)
_OTHER_SKYPILOT_CLOUDS = frozenset(
    {
        "gcp",
        "azure",
        "lambda",
        "runpod",
        "oci",
        "ibm",
        "scp",
        "vsphere",
        "cudo",
        "fluidstack",
        "paperspace",
        "do",
        "nebius",
        "vast",
        "hyperbolic",
        "seeweb",
        "primeintellect",
        "ssh",
        "shadeform",
        "coreweave",
        "cloudflare",
        "r2",
    }
)


def provider_names() -> tuple[str, ...]:
    """Cloud names accepted in ``cloud:`` / ``infra:`` (``kubernetes`` and ``k8s`` both)."""
    return tuple(name for name, _ in _PROVIDERS)


def is_other_cloud(name: str) -> bool:
    """A cloud SkyPilot knows (``gcp``, ``azure``, ``lambda``...) that spotd has no provider
    for."""
    return name.strip().lower() in _OTHER_SKYPILOT_CLOUDS


def parse_cloud(name: str, at: Path = (), *, others: bool = False) -> str:
    """A cloud name -> spotd's provider name (``Kubernetes`` -> ``k8s``).

    ``others``: a cloud SkyPilot knows but spotd has no provider for (``gcp``) is returned as
    it is (lower case) instead of refused; ``spotctl check`` reads files that way, and warns
    that nothing can be placed there.
    """
    lowered = name.strip().lower()
    for spelling, provider in _PROVIDERS:
        if lowered == spelling:
            return provider
    supported = ", ".join(provider_names())
    if lowered in _OTHER_SKYPILOT_CLOUDS and others:
        return lowered
    if lowered in _OTHER_SKYPILOT_CLOUDS:
        raise SyntaxProblem(
            f"cloud `{name}` is not supported by spotd (supported: {supported})", at
        )
    raise SyntaxProblem(f"unknown cloud `{name}` (supported: {supported})", at)


@dataclass(frozen=True, slots=True)
class Location:
    """Where a task may run; None means anywhere at that level."""

    provider: str | None = None
    region: str | None = None
    zone: str | None = None


def parse_infra(text: str, *, others: bool = False) -> Location:
    """SkyPilot's ``infra:``: ``aws``, ``aws/us-east-1``, ``aws/us-east-1/us-east-1a``,
    ``k8s/my-context`` (the context is the region; it may itself contain ``/``),
    ``slurm/partition``, ``local/local-east``; ``*`` stands for any cloud or region.
    ``others`` as in ``parse_cloud``.
    """
    parts = text.strip().split("/")
    if any(not p.strip() for p in parts):
        raise SyntaxProblem(
            f"infra is CLOUD, CLOUD/REGION or CLOUD/REGION/ZONE, got `{_shown(text)}`"
        )
    parts = [p.strip() for p in parts]
    provider = None if parts[0] == "*" else parse_cloud(parts[0], others=others)
    rest = parts[1:]
    if provider == "k8s":
        # Kubernetes contexts (EKS ARNs, GKE names) contain slashes: the whole rest is one
        # context, and a context has no zones.
        return Location(provider, "/".join(rest) or None, None)
    if len(rest) > 2:
        raise SyntaxProblem(f"infra has at most three parts (CLOUD/REGION/ZONE): `{text}`")
    region = rest[0] if rest and rest[0] != "*" else None
    zone = rest[1] if len(rest) > 1 and rest[1] != "*" else None
    return Location(provider, region, zone)


# -- ports -------------------------------------------------------------------------------

_PORTS_HELP = "ports are numbers (8080), ranges (10000-10010) or a list of them"


def _port(text: str, at: Path) -> int:
    try:
        port = int(text.strip())
    except ValueError:
        raise SyntaxProblem(f"{_PORTS_HELP}; got `{_shown(text)}`", at) from None
    if not 1 <= port <= 65535:
        raise SyntaxProblem(f"port {port} is outside 1-65535", at)
    return port


def parse_ports(value: Any) -> tuple[str, ...]:
    """``8080`` / ``"8080"`` / ``"10000-10010"`` / a list of those -> normalised texts."""
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else [value]
    out: list[str] = []
    for i, item in enumerate(items):
        at: Path = (i,) if isinstance(value, list | tuple) else ()
        if _is_number(item) and float(item).is_integer():
            out.append(str(_port(str(int(item)), at)))
        elif isinstance(item, str) and "-" in item.strip()[1:]:
            lo_text, _, hi_text = item.strip().partition("-")
            lo, hi = _port(lo_text, at), _port(hi_text, at)
            if lo > hi:
                raise SyntaxProblem(f"port range `{item}` runs backwards", at)
            out.append(f"{lo}-{hi}")
        elif isinstance(item, str):
            out.append(str(_port(item, at)))
        else:
            raise SyntaxProblem(f"{_PORTS_HELP}; got {_shown(item)}", at)
    return tuple(out)


def ports_yaml_value(ports: tuple[str, ...]) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in ports]


# -- disk size ---------------------------------------------------------------------------

_DISK_UNITS = (("tb", 1024.0), ("t", 1024.0), ("gb", 1.0), ("g", 1.0))
_DISK_HELP = "disk_size is GB: 256, 256GB or 1TB"


def parse_disk_size(value: Any) -> int | None:
    """``256`` / ``"256"`` / ``"256GB"`` / ``"1TB"`` -> whole GB (SkyPilot's units); > 0."""
    if value is None:
        return None
    if _is_number(value):
        gb = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        factor = 1.0
        for unit, size in _DISK_UNITS:
            if text.endswith(unit):
                text, factor = text[: -len(unit)], size
                break
        x = _positive(text)
        if x is None:
            raise SyntaxProblem(f"{_DISK_HELP}; got `{_shown(value)}`")
        gb = x * factor
    else:
        raise SyntaxProblem(f"{_DISK_HELP}; got {_shown(value)}")
    if not (math.isfinite(gb) and gb >= 1 and gb.is_integer()):
        raise SyntaxProblem(f"{_DISK_HELP}, a whole number of GB >= 1; got `{_shown(value)}`")
    return int(gb)
