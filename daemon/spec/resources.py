"""``resources:``: what a task asks to run on, and where.

A task names its machine the SkyPilot way: leaf fields (``accelerators``, ``cpus``,
``memory``, ``infra`` or ``cloud``/``region``/``zone``, ``use_spot`` ...) and, for a choice,
``any_of`` (cheapest wins) or ``ordered`` (first that fits wins) entries laid over the leaf
fields above them. ``Resources.request()`` turns all of that into the optimizer's
``ResourceRequest``: one ``ResourceOption`` per entry and accelerator choice::

    accelerators: {A100: 8, H100: 8}          -> two options, any of
    accelerators: [A100:8, H100:8]            -> two options, in order
    cpus: 4+ / ordered: [{infra: aws}, {infra: k8s}]
                                              -> aws 4+ cpus, then k8s 4+ cpus

``resources_from`` is ``Task.set_resources``' argument (a ``Resources``, a list, a set) as one
``Resources``; ``summary`` is the short form tables print.

``MachineAsk`` is what a provider gets of the rest for one node (``Task.machine``): disk size
and tier (EBS on AWS, ephemeral storage on Kubernetes), ``network_tier: best`` (EFA on AWS),
labels (tags, pod labels), ``image_id`` (an AMI; ``docker:IMAGE`` runs only on Kubernetes, so
such an option without a provider of its own is placed there; launch refuses it with one
reason when nothing can run it: ``spotd.control.submit.check_containers``), with the
``config:`` overrides spotd has a setting for (``read_config``). ``advisories`` are
``spotctl check``'s warnings: what the backend a key lands on cannot honour, naming the one
that would (README, "Resource keys").
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Collection, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import (
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from spotd.spec.errors import SpecError, SpecIssue
from spotd.spec.fields import (
    SpecModel,
    checking,
    label_value,
    not_supported,
    spotd_error,
    syntax,
)
from spotd.spec.issues import message
from spotd.spec.values import (
    AcceleratorChoice,
    Amount,
    Location,
    Memory,
    Path,
    SyntaxProblem,
    is_other_cloud,
    number_text,
    parse_accelerators,
    parse_cloud,
    parse_cpus,
    parse_disk_size,
    parse_infra,
    parse_memory,
    parse_ports,
    ports_yaml_value,
)
from spotd.types import ResourceOption, ResourceRequest


def _v_cloud(value: Any, info: ValidationInfo) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise spotd_error("expected a cloud name such as aws, kubernetes, slurm or local")
    try:
        parse_cloud(value, others=checking(info))
    except SyntaxProblem as exc:
        raise spotd_error(str(exc)) from None
    return value.strip().lower()


def _v_infra(value: Any, info: ValidationInfo) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise spotd_error("infra is a string: CLOUD[/REGION[/ZONE]], e.g. aws/us-east-1")
    try:
        parse_infra(value, others=checking(info))
    except SyntaxProblem as exc:
        raise spotd_error(str(exc)) from None
    return value.strip()


DISK_TIERS = ("low", "medium", "high", "ultra", "best")
NETWORK_TIERS = ("standard", "best")


def _tier(name: str, tiers: tuple[str, ...]) -> Any:
    def validate(value: Any) -> str | None:
        if value is None:
            return None
        text = str(value).strip().lower()
        if text not in tiers:
            raise spotd_error(f"{name} is one of {', '.join(tiers)}; got `{value}`")
        return text

    return validate


DOCKER_PREFIX = "docker:"
CONTAINER_BACKENDS = ("k8s",)  # the providers that run ``image_id: docker:IMAGE`` (in a pod)
_DEFAULT_DISK = ("k8s", "slurm", "local")  # where disk_tier/network_tier get the default
_EBS = ("standard", "gp3, 3500 IOPS", "gp3, 7000 IOPS", "io2, 20000 IOPS", "io2, 20000 IOPS")
AWS_DISK_TIERS = types.MappingProxyType(dict(zip(DISK_TIERS, _EBS, strict=True)))  # for check


def docker_image(image_id: str | Mapping[str, str] | None) -> str | None:
    """The image of ``image_id: docker:IMAGE`` (also per region); None for a machine image."""
    images = image_id.values() if isinstance(image_id, Mapping) else [image_id]
    for image in images:
        if image is not None and image.strip().lower().startswith(DOCKER_PREFIX):
            return image.strip()[len(DOCKER_PREFIX) :].strip()
    return None


# -- config: overrides (which keys spotd honours: ``spotd.spec.task.HONOURED_CONFIG``) --------


@dataclass(frozen=True, slots=True)
class ConfigOverrides:
    """The ``config:`` settings spotd has: ``aws.labels``, ``aws.disk_encrypted`` and
    ``kubernetes.custom_metadata`` (pod ``labels`` and ``annotations``)."""

    aws_labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    aws_disk_encrypted: bool = False
    k8s_labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    k8s_annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _str_map(value: Any, at: Path) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(v, str | int | float | bool) for v in value.values()
    ):
        raise spotd_error("expected a mapping of names to strings", at)
    return {str(k): str(v) for k, v in value.items()}


def read_config(config: Mapping[str, Any]) -> ConfigOverrides:
    """The settings spotd has out of a task's ``config:``; a bad value raises
    ``spotd_error`` at its key (other keys are ``spotd.spec.task.config_findings``')."""
    aws: Mapping[str, Any] = config["aws"] if isinstance(config.get("aws"), Mapping) else {}
    k8s: Mapping[str, Any] = (
        config["kubernetes"] if isinstance(config.get("kubernetes"), Mapping) else {}
    )
    encrypted = aws.get("disk_encrypted", False)
    if not isinstance(encrypted, bool):
        raise spotd_error("expected true or false", ("aws", "disk_encrypted"))
    meta = k8s.get("custom_metadata") or {}
    at: Path = ("kubernetes", "custom_metadata")
    if not isinstance(meta, Mapping) or set(meta) - {"labels", "annotations"}:
        raise spotd_error("custom_metadata takes `labels` and `annotations`", at)
    return ConfigOverrides(
        aws_labels=_str_map(aws.get("labels"), ("aws", "labels")),
        aws_disk_encrypted=encrypted,
        k8s_labels=_str_map(meta.get("labels"), (*at, "labels")),
        k8s_annotations=_str_map(meta.get("annotations"), (*at, "annotations")),
    )


@dataclass(frozen=True, slots=True)
class MachineAsk:
    """What one node's machine must be beyond its instance type (``InstanceSpec.machine``);
    empty: the backend's default. ``image_id``: a machine image (an AMI) for the node's
    region; ``container_image``: the image of ``image_id: docker:IMAGE``, which the task
    runs in."""

    disk_size_gb: int | None = None
    disk_tier: str | None = None
    network_tier: str | None = None
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    image_id: str | None = None
    container_image: str | None = None
    disk_encrypted: bool = False


def _backends(names: Collection[str]) -> str:
    shown = ["kubernetes" if p == "k8s" else p for p in names]
    return ", ".join(shown[:-1]) + f" or {shown[-1]}" if len(shown) > 1 else "".join(shown)


AcceleratorsField = Annotated[
    AcceleratorChoice | None,
    PlainValidator(syntax(parse_accelerators)),
    PlainSerializer(lambda v: None if v is None else v.yaml_value()),
]
CpusField = Annotated[
    Amount | None,
    PlainValidator(syntax(parse_cpus)),
    PlainSerializer(lambda v: None if v is None else v.yaml_value()),
]
MemoryField = Annotated[
    Memory | None,
    PlainValidator(syntax(parse_memory)),
    PlainSerializer(lambda v: None if v is None else v.yaml_value()),
]
PortsField = Annotated[
    tuple[str, ...],
    PlainValidator(syntax(parse_ports)),
    PlainSerializer(ports_yaml_value),
]

_RESOURCE_NOT_SUPPORTED: Mapping[str, str] = types.MappingProxyType(
    {
        **not_supported(
            "autostop",
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
)


class ResourceFields(SpecModel):
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
    disk_size: Annotated[int | None, PlainValidator(syntax(parse_disk_size))] = None
    disk_tier: Annotated[str | None, PlainValidator(_tier("disk_tier", DISK_TIERS))] = None
    network_tier: Annotated[str | None, PlainValidator(_tier("network_tier", NETWORK_TIERS))] = None
    ports: PortsField = ()
    image_id: str | dict[str, str] | None = None
    labels: dict[str, Annotated[str, PlainValidator(label_value)]] = Field(default_factory=dict)
    max_hourly_cost: float | None = Field(default=None, gt=0)

    def __hash__(self) -> int:
        """Hashable so that a *set* of Resources can say "any of these" (``set_resources``).

        Hashes the canonical JSON dump: equal models dump equally, so ``==`` and ``hash``
        agree (pydantic's own frozen hash would fail on the ``labels`` dict).
        """
        return hash(self.model_dump_json())

    @property
    def docker_image(self) -> str | None:
        """The image of ``image_id: docker:IMAGE``; None for a machine image (or none)."""
        return docker_image(self.image_id)

    def advisories(self, where: Location | None = None) -> list[tuple[Path, str]]:
        """What ``spotctl check`` warns about in these fields placed at ``where`` (default:
        their own location; paths relative to them): a cloud without a provider, and what
        the backend there cannot honour, naming the one that would."""
        found: list[tuple[Path, str]] = []
        for key, raw in (("infra", self.infra), ("cloud", self.cloud)):
            cloud = raw.split("/")[0].strip() if raw else ""
            if cloud and is_other_cloud(cloud):
                found.append(
                    (
                        (key,),
                        f"spotd has no provider for `{cloud.lower()}`: nothing can be placed "
                        f"there (providers: aws, kubernetes, slurm, local)",
                    )
                )
        p = (where or self.location()).provider
        if p is not None and is_other_cloud(p):
            return found  # the cloud's own warning: nothing can be placed there
        elsewhere = _backends([p] if p else _DEFAULT_DISK)
        if self.disk_tier is not None and p != "aws":
            found.append(
                (
                    ("disk_tier",),
                    f"disk_tier {self.disk_tier} is not honoured on {elsewhere} (the default "
                    f"disk there); aws honours it: EBS {AWS_DISK_TIERS[self.disk_tier]}",
                )
            )
        if self.network_tier == "best" and p != "aws":  # aws: EFA where the type has it
            found.append(
                (
                    ("network_tier",),
                    f"network_tier best is not honoured on {elsewhere} (the default "
                    "network there); aws honours it: EFA on the types that have it (p4d, p5, "
                    "g5.8xlarge and up)",
                )
            )
        image = self.docker_image
        if image is not None and p not in CONTAINER_BACKENDS:
            refusers = f"{p} runs no containers" if p else "aws, slurm and local refuse it"
            found.append(
                (
                    ("image_id",),
                    f"docker image `{image}` runs only on kubernetes (as the pod's image); "
                    f"{refusers}",
                )
            )
        elif image is None and self.image_id is not None and p not in (None, "aws"):
            found.append((("image_id",), f"a machine image (an AWS AMI): {p} ignores it"))
        return found

    @model_validator(mode="after")
    def _infra_or_cloud(self) -> typing.Self:
        if self.infra is not None:
            for key in ("cloud", "region", "zone"):
                if getattr(self, key) is not None:
                    raise spotd_error(
                        f"give either `infra` or `cloud`/`region`/`zone`, not both "
                        f"(`{key}` is set too)",
                        ("infra",),
                    )
        return self

    def location(self) -> Location:
        """Where this asks to run, with spotd's provider names (``kubernetes`` -> ``k8s``)."""
        if self.infra is not None:
            return parse_infra(self.infra, others=True)
        provider = parse_cloud(self.cloud, others=True) if self.cloud is not None else None
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
        if where.provider is None and self.docker_image is not None:
            where = Location(CONTAINER_BACKENDS[0], where.region, where.zone)
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

    special_keys: ClassVar[Mapping[str, str]] = _RESOURCE_NOT_SUPPORTED

    any_of: list[ResourceFields] | None = None
    ordered: list[ResourceFields] | None = None

    @model_validator(mode="after")
    def _one_way_to_choose(self) -> typing.Self:
        if self.any_of is not None and self.ordered is not None:
            raise spotd_error("give either `any_of` or `ordered`, not both", ("ordered",))
        for key in ("any_of", "ordered"):
            if getattr(self, key) == []:
                raise spotd_error(f"`{key}` needs at least one entry", (key,))
        several = self.accelerators is not None and len(self.accelerators.options) > 1
        if several and (self.any_of or self.ordered):
            raise spotd_error(
                "a choice of several accelerators cannot be combined with any_of/ordered: "
                "put each accelerator in its own any_of/ordered entry",
                ("accelerators",),
            )
        return self

    def request(self) -> ResourceRequest:
        """The optimizer's options: one per accelerator choice, or one per ``any_of`` /
        ``ordered`` entry (times its accelerator choices) with each entry's fields laid over
        these top-level ones; ``ordered`` (or an accelerator list) makes the request ordered."""
        entries = self.any_of or self.ordered
        if not entries:
            ordered = self.accelerators.ordered if self.accelerators else False
            return ResourceRequest(tuple(self.options()), ordered=ordered)
        base = self.location()
        options: list[ResourceOption] = []
        for entry in entries:
            options.extend(self._merged(entry).options(entry.located_over(base)))
        return ResourceRequest(tuple(options), ordered=self.ordered is not None)

    def _merged(self, entry: ResourceFields) -> ResourceFields:
        """An ``any_of``/``ordered`` entry's leaf fields laid over these top-level ones."""
        leaf_keys = set(ResourceFields.model_fields) - {"infra", "cloud", "region", "zone"}
        update = {k: getattr(entry, k) for k in entry.model_fields_set if k in leaf_keys}
        return ResourceFields.model_construct(
            **{k: getattr(self, k) for k in ResourceFields.model_fields} | update
        )

    def fields_for(self, provider: str, instance_type: str = "") -> ResourceFields:
        """The fields a placement on ``provider`` (of ``instance_type``) satisfied: the first
        entry, laid over the top level, that could be placed there; the top level if none."""
        entries = self.any_of or self.ordered or []
        base = self.location()
        for entry in entries:
            merged = self._merged(entry)
            if {o.provider for o in merged.options(entry.located_over(base))} - {None, provider}:
                continue
            if merged.instance_type in (None, instance_type) or not instance_type:
                return merged
        return self

    def docker_images(self) -> set[str]:
        """Every ``image_id: docker:IMAGE`` these resources name (top level and entries)."""
        found = {docker_image(e.image_id) for e in [self, *(self.any_of or self.ordered or [])]}
        return {image for image in found if image is not None}

    def machine(self, *, provider: str, region: str, instance_type: str = "") -> MachineAsk:
        """One node's ``MachineAsk`` on ``provider``/``region``: the keys of the entry placed
        there (``Task.machine`` lays the ``config:`` overrides over it)."""
        f = self.fields_for(provider, instance_type)
        image = None if docker_image(f.image_id) else f.image_id
        return MachineAsk(
            disk_size_gb=f.disk_size,
            disk_tier=f.disk_tier,
            network_tier=f.network_tier,
            labels=dict(f.labels),
            image_id=image.get(region) if isinstance(image, dict) else image,
            container_image=docker_image(f.image_id),
        )

    def all_advisories(self) -> list[tuple[Path, str]]:
        """``advisories()`` of these fields and of every ``any_of``/``ordered`` entry, each
        entry's where it would be placed (its location over the top level's)."""
        found = list(self.advisories())
        for key in ("any_of", "ordered"):
            for i, entry in enumerate(getattr(self, key) or []):
                where = entry.located_over(self.location())
                found += [((key, i, *at), text) for at, text in entry.advisories(where)]
        return found


# What ``Task.set_resources`` takes: one choice, a list (ordered) or a set (any of).
ResourcesChoice = ResourceFields | list[Resources] | tuple[Resources, ...] | AbstractSet[Resources]


def resources_from(value: ResourcesChoice) -> Resources:
    """``Task.set_resources``' argument as one ``Resources`` (see there); raises
    ``SpecError`` for a choice the YAML loader would refuse too."""
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
            issues.append(
                SpecIssue(
                    f"resources.{key}[{i}]",
                    None,
                    f"expected Resources, got {type(item).__name__}",
                    "<python>",
                )
            )
        elif isinstance(item, Resources) and (item.any_of or item.ordered):
            issues.append(
                SpecIssue(
                    f"resources.{key}[{i}]",
                    None,
                    "any_of/ordered cannot be nested inside any_of/ordered",
                    "<python>",
                )
            )
    if not items:
        issues.append(
            SpecIssue(
                "resources",
                None,
                f"an empty {type(value).__name__} of Resources: give at least one",
                "<python>",
            )
        )
    if issues:
        raise SpecError(issues)
    if len(items) == 1:
        return resources_from(items[0])
    entries = [
        ResourceFields.model_validate(
            {
                k: v
                for k, v in item.model_dump(exclude_unset=True).items()
                if k not in ("any_of", "ordered")
            }
        )
        for item in items
    ]
    try:
        return Resources.model_validate({key: entries})
    except ValidationError as exc:
        raise SpecError(
            SpecIssue(f"resources.{key}", None, message(err, ()), "<python>")
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


def summary(r: Resources) -> str:
    """A short form for tables: ``A100:8 [spot]``, ``cpus=2+ mem=8+``, ``{A100:8, H100:8}``,
    ``aws:A100:8 | k8s:H100:8`` (any of), ``aws:A100:8 > k8s:H100:8`` (ordered)."""
    entries = r.any_of or r.ordered
    spot = " [spot]" if r.use_spot or any(e.use_spot for e in entries or []) else ""
    if entries:
        req = r.request()
        body = (" > " if req.ordered else " | ").join(_option_summary(o) for o in req.options)
    else:
        body = _fields_summary(r)
    return f"{body}{spot}"
