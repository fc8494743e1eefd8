"""The task YAML: SkyPilot's format, parsed into typed, frozen pydantic models.

A task file is what users already have from SkyPilot, so spotd reads that format as it is
(``resources``, ``envs``, ``file_mounts``, ``setup``, ``run``, ``service``, ``job_recovery``,
several ``---`` documents for a pipeline) and says clearly what it does not do: a SkyPilot key
spotd has no use for (``volumes``, ``resources.autostop``, ``mode: MOUNT``) is an error that
says "not supported by spotd", never a silent no-op and never a traceback.

Errors are for humans fixing a file, so each one names the key path *and* the line, and all of
them are reported at once::

    train.yaml:3: resources.acclerators: unknown key; did you mean `accelerators`?
    train.yaml:4: resources.memory: memory is GiB: 32 (exactly) or 32+ (at least), ...

How: ``spotd.spec.load`` composes the YAML into nodes to learn the line of every key path,
the plain data is validated by the models below (``extra="forbid"`` everywhere), and every
pydantic error's ``loc`` is turned back into a user's key path and looked up for its line.

Round trip: each model dumps in the YAML syntax it was written in (``accelerators`` back to
``A100:8`` / ``{A100: 8, H100: 8}`` / ``[A100:8, H100:8]``, ``cpus`` back to ``4+``), so
``Task.model_validate(task.model_dump())`` and ``load_task(text=task.to_yaml())`` give an
equal task. The daemon stores ``model_dump_json(exclude_unset=True)`` (so `any_of`/`ordered` entries keep
inheriting the top-level fields) and rebuilds the task from it.

Deadlines: ``job_recovery.deadline`` is either an absolute ``datetime`` or a ``timedelta``
counted from the job's submission (``deadline: 6h``); ``JobRecovery.resolve_deadline(now)``
turns either into epoch seconds. A naive datetime is local time.
"""

from __future__ import annotations

import difflib
import enum
import re
import types
import typing
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from datetime import date, datetime, time, timedelta
from pathlib import Path as FsPath
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from spotd.spec.errors import SpecError, SpecIssue
from spotd.spec.values import (
    AcceleratorChoice,
    Amount,
    Location,
    Memory,
    SyntaxProblem,
    format_duration,
    number_text,
    parse_accelerators,
    parse_cloud,
    parse_cpus,
    parse_duration,
    parse_infra,
    parse_memory,
    parse_ports,
    ports_yaml_value,
)
from spotd.spec.load import Document, Path, compose_documents
from spotd.types import RecoveryStrategy, ResourceOption, ResourceRequest

__all__ = [
    "FileMount",
    "JobRecovery",
    "LoadBalancingPolicy",
    "ReadinessProbe",
    "ReplicaPolicy",
    "ResourceFields",
    "Resources",
    "ServiceSpec",
    "SpecError",
    "SpecIssue",
    "Task",
    "check_file",
    "load_task",
    "load_tasks",
    "parse_duration",
]

T = TypeVar("T")
REDACTED = "<redacted>"

# -- validators shared by the models -----------------------------------------------------


def _spotd_error(message: str, at: Path = ()) -> PydanticCustomError:
    """A validation error whose ``ctx['at']`` extends the field's loc (a key inside it)."""
    return PydanticCustomError("spotd", "{msg}", {"msg": message, "at": at})


def _syntax(parse: Callable[[Any], T]) -> Callable[[Any], T]:
    """Run a ``spec_values`` parser as a pydantic validator, keeping its inner path."""

    def validate(value: Any) -> T:
        try:
            return parse(value)
        except SyntaxProblem as exc:
            raise _spotd_error(str(exc), exc.at) from None

    return validate


def _seconds(*, allow_zero: bool) -> Callable[[Any], float]:
    def validate(value: Any) -> float:
        seconds: float = parse_duration(value)
        if not allow_zero and seconds == 0:
            raise SyntaxProblem("a duration must be > 0")
        return seconds

    return _syntax(validate)


def _optional_seconds(value: Any) -> float | None:
    return None if value is None else _seconds(allow_zero=False)(value)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_name(value: Any) -> str:
    name = str(value)
    if isinstance(value, bool) or not _ENV_NAME.fullmatch(name):
        raise _spotd_error(f"`{name}` is not a valid environment variable name")
    return name


def _env_value(value: Any) -> str:
    """Scalars become strings the way SkyPilot makes them (``str(v)``: ``true`` -> ``True``).

    A null value is a variable the user must supply at launch time. The message never
    repeats the value: it may be a secret.
    """
    if value is None:
        raise PydanticCustomError(
            "spotd_missing_env",
            'no value: supply it at launch with --env NAME=VALUE (for an empty value write "")',
        )
    if isinstance(value, str | int | float | bool):
        return str(value)
    raise PydanticCustomError(
        "spotd", "{msg}", {"msg": "expected a string, number or true/false", "at": ()}
    )


EnvName = Annotated[str, PlainValidator(_env_name)]
EnvValue = Annotated[str, PlainValidator(_env_value)]


def _label_value(value: Any) -> str:
    if isinstance(value, str | int | float | bool):
        return str(value)
    raise _spotd_error("expected a string or a number")


