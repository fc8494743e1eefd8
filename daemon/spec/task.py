"""The task: one document of a task file, the model ``spotctl`` and the SDK both use.

``Task`` is SkyPilot's task (``name``, ``workdir``, ``num_nodes``, ``resources``, ``envs``,
``secrets``, ``file_mounts``, ``setup``, ``run``, ``service``, ``job_recovery``) with spotd's
checks: environment names must be valid, an env with a null value must be supplied at launch
(``--env NAME=VALUE``), a name is an env or a secret but not both, file mounts are copied
(local paths or ``s3://``), remote paths are absolute.

Secrets never leave through the model's own views: ``repr`` leaves them out, ``redacted()``
and ``to_yaml(redact=True)`` replace their values with ``<redacted>``.

Round trip: each section dumps in the YAML syntax it was written in, so
``Task.model_validate(task.model_dump())`` and ``load_task(text=task.to_yaml())`` give an equal
task. The daemon stores ``model_dump_json(exclude_unset=True)`` (so ``any_of``/``ordered``
entries keep inheriting the top-level fields) and rebuilds the task from it.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from pathlib import Path as FsPath
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import Field, PlainValidator, field_validator, model_validator
from pydantic_core import PydanticCustomError

from spotd.spec.fields import SpecModel, not_supported, spotd_error
from spotd.spec.job_recovery import JobRecovery, hoist_job_recovery
from spotd.spec.load import load_model
from spotd.spec.resources import Resources, ResourcesChoice, resources_from, summary
from spotd.spec.service import ServiceSpec
from spotd.spec.values import format_duration
from spotd.types import ResourceRequest

REDACTED = "<redacted>"

# -- envs and secrets --------------------------------------------------------------------

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_name(value: Any) -> str:
    name = str(value)
    if isinstance(value, bool) or not _ENV_NAME.fullmatch(name):
        raise spotd_error(f"`{name}` is not a valid environment variable name")
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
    raise spotd_error("expected a string, number or true/false")


EnvName = Annotated[str, PlainValidator(_env_name)]
EnvValue = Annotated[str, PlainValidator(_env_value)]


# -- file mounts -------------------------------------------------------------------------


def _v_mount_mode(value: Any) -> Literal["COPY"]:
    text = str(value).strip().upper() if value is not None else "COPY"
    if text == "COPY":
        return "COPY"
    if text in ("MOUNT", "MOUNT_CACHED"):
        raise spotd_error(f"mode {text} is not supported by spotd: file mounts are copied (COPY)")
    raise spotd_error(f"unknown mode `{value}`; spotd supports COPY")


def _v_store(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    if text == "s3":
        return "s3"
    raise spotd_error(f"store `{value}` is not supported by spotd (supported: s3)")


class FileMount(SpecModel):
    """One ``file_mounts`` entry: a local path or an ``s3://`` URL, copied onto each node.

    The short form ``/remote: ./local`` is the same as ``{source: ./local}``.
    """

    special_keys: ClassVar[Mapping[str, str]] = not_supported(
        "name",
        "persistent",
        "config",
        "_bucket_sub_path",
        "_force_delete",
        hint="spotd does not create buckets",
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
            raise spotd_error("source is empty")
        if sep and scheme.lower() != "s3":
            raise spotd_error(
                f"`{scheme}://` sources are not supported by spotd (local paths and s3:// only)"
            )
        if sep and not rest.strip("/"):
            raise spotd_error("an s3:// source needs a bucket: s3://bucket/prefix")
        return source

    @property
    def is_s3(self) -> bool:
        return self.source.lower().startswith("s3://")


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
            raise spotd_error(
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
        for key in ("expected_duration", "give_up_after"):
            if isinstance(recovery.get(key), int | float):
                recovery[key] = format_duration(recovery[key])
        mounts = data.get("file_mounts", {})
        for remote, mount in mounts.items():
            if set(mount) == {"source"}:
                mounts[remote] = mount["source"]
        text: str = yaml.dump(data, Dumper=_BlockStyleDumper, sort_keys=False, allow_unicode=True)
        return text
