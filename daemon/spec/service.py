"""``service:``: SkyServe's section for a task that serves requests behind a load balancer.

``readiness_probe`` says when a replica is ready (a path, or a mapping with SkyServe's
defaults); ``replicas: N`` (a fixed count) or ``replica_policy`` (bounds and the QPS target
to autoscale on) says how many; ``load_balancing_policy`` how requests are spread. SkyServe
keys spotd has no use for (``tls``, ``pool`` ...) are refused by name.
"""

from __future__ import annotations

import difflib
import enum
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import Field, PlainSerializer, PlainValidator, field_validator, model_validator

from spotd.spec.fields import SpecModel, enum_value, label_value, not_supported, spotd_error


class LoadBalancingPolicy(enum.StrEnum):
    """How the load balancer spreads requests over ready replicas."""

    ROUND_ROBIN = "round_robin"  # one replica after the other
    LEAST_LOAD = "least_load"  # fewest in-flight requests (SkyServe's default)
    POWER_OF_TWO = "power_of_two"  # two random replicas, fewer in-flight wins


# other spellings users write, and SkyServe's older names
_LB_POLICY_ALIASES: Mapping[str, str] = types.MappingProxyType(
    {
        "power_of_two_choices": "power_of_two",
        "p2c": "power_of_two",
        "least_loaded": "least_load",
        "roundrobin": "round_robin",
    }
)


def _v_lb_policy(value: Any) -> LoadBalancingPolicy:
    if isinstance(value, LoadBalancingPolicy):
        return value
    names = [p.value for p in LoadBalancingPolicy]
    if isinstance(value, str):
        text = value.strip().lower().replace("-", "_")
        text = _LB_POLICY_ALIASES.get(text, text)
        if text in names:
            return LoadBalancingPolicy(text)
        close = difflib.get_close_matches(text, names, n=1, cutoff=0.5)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise spotd_error(
            f"unknown load_balancing_policy `{value}` (expected one of {', '.join(names)}){hint}"
        )
    raise spotd_error(f"expected one of {', '.join(names)}")


class ReadinessProbe(SpecModel):
    """``readiness_probe``: a path, or the mapping form with SkyServe's defaults."""

    path: str = "/"
    post_data: dict[str, Any] | str | None = None
    headers: dict[str, Annotated[str, PlainValidator(label_value)]] = Field(default_factory=dict)
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
            raise spotd_error(f"a probe path starts with /, got `{path}`")
        return path


class ReplicaPolicy(SpecModel):
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
            raise spotd_error(
                f"max_replicas ({top}) is below min_replicas ({self.min_replicas})",
                ("max_replicas",),
            )
        if top is not None and top > self.min_replicas and self.target_qps_per_replica is None:
            raise spotd_error(
                "max_replicas above min_replicas needs target_qps_per_replica to autoscale on",
                ("max_replicas",),
            )
        return self

    @property
    def upper(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.min_replicas


class ServiceSpec(SpecModel):
    """SkyServe's ``service:`` section. ``replicas: N`` and ``replica_policy`` exclude each
    other; ``policy()`` gives the one to use either way (a fixed N is min = max = N)."""

    special_keys: ClassVar[Mapping[str, str]] = not_supported(
        "tls", "pool", "workers", "external_load_balancer"
    )

    readiness_probe: ReadinessProbe
    replicas: int | None = Field(default=None, ge=1)
    replica_policy: ReplicaPolicy | None = None
    load_balancing_policy: Annotated[
        LoadBalancingPolicy, PlainValidator(_v_lb_policy), PlainSerializer(enum_value)
    ] = LoadBalancingPolicy.LEAST_LOAD
    ports: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="after")
    def _replicas_or_policy(self) -> typing.Self:
        if self.replicas is not None and self.replica_policy is not None:
            raise spotd_error(
                "give either `replicas` (a fixed count) or `replica_policy`, not both",
                ("replicas",),
            )
        return self

    def policy(self) -> ReplicaPolicy:
        if self.replica_policy is not None:
            return self.replica_policy
        n = self.replicas if self.replicas is not None else 1
        return ReplicaPolicy(min_replicas=n, max_replicas=n)