class _Model(BaseModel):
    """Base of every spec model: unknown keys are errors, values are immutable.

    ``special_keys`` maps keys this section does not accept but users will write (SkyPilot
    keys spotd does not support, keys in the wrong place) to the message they get instead of
    a generic "unknown key".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    special_keys: ClassVar[Mapping[str, str]] = types.MappingProxyType({})


def _not_supported(*keys: str, hint: str = "") -> dict[str, str]:
    return {k: "not supported by spotd" + (f" ({hint})" if hint else "") for k in keys}


# -- resources ---------------------------------------------------------------------------


def _v_cloud(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _spotd_error("expected a cloud name such as aws, kubernetes, slurm or local")
    try:
        parse_cloud(value)
    except SyntaxProblem as exc:
        raise _spotd_error(str(exc)) from None
    return value.strip().lower()


def _v_infra(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _spotd_error("infra is a string: CLOUD[/REGION[/ZONE]], e.g. aws/us-east-1")
    try:
        parse_infra(value)
    except SyntaxProblem as exc:
        raise _spotd_error(str(exc)) from None
    return value.strip()


AcceleratorsField = Annotated[
    AcceleratorChoice | None,
    PlainValidator(_syntax(parse_accelerators)),
    PlainSerializer(lambda v: None if v is None else v.yaml_value()),
]
CpusField = Annotated[
    Amount | None,
    PlainValidator(_syntax(parse_cpus)),
    PlainSerializer(lambda v: None if v is None else v.yaml_value()),
]
MemoryField = Annotated[
    Memory | None,
    PlainValidator(_syntax(parse_memory)),
    PlainSerializer(lambda v: None if v is None else v.yaml_value()),
]
PortsField = Annotated[
    tuple[str, ...],
    PlainValidator(_syntax(parse_ports)),
    PlainSerializer(ports_yaml_value),
]

_RESOURCE_NOT_SUPPORTED: dict[str, str] = {
    **_not_supported(
        "autostop",
        "network_tier",
        "disk_tier",
        "priority",
        "accelerator_args",
        "volumes",
        "_cluster_config_overrides",
        "_docker_login_config",
        "_is_image_managed",
        "_requires_fuse",
        "_no_missing_accel_warnings",
    ),
    "spot_recovery": "not supported by spotd (SkyPilot renamed it; write `job_recovery`)",
}


class ResourceFields(_Model):
    """The leaf fields of ``resources``; also the shape of one ``any_of``/``ordered`` entry."""

    special_keys: ClassVar[Mapping[str, str]] = types.MappingProxyType(
        {
            **_RESOURCE_NOT_SUPPORTED,
            "any_of": "any_of/ordered cannot be nested inside any_of/ordered",
            "ordered": "any_of/ordered cannot be nested inside any_of/ordered",
            "job_recovery": "job_recovery belongs at the top level or directly under resources",
        }
    )

    infra: Annotated[str | None, PlainValidator(_v_infra)] = None
    cloud: Annotated[str | None, PlainValidator(_v_cloud)] = None
    region: str | None = None
    zone: str | None = None
    accelerators: AcceleratorsField = None
    instance_type: str | None = None
    cpus: CpusField = None
    memory: MemoryField = None
    use_spot: bool | None = None
    disk_size: int | None = Field(default=None, ge=1)
    ports: PortsField = ()
    image_id: str | dict[str, str] | None = None
    labels: dict[str, Annotated[str, PlainValidator(_label_value)]] = Field(default_factory=dict)
    max_hourly_cost: float | None = Field(default=None, gt=0)

    def __hash__(self) -> int:
        """Hashable so that a *set* of Resources can say "any of these" (``set_resources``).

        Hashes the canonical JSON dump: equal models dump equally, so ``==`` and ``hash``
        agree (pydantic's own frozen hash would fail on the ``labels`` dict).
        """
        return hash(self.model_dump_json())

    @model_validator(mode="after")
    def _infra_or_cloud(self) -> typing.Self:
        if self.infra is not None:
            for key in ("cloud", "region", "zone"):
                if getattr(self, key) is not None:
                    raise _spotd_error(
                        f"give either `infra` or `cloud`/`region`/`zone`, not both "
                        f"(`{key}` is set too)",
                        ("infra",),
                    )
        return self

    def location(self) -> Location:
        """Where this asks to run, with spotd's provider names (``kubernetes`` -> ``k8s``)."""
        if self.infra is not None:
            return parse_infra(self.infra)
        provider = parse_cloud(self.cloud) if self.cloud is not None else None
        return Location(provider, self.region, self.zone)

    def located_over(self, base: Location) -> Location:
        """This entry's location laid over ``base`` (an ``any_of`` entry over the top level).

        ``infra`` replaces the whole location; otherwise each of cloud/region/zone that the
        entry sets replaces the base's, and setting a coarser one drops the base's finer ones
        (``cloud: aws`` over ``infra: k8s/ctx`` must not keep the Kubernetes context).
        """
        if self.infra is not None:
            return self.location()
        mine = self.location()
        if self.cloud is not None:
            return mine
        if self.region is not None:
            return Location(base.provider, mine.region, mine.zone)
        if self.zone is not None:
            return Location(base.provider, base.region, mine.zone)
        return base

    def options(self, location: Location | None = None) -> list[ResourceOption]:
        """One ``ResourceOption`` per accelerator choice (one option when there is none)."""
        where = location if location is not None else self.location()
        accelerators = self.accelerators.options if self.accelerators else (None,)
        return [
            ResourceOption(
                provider=where.provider,
                region=where.region,
                zone=where.zone,
                accelerator=acc.name if acc else None,
                accelerator_count=acc.count if acc else 0,
                cpus=self.cpus.value if self.cpus else None,
                cpus_plus=self.cpus.plus if self.cpus else True,
                memory_gb=self.memory.gib if self.memory else None,
                memory_plus=self.memory.plus if self.memory else True,
                memory_per_cpu=self.memory.per_cpu if self.memory else None,
                instance_type=self.instance_type,
                use_spot=bool(self.use_spot),
                max_hourly_cost=self.max_hourly_cost,
            )
            for acc in accelerators
        ]


class Resources(ResourceFields):
    """``resources:``; ``any_of``/``ordered`` entries are laid over the fields above them.

    ``job_recovery`` written under ``resources`` (older SkyPilot) is moved to the task's top
    level before validation; see ``Task``.
    """

    special_keys: ClassVar[Mapping[str, str]] = types.MappingProxyType(
        dict(_RESOURCE_NOT_SUPPORTED)
    )

    any_of: list[ResourceFields] | None = None
    ordered: list[ResourceFields] | None = None

    @model_validator(mode="after")
    def _one_way_to_choose(self) -> typing.Self:
        if self.any_of is not None and self.ordered is not None:
            raise _spotd_error("give either `any_of` or `ordered`, not both", ("ordered",))
        for key in ("any_of", "ordered"):
            if getattr(self, key) == []:
                raise _spotd_error(f"`{key}` needs at least one entry", (key,))
        several = self.accelerators is not None and len(self.accelerators.options) > 1
        if several and (self.any_of or self.ordered):
            raise _spotd_error(
                "a choice of several accelerators cannot be combined with any_of/ordered: "
                "put each accelerator in its own any_of/ordered entry",
                ("accelerators",),
            )
        return self

    def request(self) -> ResourceRequest:
        entries = self.any_of or self.ordered
        if not entries:
            ordered = self.accelerators.ordered if self.accelerators else False
            return ResourceRequest(tuple(self.options()), ordered=ordered)
        base = self.location()
        leaf_keys = set(ResourceFields.model_fields) - {"infra", "cloud", "region", "zone"}
        options: list[ResourceOption] = []
        for entry in entries:
            update = {k: getattr(entry, k) for k in entry.model_fields_set if k in leaf_keys}
            merged = ResourceFields.model_construct(
                **{k: getattr(self, k) for k in ResourceFields.model_fields} | update
            )
            options.extend(merged.options(entry.located_over(base)))
        return ResourceRequest(tuple(options), ordered=self.ordered is not None)


# What ``Task.set_resources`` takes: one choice, a list (ordered) or a set (any of).
ResourcesChoice = ResourceFields | list[Resources] | tuple[Resources, ...] | AbstractSet[Resources]


# -- file mounts -------------------------------------------------------------------------


def _v_mount_mode(value: Any) -> Literal["COPY"]:
    text = str(value).strip().upper() if value is not None else "COPY"
    if text == "COPY":
        return "COPY"
    if text in ("MOUNT", "MOUNT_CACHED"):
        raise _spotd_error(f"mode {text} is not supported by spotd: file mounts are copied (COPY)")
    raise _spotd_error(f"unknown mode `{value}`; spotd supports COPY")


def _v_store(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    if text == "s3":
        return "s3"
    raise _spotd_error(f"store `{value}` is not supported by spotd (supported: s3)")


class FileMount(_Model):
    """One ``file_mounts`` entry: a local path or an ``s3://`` URL, copied onto each node.

    The short form ``/remote: ./local`` is the same as ``{source: ./local}``.
    """

    special_keys: ClassVar[Mapping[str, str]] = types.MappingProxyType(
        _not_supported(
            "name",
            "persistent",
            "config",
            "_bucket_sub_path",
            "_force_delete",
            hint="spotd does not create buckets",
        )
    )

    source: str
    mode: Annotated[Literal["COPY"], PlainValidator(_v_mount_mode)] = "COPY"
    store: Annotated[str | None, PlainValidator(_v_store)] = None

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        return {"source": data} if isinstance(data, str) else data

    @field_validator("source")
    @classmethod
    def _local_or_s3(cls, source: str) -> str:
        scheme, sep, rest = source.partition("://")
        if not source.strip():
            raise _spotd_error("source is empty")
        if sep and scheme.lower() != "s3":
            raise _spotd_error(
                f"`{scheme}://` sources are not supported by spotd (local paths and s3:// only)"
            )
        if sep and not rest.strip("/"):
            raise _spotd_error("an s3:// source needs a bucket: s3://bucket/prefix")
        return source

    @property
    def is_s3(self) -> bool:
        return self.source.lower().startswith("s3://")


def _remote_path(value: Any) -> str:
    text = str(value)
    if not text.startswith(("/", "~")):
        raise _spotd_error(f"remote path `{text}` must be absolute (/data) or start with ~")
    return text


RemotePath = Annotated[str, PlainValidator(_remote_path)]


# -- job recovery ------------------------------------------------------------------------


def _enum_value(value: enum.StrEnum) -> str:
    # explicit, because pydantic's own enum serializer does not see through PlainValidator
    return value.value


def _v_strategy(value: Any) -> RecoveryStrategy:
    if isinstance(value, RecoveryStrategy):
        return value
    names = [s.value for s in RecoveryStrategy]
    if isinstance(value, str):
        text = value.strip().upper()
        if text in names:
            return RecoveryStrategy(text)
        return _unknown_choice("strategy", value, names)
    raise _spotd_error(f"expected a strategy name: {', '.join(names)}")


def _unknown_choice(what: str, value: str, names: list[str]) -> typing.NoReturn:
    close = difflib.get_close_matches(value.strip().upper(), names, n=1, cutoff=0.5)
    hint = f"; did you mean `{close[0]}`?" if close else ""
    raise _spotd_error(f"unknown {what} `{value}` (expected one of {', '.join(names)}){hint}")


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
    raise _spotd_error(
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
            raise _spotd_error(f"an exit code is an integer 0-255, got {code!r}", at)
        out.append(code)
    return out


class JobRecovery(_Model):
    """``job_recovery``: how a managed job is recovered, as a name or a mapping.

    ``max_restarts_on_errors`` / ``recover_on_exit_codes`` are SkyPilot's (restarts after the
    user's program fails; preemptions are always recovered). spotd adds ``deadline``,
    ``expected_duration`` (the compute time the job needs; the DEADLINE strategy requires it
    to know its slack) and ``give_up_after`` (how long to keep looking for capacity before
    ``FAILED_NO_RESOURCE``). Durations are stored in seconds under ``*_seconds`` names; the
    YAML names (``give_up_after: 1h``) and the stored names are both accepted.
    """

    strategy: Annotated[
        RecoveryStrategy, PlainValidator(_v_strategy), PlainSerializer(_enum_value)
    ] = RecoveryStrategy.EAGER_NEXT_REGION
    max_restarts_on_errors: int = Field(default=0, ge=0)
    recover_on_exit_codes: Annotated[list[int], PlainValidator(_v_exit_codes)] = Field(
        default_factory=list
    )
    deadline: Annotated[
        datetime | timedelta | None, PlainValidator(_v_deadline), PlainSerializer(_s_deadline)
    ] = None
    expected_duration_seconds: Annotated[float | None, PlainValidator(_optional_seconds)] = Field(
        default=None,
        validation_alias=AliasChoices("expected_duration", "expected_duration_seconds"),
        serialization_alias="expected_duration",
    )
    give_up_after_seconds: Annotated[float, PlainValidator(_seconds(allow_zero=True))] = Field(
        default=3600.0,
        validation_alias=AliasChoices("give_up_after", "give_up_after_seconds"),
        serialization_alias="give_up_after",
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
            raise _spotd_error(
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


# -- service -----------------------------------------------------------------------------


class LoadBalancingPolicy(enum.StrEnum):
    ROUND_ROBIN = "round_robin"  # one replica after the other
    LEAST_LOAD = "least_load"  # fewest in-flight requests (SkyServe's default)
    POWER_OF_TWO = "power_of_two"  # two random replicas, fewer in-flight wins


def _v_lb_policy(value: Any) -> LoadBalancingPolicy:
    if isinstance(value, LoadBalancingPolicy):
        return value
    names = [p.value for p in LoadBalancingPolicy]
    if isinstance(value, str):
        text = value.strip().lower().replace("-", "_")
        aliases = {
            "power_of_two_choices": "power_of_two",
            "p2c": "power_of_two",
            "least_loaded": "least_load",
            "roundrobin": "round_robin",
        }
        text = aliases.get(text, text)
        if text in names:
            return LoadBalancingPolicy(text)
        close = difflib.get_close_matches(text, names, n=1, cutoff=0.5)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise _spotd_error(
            f"unknown load_balancing_policy `{value}` (expected one of {', '.join(names)}){hint}"
        )
    raise _spotd_error(f"expected one of {', '.join(names)}")


class ReadinessProbe(_Model):
    """``readiness_probe``: a path, or the mapping form with SkyServe's defaults."""

    path: str = "/"
    post_data: dict[str, Any] | str | None = None
    headers: dict[str, Annotated[str, PlainValidator(_label_value)]] = Field(default_factory=dict)
    initial_delay_seconds: float = Field(default=1200.0, ge=0)
    timeout_seconds: float = Field(default=15.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        return {"path": data} if isinstance(data, str) else data

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not path.startswith("/"):
            raise _spotd_error(f"a probe path starts with /, got `{path}`")
        return path


class ReplicaPolicy(_Model):
    """SkyServe's ``replica_policy``; ``max_replicas`` None means ``min_replicas``."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int | None = Field(default=None, ge=0)
    target_qps_per_replica: float | None = Field(default=None, gt=0)
    upscale_delay_seconds: float = Field(default=300.0, ge=0)
    downscale_delay_seconds: float = Field(default=1200.0, ge=0)
    base_ondemand_fallback_replicas: int = Field(default=0, ge=0)
    dynamic_ondemand_fallback: bool = False
    num_overprovision: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> typing.Self:
        top = self.max_replicas
        if top is not None and top < self.min_replicas:
            raise _spotd_error(
                f"max_replicas ({top}) is below min_replicas ({self.min_replicas})",
                ("max_replicas",),
            )
        if top is not None and top > self.min_replicas and self.target_qps_per_replica is None:
            raise _spotd_error(
                "max_replicas above min_replicas needs target_qps_per_replica to autoscale on",
                ("max_replicas",),
            )
        return self

    @property
    def upper(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.min_replicas


class ServiceSpec(_Model):
    """SkyServe's ``service:`` section. ``replicas: N`` and ``replica_policy`` exclude each
    other; ``policy()`` gives the one to use either way (a fixed N is min = max = N)."""

    special_keys: ClassVar[Mapping[str, str]] = types.MappingProxyType(
        _not_supported("tls", "pool", "workers", "external_load_balancer")
    )

    readiness_probe: ReadinessProbe
    replicas: int | None = Field(default=None, ge=1)
    replica_policy: ReplicaPolicy | None = None
    load_balancing_policy: Annotated[
        LoadBalancingPolicy, PlainValidator(_v_lb_policy), PlainSerializer(_enum_value)
    ] = LoadBalancingPolicy.LEAST_LOAD
    ports: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="after")
    def _replicas_or_policy(self) -> typing.Self:
        if self.replicas is not None and self.replica_policy is not None:
            raise _spotd_error(
                "give either `replicas` (a fixed count) or `replica_policy`, not both",
                ("replicas",),
            )
        return self

    def policy(self) -> ReplicaPolicy:
        if self.replica_policy is not None:
            return self.replica_policy
        n = self.replicas if self.replicas is not None else 1
        return ReplicaPolicy(min_replicas=n, max_replicas=n)


# -- the task ----------------------------------------------------------------------------

_TOP_NOT_SUPPORTED = _not_supported(
    "volumes",
    "config",
    "event_callback",
    "experimental",
    "inputs",
    "outputs",
    "pool",
    "file_mounts_mapping",
    "_user_specified_yaml",
    "_metadata",
)


class Task(_Model):
    """One task document. ``secrets`` are kept out of ``repr`` and out of ``redacted()``."""

    special_keys: ClassVar[Mapping[str, str]] = types.MappingProxyType(_TOP_NOT_SUPPORTED)

    name: str | None = None
    workdir: str | None = None
    num_nodes: int = Field(default=1, ge=1)
    resources: Resources = Field(default_factory=Resources)
    envs: dict[EnvName, EnvValue] = Field(default_factory=dict)
    secrets: dict[EnvName, EnvValue] = Field(default_factory=dict, repr=False)
    file_mounts: dict[RemotePath, FileMount] = Field(default_factory=dict)
    setup: str | None = None
    run: str | None = None
    service: ServiceSpec | None = None
    job_recovery: JobRecovery = Field(default_factory=JobRecovery)

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        """Empty sections (``envs:`` with nothing under it) are empty, not errors, and
        ``resources.job_recovery`` (where older SkyPilot put it) moves to the top level."""
        if not isinstance(data, dict):
            return data
        data, _ = hoist_job_recovery(data)
        data = dict(data)
        for key in ("resources", "envs", "secrets", "file_mounts", "job_recovery"):
            if key in data and data[key] is None:
                data[key] = {}
        return data

    @model_validator(mode="after")
    def _no_env_is_also_secret(self) -> typing.Self:
        both = sorted(set(self.envs) & set(self.secrets))
        if both:
            raise _spotd_error(
                f"`{both[0]}` is both an env and a secret; give it in one place",
                ("secrets", both[0]),
            )
        return self

    # -- building a task from Python (the SDK) -------------------------------------------

    @classmethod
    def from_yaml(
        cls, path: str | FsPath, *, env_overrides: Mapping[str, str] | None = None
    ) -> Task:
        """The one task of a YAML file; raises ``SpecError`` (an ``InvalidTaskError``)
        naming every problem by key path and line."""
        return load_task(path, env_overrides=env_overrides)

    def set_resources(self, resources: ResourcesChoice) -> Task:
        """Set the resources, SkyPilot's way; returns the task itself.

        ``Resources(...)`` is used as it is; a list (or tuple) is an ordered preference,
        stored as ``resources.ordered``; a set is "any of these, cheapest wins", stored as
        ``resources.any_of`` (sorted, so that ``to_yaml()`` is stable). A one-element list or
        set is that element. Entries may not have their own ``any_of``/``ordered``.

        This is the one method that changes a ``Task`` in place: SkyPilot code calls
        ``task.set_resources(...)`` without using the result, and a copy would silently
        launch with the old resources. The new value is validated first, so the task never
        holds resources that the YAML loader would refuse.
        """
        new = _resources_from(resources)
        object.__setattr__(self, "resources", new)
        self.__pydantic_fields_set__.add("resources")
        return self

    # -- what other parts of spotd read --------------------------------------------------

    @property
    def secret_names(self) -> frozenset[str]:
        return frozenset(self.secrets)

    def environment(self) -> dict[str, str]:
        """Every variable the job's processes get: envs and secrets (values included)."""
        return dict(self.envs) | dict(self.secrets)

    def resource_request(self) -> ResourceRequest:
        """The resources as the optimizer's options.

        ``{A100: 8, H100: 8}`` -> two options, any of (cheapest wins); ``[A100:8, H100:8]`` ->
        two options in order; ``any_of``/``ordered`` -> one option per entry (times its
        accelerator choices), each entry laid over the top-level fields.
        """
        return self.resources.request()

    def service_port(self) -> int | None:
        """The port replicas serve on: ``service.ports``, else a single ``resources.ports``."""
        if self.service is not None and self.service.ports is not None:
            return self.service.ports
        ports = self.resources.ports
        return int(ports[0]) if len(ports) == 1 and ports[0].isdigit() else None

    def resources_summary(self) -> str:
        """A short form for tables: ``1x A100:8 [spot]``, ``2x cpus=2+ mem=8+``,
        ``1x {A100:8, H100:8} [spot]``, ``1x aws:A100:8 | k8s:H100:8``."""
        r = self.resources
        spot = (
            " [spot]" if r.use_spot or any(e.use_spot for e in r.any_of or r.ordered or []) else ""
        )
        entries = r.any_of or r.ordered
        if entries:
            req = self.resource_request()
            body = (" > " if req.ordered else " | ").join(_option_summary(o) for o in req.options)
        else:
            body = _fields_summary(r)
        return f"{self.num_nodes}x {body}{spot}"

    def redacted(self) -> dict[str, Any]:
        """The task as JSON-able data with every secret value replaced by ``<redacted>``."""
        data = self.model_dump(mode="json")
        data["secrets"] = {k: REDACTED for k in self.secrets}
        return data

    def to_yaml(self, *, redact: bool = False) -> str:
        """The task as a SkyPilot-style YAML document that loads back to an equal task
        (unless ``redact``: then secret values read ``<redacted>``)."""
        data = self.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        if redact and self.secrets:
            data["secrets"] = {k: REDACTED for k in self.secrets}
        # the forms people write: `give_up_after: 30m`, `/data: s3://bucket/prefix`
        recovery = data.get("job_recovery", {})
        for key in ("expected_duration", "give_up_after"):
            if isinstance(recovery.get(key), int | float):
                recovery[key] = format_duration(recovery[key])
        mounts = data.get("file_mounts", {})
        for remote, mount in mounts.items():
            if set(mount) == {"source"}:
                mounts[remote] = mount["source"]
        text: str = yaml.dump(data, Dumper=_BlockStyleDumper, sort_keys=False, allow_unicode=True)
        return text


def _resources_from(value: ResourcesChoice) -> Resources:
    """``set_resources``' argument as one ``Resources`` (see there)."""
    if isinstance(value, Resources):
        return value
    if isinstance(value, ResourceFields):
        return Resources.model_validate(value.model_dump(exclude_unset=True))
    if isinstance(value, list | tuple):
        key, items = "ordered", list(value)
    elif isinstance(value, AbstractSet):
        key, items = "any_of", sorted(value, key=lambda r: r.model_dump_json())
    else:
        raise TypeError(
            f"set_resources takes Resources, a list (ordered) or a set (any of) of them, "
            f"got {type(value).__name__}"
        )
    issues: list[SpecIssue] = []
    for i, item in enumerate(items):
        if not isinstance(item, ResourceFields):
            issues.append(SpecIssue(f"resources.{key}[{i}]", None,
                                    f"expected Resources, got {type(item).__name__}", "<python>"))
        elif isinstance(item, Resources) and (item.any_of or item.ordered):
            issues.append(SpecIssue(f"resources.{key}[{i}]", None,
                                    "any_of/ordered cannot be nested inside any_of/ordered",
                                    "<python>"))
    if not items:
        issues.append(SpecIssue("resources", None, f"an empty {type(value).__name__} of "
                                "Resources: give at least one", "<python>"))
    if issues:
        raise SpecError(issues)
    if len(items) == 1:
        return _resources_from(items[0])
    entries = [
        ResourceFields.model_validate(
            {k: v for k, v in item.model_dump(exclude_unset=True).items()
             if k not in ("any_of", "ordered")}
        )
        for item in items
    ]
    try:
        return Resources.model_validate({key: entries})
    except ValidationError as exc:
        raise SpecError(
            SpecIssue(f"resources.{key}", None, _message(err, ()), "<python>")
            for err in exc.errors()
        ) from None


def _fields_summary(r: ResourceFields) -> str:
    parts: list[str] = []
    if r.accelerators is not None:
        parts.append(str(r.accelerators))
    if r.instance_type:
        parts.append(r.instance_type)
    if r.cpus is not None:
        parts.append(f"cpus={r.cpus}")
    if r.memory is not None:
        parts.append(f"mem={r.memory}")
    where = r.infra or "/".join(x for x in (r.cloud, r.region, r.zone) if x)
    text = " ".join(parts) or "cpu"
    return f"{text} @{where}" if where else text


def _option_summary(o: ResourceOption) -> str:
    what = (
        f"{o.accelerator}:{number_text(o.accelerator_count)}"
        if o.accelerator
        else o.instance_type or (f"cpus={number_text(o.cpus)}" if o.cpus else "cpu")
    )
    where = "/".join(x for x in (o.provider, o.region, o.zone) if x)
    return f"{where}:{what}" if where else what


class _BlockStyleDumper(yaml.SafeDumper):  # type: ignore[misc]
    """Multi-line strings (``run: |``) dump as literal blocks, the way users write them."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockStyleDumper.add_representer(str, _represent_str)


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


# -- turning pydantic errors into issues -------------------------------------------------

_TYPE_PHRASES = (
    (("int_type", "int_parsing", "int_from_float"), "expected an integer"),
    (("float_type", "float_parsing", "finite_number"), "expected a number"),
    (("string_type",), "expected a string"),
    (("bool_type", "bool_parsing"), "expected true or false"),
    (("list_type", "tuple_type"), "expected a list"),
    (("dict_type", "model_type", "model_attributes_type", "mapping_type"), "expected a mapping"),
)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _field_type(cls: type[BaseModel], key: str | int) -> Any:
    for name, info in cls.model_fields.items():
        aliases: list[str] = [name]
        if isinstance(info.validation_alias, AliasChoices):
            aliases += [c for c in info.validation_alias.choices if isinstance(c, str)]
        elif isinstance(info.validation_alias, str):
            aliases.append(info.validation_alias)
        if key in aliases:
            return info.annotation
    return None


def _unwrap_models(tp: Any) -> list[Any]:
    """The types an annotation may hold, with Optional/Union/Annotated taken apart."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap_models(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(tp) for t in _unwrap_models(arg)]
    return [tp]


def _model_at(root: type[BaseModel], loc: Path) -> type[BaseModel] | None:
    """The model class that validates the value at ``loc`` (a cleaned pydantic loc)."""
    current: list[Any] = [root]
    for seg in loc:
        nxt: list[Any] = []
        for tp in current:
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                field_tp = _field_type(tp, seg)
                if field_tp is not None:
                    nxt += _unwrap_models(field_tp)
            elif typing.get_origin(tp) in (list, tuple) and isinstance(seg, int):
                nxt += _unwrap_models(typing.get_args(tp)[0])
            elif typing.get_origin(tp) is dict:
                nxt += _unwrap_models(typing.get_args(tp)[1])
        current = nxt
    models = [t for t in current if isinstance(t, type) and issubclass(t, BaseModel)]
    return models[0] if models else None


def _allowed_keys(cls: type[BaseModel]) -> list[str]:
    keys: list[str] = []
    for name, info in cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
            keys.append(alias.choices[0])
        else:
            keys.append(name)
    return keys


def _has_child(node: Any, seg: str | int) -> bool:
    if isinstance(node, dict):
        return seg in node
    return isinstance(node, list) and isinstance(seg, int) and 0 <= seg < len(node)


def _clean_loc(loc: tuple[str | int, ...], data: Any) -> Path:
    """Drop what pydantic adds to a loc that is not a key of the data (union member tags,
    ``[key]`` on an error about a mapping key)."""
    out: list[str | int] = []
    node = data
    for i, seg in enumerate(loc):
        if seg == "[key]":
            continue
        if _has_child(node, seg):
            out.append(seg)
            node = node[seg]
        elif i == len(loc) - 1 and isinstance(node, dict):
            out.append(seg)  # a key that is missing from the data
            node = None
    return tuple(out)


def format_path(path: Path) -> str:
    """``("resources", "any_of", 1, "cpus")`` -> ``resources.any_of[1].cpus``."""
    text = ""
    for seg in path:
        if isinstance(seg, int):
            text += f"[{seg}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", seg):
            text += f".{seg}" if text else seg
        else:
            text += f'["{seg}"]'
    return text


def _message(err: Mapping[str, Any], path: Path) -> str:
    kind = err["type"]
    if kind == "spotd_missing_env" and path:
        name = path[-1]
        return (
            f"`{name}` has no value: supply it at launch with --env {name}=VALUE "
            f'(for an empty value write "")'
        )
    if kind in ("spotd", "spotd_missing_env"):
        return str(err["msg"])
    if kind == "missing":
        return "required key is missing"
    ctx = err.get("ctx") or {}
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {
            "greater_than_equal": ">=",
            "greater_than": ">",
            "less_than_equal": "<=",
            "less_than": "<",
        }[kind]
        bound = next(iter(ctx.values()), "?")
        return f"must be {op} {bound}, got {_describe(err.get('input'))}"
    phrase = next((p for kinds, p in _TYPE_PHRASES if kind in kinds), None)
    secret = bool(path) and path[0] == "secrets"
    got = "" if secret else f", got {_describe(err.get('input'))}"
    if phrase is not None:
        return f"{phrase}{got}"
    text = str(err["msg"]).removeprefix("Value error, ")
    return text[:1].lower() + text[1:]


def _issues_from(
    exc: ValidationError, *, data: Any, doc: Document, file: str, hoisted: bool
) -> list[SpecIssue]:
    issues: list[SpecIssue] = []
    for err in exc.errors():
        loc = _clean_loc(tuple(err["loc"]), data)
        at = (err.get("ctx") or {}).get("at", ())
        if err["type"] == "extra_forbidden":
            message = _unknown_key(loc)
        else:
            message = _message(err, loc)
            loc = (*loc, *at)
        if hoisted and loc[:1] == ("job_recovery",):
            loc = ("resources", *loc)
        line = doc.line_of(loc)
        issues.append(SpecIssue(format_path(loc), line, message, file))
    return issues


def _unknown_key(loc: Path) -> str:
    key = str(loc[-1])
    model = _model_at(Task, loc[:-1])
    if model is None:
        return "unknown key"
    special = getattr(model, "special_keys", {})
    if key in special:
        return str(special[key])
    allowed = _allowed_keys(model)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean `{close[0]}`?"
    return f"unknown key (expected one of: {', '.join(allowed)})"


# -- loading -----------------------------------------------------------------------------


def _apply_overrides(data: dict[str, Any], overrides: Mapping[str, str]) -> dict[str, Any]:
    """``--env K=V``: sets a declared secret, else sets (or adds) an env, as SkyPilot does."""
    if not overrides:
        return data
    out = dict(data)
    secrets = out.get("secrets")
    envs = out.get("envs")
    secrets = dict(secrets) if isinstance(secrets, dict) else secrets
    envs = dict(envs) if isinstance(envs, dict) else ({} if envs is None else envs)
    for key, value in overrides.items():
        if isinstance(secrets, dict) and key in secrets:
            secrets[key] = value
        elif isinstance(envs, dict):
            envs[key] = value
    out["envs"] = envs
    if secrets is not None:
        out["secrets"] = secrets
    return out


def _task_from(doc: Document, *, file: str, overrides: Mapping[str, str]) -> Task | list[SpecIssue]:
    issues = [
        SpecIssue(
            format_path(p),
            doc.line_of(p),
            "key given twice (YAML would silently keep the last one)",
            file,
        )
        for p in doc.duplicates
    ]
    if not isinstance(doc.data, dict):
        issues.append(
            SpecIssue(
                "",
                doc.line_of(()),
                f"a task is a mapping of keys (name, resources, run, ...), got "
                f"{_describe(doc.data)}",
                file,
            )
        )
        return issues
    data, hoisted = hoist_job_recovery(doc.data)
    data = _apply_overrides(data, overrides)
    try:
        task = Task.model_validate(data)
    except ValidationError as exc:
        issues += _issues_from(exc, data=data, doc=doc, file=file, hoisted=hoisted)
    return issues or task


def load_tasks(
    source: str | FsPath,
    *,
    env_overrides: Mapping[str, str] | None = None,
    text: str | None = None,
) -> list[Task]:
    """Every task in a YAML file (one per ``---`` document); raises ``SpecError`` listing
    every problem in every document.

    ``source`` names the file in messages; it is read only when ``text`` is None.
    ``env_overrides`` (``--env K=V``) fill null envs/secrets and add envs. A first document
    holding only ``name`` before further documents is a SkyPilot pipeline header and is
    skipped; empty documents are skipped.
    """
    file = str(source)
    if text is None:
        try:
            text = FsPath(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError([SpecIssue("", None, f"cannot read the file: {exc}", file)]) from exc
    docs = [d for d in compose_documents(text, file=file) if d.data is not None]
    if len(docs) > 1 and isinstance(docs[0].data, dict) and set(docs[0].data) <= {"name"}:
        docs = docs[1:]
    if not docs:
        raise SpecError([SpecIssue("", 1, "the file holds no task", file)])
    tasks: list[Task] = []
    issues: list[SpecIssue] = []
    for doc in docs:
        result = _task_from(doc, file=file, overrides=env_overrides or {})
        if isinstance(result, Task):
            tasks.append(result)
        else:
            issues += result
    if issues:
        raise SpecError(issues)
    return tasks


def load_task(
    source: str | FsPath,
    *,
    env_overrides: Mapping[str, str] | None = None,
    text: str | None = None,
) -> Task:
    """The one task of a file; a file with several documents is an error."""
    tasks = load_tasks(source, env_overrides=env_overrides, text=text)
    if len(tasks) != 1:
        raise SpecError(
            [SpecIssue("", 1, f"expected one task, the file has {len(tasks)}", str(source))]
        )
    return tasks[0]


def check_file(
    path: str | FsPath,
    *,
    env_overrides: Mapping[str, str] | None = None,
    text: str | None = None,
) -> list[SpecIssue]:
    """Every problem in a task file; an empty list means it is valid. Never raises for bad
    input: a missing file or malformed YAML is an issue like any other."""
    try:
        load_tasks(path, env_overrides=env_overrides, text=text)
    except SpecError as exc:
        return list(exc.issues)
    return []
