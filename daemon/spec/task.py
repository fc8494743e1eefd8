"""The task: one document of a task file, the model ``spotctl`` and the SDK both use.

``Task`` is SkyPilot's task (``name``, ``workdir``, ``num_nodes``, ``resources``, ``envs``,
``secrets``, ``file_mounts``, ``setup``, ``run``, ``service``, ``job_recovery``) with spotd's
checks: environment names must be valid, an env with a null value must be supplied at launch
(``--env NAME=VALUE``), a name is an env or a secret but not both, file mounts are copied
(local paths or ``s3://``), remote paths are absolute.

``spotctl check`` reads with the ``CHECKING`` validation context (``spotd.spec.fields``): a
null env is then valid (due at launch), and what launch refuses only because spotd lacks it yet
(a cloud without a provider, a bucket store spotd lacks, a ``config:`` override
spotd has no setting for) is kept in the model and reported by ``Task.advisories()`` as a
warning, as is a resource key the backend it lands on cannot honour (``disk_tier`` off AWS,
``image_id: docker:...`` off Kubernetes: ``spotd.spec.resources``).

Secrets never leave through the model's own views: ``repr`` leaves them out, ``redacted()``
and ``to_yaml(redact=True)`` replace their values with ``<redacted>``.

Round trip: each section dumps in the YAML syntax it was written in, so
``Task.model_validate(task.model_dump())`` and ``load_task(text=task.to_yaml())`` give an equal
task. The daemon stores ``model_dump_json(exclude_unset=True)`` (so ``any_of``/``ordered``
entries keep inheriting the top-level fields) and rebuilds the task from it.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from pathlib import Path as FsPath
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import Field, PlainValidator, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from spotd.spec.fields import SpecModel, checking, not_supported, spotd_error
from spotd.spec.job_recovery import JobRecovery, hoist_job_recovery
from spotd.spec.load import load_model
from spotd.spec.pool import PoolSpec
from spotd.spec.resources import (
    MachineAsk,
    Resources,
    ResourcesChoice,
    read_config,
    resources_from,
    summary,
)
from spotd.spec.service import ServiceSpec
from spotd.spec.values import Path, format_duration
from spotd.types import ResourceRequest

REDACTED = "<redacted>"

# -- envs and secrets --------------------------------------------------------------------

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_name(value: Any) -> str:
    name = str(value)
    if isinstance(value, bool) or not _ENV_NAME.fullmatch(name):
        raise spotd_error(f"`{name}` is not a valid environment variable name")
    return name


def _env_value(value: Any, info: ValidationInfo) -> str:
    """Scalars become strings the way SkyPilot makes them (``str(v)``: ``true`` -> ``True``).

    A null value is a variable the user must supply at launch time: an error at launch, and
    for ``spotctl check`` (which notes it) an empty string. The message never repeats the
    value: it may be a secret.
    """
    if value is None and checking(info):
        return ""
    if value is None:
        raise PydanticCustomError(
            "spotd_missing_env",
            'no value: supply it at launch with --env NAME=VALUE (for an empty value write "")',
        )
    if isinstance(value, str | int | float | bool):
        return str(value)
    raise spotd_error("expected a string, number or true/false")


EnvName = Annotated[str, PlainValidator(_env_name)]
EnvValue = Annotated[str, PlainValidator(_env_value)]


# -- file mounts -------------------------------------------------------------------------


MountMode = Literal["COPY", "MOUNT", "MOUNT_CACHED"]
# SkyPilot's storage backends (``store:``), and spotd's directory store for the local provider
STORES = ("s3", "gcs", "azure", "r2", "ibm", "oci", "nebius", "cos", "local")
SPOTD_STORES = ("s3", "local")  # the stores spotd creates buckets in (spotd.files.storage)
# S3's bucket naming rules, for both stores (spotd.files.storage.bucket_name_problem)
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _v_mount_mode(value: Any) -> MountMode:
    text = str(value).strip().upper() if value is not None else "COPY"
    if text in ("COPY", "MOUNT", "MOUNT_CACHED"):
        return typing.cast(MountMode, text)
    raise spotd_error(f"unknown mode `{value}`; modes are COPY, MOUNT and MOUNT_CACHED")


def _v_store(value: Any, info: ValidationInfo) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in SPOTD_STORES or (text in STORES and checking(info)):
        return text
    if text in STORES:
        raise spotd_error(f"store `{value}` is not supported by spotd (supported: s3, local)")
    raise spotd_error(f"unknown store `{value}` (SkyPilot's: {', '.join(STORES)})")


class FileMount(SpecModel):
    """One ``file_mounts`` entry: a local path or an ``s3://`` URL, copied onto each node; or
    SkyPilot's storage object (``is_storage_object``): a bucket by ``name`` (created or
    reused, ``source`` uploaded into it once), or an existing ``s3://`` bucket, given in
    ``mode`` COPY, MOUNT or MOUNT_CACHED (``spotd.files.storage``; docs/storage.md).

    The short form ``/remote: ./local`` is the same as ``{source: ./local}``. Stores spotd
    lacks (``store: gcs``, ``source: gs://...``) are read too, so that ``spotctl check`` can
    warn about them; launch refuses them.
    """

    special_keys: ClassVar[Mapping[str, str]] = not_supported(
        "config",
        "_bucket_sub_path",
        "_force_delete",
        hint="spotd's buckets take name, source, store, mode and persistent",
    )

    source: str = ""
    name: str | None = None
    persistent: bool | None = None
    mode: Annotated[MountMode, PlainValidator(_v_mount_mode)] = "COPY"
    store: Annotated[str | None, PlainValidator(_v_store)] = None

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        return {"source": data} if isinstance(data, str) else data

    @field_validator("source")
    @classmethod
    def _local_or_s3(cls, source: str, info: ValidationInfo) -> str:
        scheme, sep, rest = source.partition("://")
        if not source.strip():
            raise spotd_error("source is empty")
        if sep and scheme.lower() != "s3" and not checking(info):
            raise spotd_error(
                f"`{scheme}://` sources are not supported by spotd (local paths and s3:// only)"
            )
        if sep and not rest.strip("/"):
            raise spotd_error(f"a {scheme}:// source needs a bucket: {scheme}://bucket/prefix")
        return source

    @model_validator(mode="after")
    def _a_source_or_a_bucket(self) -> typing.Self:
        if not self.source and self.name is None:
            raise spotd_error("required key is missing", ("source",))
        if self.name is not None and not _BUCKET_NAME.fullmatch(self.name):
            raise spotd_error(
                f"bucket name `{self.name}` is not valid: 3-63 characters of a-z, 0-9, '.' "
                "and '-', starting and ending with a letter or digit",
                ("name",),
            )
        if self.name is not None and "://" in self.source:
            raise spotd_error(
                "a bucket by `name` is filled from a local `source`; to use the existing "
                f"bucket {self.source}, leave `name` out",
                ("source",),
            )
        if self.name is None and self.mode != "COPY" and "://" not in self.source:
            raise spotd_error(
                f"mode {self.mode} of a local source needs `name:`, the bucket to upload it to",
                ("name",),
            )
        _, _, rest = self.source.partition("://")
        if self.name is None and self.mode == "MOUNT_CACHED" and "/" in rest.strip("/"):
            raise spotd_error(
                "MOUNT_CACHED takes a whole bucket (s3://bucket), not a prefix in one",
                ("source",),
            )
        return self

    @property
    def is_s3(self) -> bool:
        return self.source.lower().startswith("s3://")

    @property
    def is_storage_object(self) -> bool:
        """A bucket by ``name``, or an existing bucket mounted (MOUNT, MOUNT_CACHED): served by
        ``spotd.files.storage``, not copied as a package or an s3:// source."""
        return self.name is not None or self.mode != "COPY"

    @property
    def unsupported_store(self) -> str | None:
        """The store or source scheme spotd has no buckets in (launch refuses it), or None."""
        scheme, sep, _ = self.source.partition("://")
        if sep and scheme.lower() != "s3":
            return f"{scheme}://"
        if self.store not in (None, *SPOTD_STORES):
            return f"store {self.store}"
        return None


def _remote_path(value: Any) -> str:
    text = str(value)
    if not text.startswith(("/", "~")):
        raise spotd_error(f"remote path `{text}` must be absolute (/data) or start with ~")
    return text


RemotePath = Annotated[str, PlainValidator(_remote_path)]


class _BlockStyleDumper(yaml.SafeDumper):
    """Multi-line strings (``run: |``) dump as literal blocks, the way users write them."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockStyleDumper.add_representer(str, _represent_str)


# -- the task ----------------------------------------------------------------------------

_TOP_NOT_SUPPORTED = not_supported(
    "volumes",
    "event_callback",
    "experimental",
    "inputs",
    "outputs",
    "file_mounts_mapping",
    "_user_specified_yaml",
    "_metadata",
)

# ``config:`` keys (SkyPilot's ~/.sky/config.yaml, per task) spotd has a setting for
# (``spotd.spec.resources.read_config``), and those it reads and ignores: no controller VM
HONOURED_CONFIG = ("aws.labels", "aws.disk_encrypted", "kubernetes.custom_metadata")
_IGNORED_CONFIG = ("jobs.controller", "serve.controller")


def config_findings(config: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(ignored, unsupported) dotted keys of a task's ``config:`` overrides, read two levels
    deep (``aws.labels``) as SkyPilot's config reference lists them; ``HONOURED_CONFIG``
    keys are neither."""
    ignored: list[str] = []
    unsupported: list[str] = []
    for section, value in config.items():
        inner = value if isinstance(value, dict) else {}
        if not inner:
            unsupported.append(str(section))
        for key in inner:
            dotted = f"{section}.{key}"
            if dotted in _IGNORED_CONFIG:
                ignored.append(dotted)
            elif dotted not in HONOURED_CONFIG:
                unsupported.append(dotted)
    return ignored, unsupported


def config_refusal(unsupported: list[str]) -> str:
    """The one message that names every ``config:`` override spotd does not have."""
    one = len(unsupported) == 1
    return (
        f"config override{'' if one else 's'} {', '.join(f'`{k}`' for k in unsupported)} "
        f"{'is' if one else 'are'} not supported by spotd (it honours "
        f"{', '.join(HONOURED_CONFIG)}; it ignores {', '.join(_IGNORED_CONFIG)})"
    )


class Task(SpecModel):
    """One task document. ``secrets`` are kept out of ``repr`` and out of ``redacted()``."""

    special_keys: ClassVar[Mapping[str, str]] = _TOP_NOT_SUPPORTED

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
    pool: PoolSpec | None = None  # a pool's workers (`spotctl jobs pool apply`), not a job
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("config")
    @classmethod
    def _config_spotd_has(cls, config: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        read_config(config)  # a bad value of a key spotd honours: an error, for check too
        _, unsupported = config_findings(config)
        if unsupported and not checking(info):
            raise spotd_error(config_refusal(unsupported))
        return config

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        """Empty sections (``envs:`` with nothing under it) are empty, not errors, and
        ``resources.job_recovery`` (where older SkyPilot put it) moves to the top level."""
        if not isinstance(data, dict):
            return data
        data, _ = hoist_job_recovery(data)
        data = dict(data)
        for key in ("resources", "envs", "secrets", "file_mounts", "job_recovery", "config"):
            if key in data and data[key] is None:
                data[key] = {}
        return data

    @model_validator(mode="after")
    def _no_env_is_also_secret(self) -> typing.Self:
        both = sorted(set(self.envs) & set(self.secrets))
        if both:
            raise spotd_error(
                f"`{both[0]}` is both an env and a secret; give it in one place",
                ("secrets", both[0]),
            )
        return self

    def advisories(self) -> list[tuple[Path, str]]:
        """What ``spotctl check`` warns about: keys spotd reads but cannot honour, and what
        launch refuses only because spotd lacks it yet (other clouds, storage objects,
        config overrides), and resource keys the backend they land on cannot honour
        (docker images off Kubernetes, disk tiers off AWS). Paths are the user's keys."""
        found = [(("resources", *at), text) for at, text in self.resources.all_advisories()]
        for remote, mount in self.file_mounts.items():
            where = mount.unsupported_store
            if where is not None:
                found.append(
                    (
                        ("file_mounts", remote),
                        f"spotd has no buckets in {where} (its stores: s3, local); "
                        "launch refuses it",
                    )
                )
            elif mount.persistent is False:
                found.append(
                    (
                        ("file_mounts", remote, "persistent"),
                        "spotd keeps a bucket until `spotctl storage delete`",
                    )
                )
        ignored, unsupported = config_findings(self.config)
        if unsupported:  # one warning, at the first of them
            at = ("config", *unsupported[0].split("."))
            found.append((at, f"{config_refusal(unsupported)}: launch refuses it"))
        for key in ignored:
            found.append((("config", *key.split(".")), "ignored: spotd runs no controller VM"))
        return found

    # -- building a task from Python (the SDK) -------------------------------------------

    @classmethod
    def from_yaml(
        cls, path: str | FsPath, *, env_overrides: Mapping[str, str] | None = None
    ) -> Task:
        """The one task of a YAML file; raises ``SpecError`` (an ``InvalidTaskError``)
        naming every problem by key path and line."""
        return load_model(cls, path, env_overrides=env_overrides)

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
        new = resources_from(resources)
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

    def machine(self, *, provider: str, region: str, instance_type: str = "") -> MachineAsk:
        """What one node on ``provider``/``region`` asks of its machine beyond the type: the
        resource keys of the entry placed there, with that provider's ``config:`` overrides
        (``aws.labels``/``disk_encrypted``, ``kubernetes.custom_metadata``) laid over them."""
        ask = self.resources.machine(provider=provider, region=region, instance_type=instance_type)
        cfg = read_config(self.config)
        if provider == "aws":
            labels = {**ask.labels, **cfg.aws_labels}
            return dataclasses.replace(ask, labels=labels, disk_encrypted=cfg.aws_disk_encrypted)
        if provider == "k8s":
            labels = {**ask.labels, **cfg.k8s_labels}
            return dataclasses.replace(ask, labels=labels, annotations=cfg.k8s_annotations)
        return ask

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
        return f"{self.num_nodes}x {summary(self.resources)}"

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
        for key in ("expected_duration", "give_up_after", "restart_overhead", "safety_margin"):
            if isinstance(recovery.get(key), int | float):
                recovery[key] = format_duration(recovery[key])
        mounts = data.get("file_mounts", {})
        for remote, mount in mounts.items():
            if set(mount) == {"source"}:
                mounts[remote] = mount["source"]
        text: str = yaml.dump(data, Dumper=_BlockStyleDumper, sort_keys=False, allow_unicode=True)
        return text
