"""``service:``: SkyServe's section for a task that serves requests behind a load balancer.

``readiness_probe`` says when a replica is ready (a path, or a mapping with SkyServe's
defaults); ``replicas: N`` (a fixed count) or ``replica_policy`` (bounds and the QPS target
to autoscale on) says how many; ``load_balancing_policy`` how requests are spread. SkyServe
keys spotd has no use for (``pool``, ``workers`` ...) are refused by name.

Endpoint security, both enforced by the service's load balancer:

- ``tls: {keyfile: PATH, certfile: PATH}`` (SkyServe's keys): the LB serves HTTPS (TLS 1.2+)
  with this certificate chain and key, and nothing in plain text on its port. Paths are read
  on the daemon's host, where the LB runs (``~`` expanded; a relative path is relative to
  the YAML's folder).
- API keys: ``api_keys_env: NAME`` names a variable of the task's ``secrets:`` (or ``envs:``)
  whose value is a comma-separated list of keys, so the keys stay out of the YAML; leave it
  null in the file (``secrets: {NAME: null}``) and give it with ``--env NAME=k1,k2`` at
  ``spotctl serve up``. Clients send ``Authorization: Bearer <key>`` (or the header named by
  ``api_key_header``, whose whole value is the key); a missing or wrong key is answered
  401 by the LB. The header is removed before the request reaches a replica unless
  ``forward_api_key: true``. Rotation: ``spotctl serve update`` with the new list (old and
  new together for a grace period, then the new alone); the LB swaps its keys when the
  update is accepted, without a restart.
"""

from __future__ import annotations

import difflib
import enum
import re
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
    # LLM prompts that start the same go to the same replica (its prefix cache), under a load
    # bound (vLLM production-stack's `prefixaware`)
    PREFIX_AWARE = "prefix_aware"
    # fewest outstanding tokens (prompt + max_tokens of the requests in flight): one long
    # generation weighs as much as many short ones
    LEAST_TOKENS = "least_tokens"


# other spellings users write, and SkyServe's older names
_LB_POLICY_ALIASES: Mapping[str, str] = types.MappingProxyType(
    {
        "power_of_two_choices": "power_of_two",
        "p2c": "power_of_two",
        "least_loaded": "least_load",
        "roundrobin": "round_robin",
        "prefixaware": "prefix_aware",  # vLLM production-stack's --routing-logic name
        "prefix": "prefix_aware",
        "leastload": "least_load",
        "least_outstanding_tokens": "least_tokens",
        "leasttokens": "least_tokens",
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


class TlsSpec(SpecModel):
    """``tls``: the certificate chain and private key the LB serves HTTPS with (PEM files)."""

    keyfile: str = Field(min_length=1)
    certfile: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _both(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            missing = [k for k in ("keyfile", "certfile") if not data.get(k)]
            if len(missing) == 1:
                raise spotd_error(
                    f"tls needs both `keyfile` and `certfile` (`{missing[0]}` is missing): "
                    "the LB cannot serve HTTPS with half of them"
                )
            if len(missing) == 2 and not (set(data) - {"keyfile", "certfile"}):
                raise spotd_error("tls needs `keyfile` and `certfile` (PEM files)")
        elif data is not None:
            raise spotd_error("tls is a mapping: {keyfile: PATH, certfile: PATH}")
        return data


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token


class ReplicaPolicy(SpecModel):
    """SkyServe's ``replica_policy``; ``max_replicas`` None means ``min_replicas``.

    The targets beyond SkyServe's QPS are what saturates an LLM server (read from each READY
    replica's Prometheus ``/metrics``; see ``spotd.serve.autoscaler`` and docs/serving.md):
    ``target_queue_per_replica`` (waiting requests per replica), ``target_kv_cache_usage``
    (0–1) and ``target_gpu_utilization`` (percent; weak for LLM servers). The most demanding
    target wins.
    """

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int | None = Field(default=None, ge=0)
    target_qps_per_replica: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    target_queue_per_replica: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    target_kv_cache_usage: float | None = Field(default=None, gt=0, le=1)
    target_gpu_utilization: float | None = Field(default=None, gt=0, le=100)
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
        targets = (
            self.target_qps_per_replica,
            self.target_queue_per_replica,
            self.target_kv_cache_usage,
            self.target_gpu_utilization,
        )
        if top is not None and top > self.min_replicas and all(t is None for t in targets):
            raise spotd_error(
                "max_replicas above min_replicas needs target_qps_per_replica (or "
                "target_queue_per_replica, target_kv_cache_usage, target_gpu_utilization) "
                "to autoscale on",
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
        "pool", "workers", "external_load_balancer"
    )

    readiness_probe: ReadinessProbe
    replicas: int | None = Field(default=None, ge=1)
    replica_policy: ReplicaPolicy | None = None
    load_balancing_policy: Annotated[
        LoadBalancingPolicy, PlainValidator(_v_lb_policy), PlainSerializer(enum_value)
    ] = LoadBalancingPolicy.LEAST_LOAD
    ports: int | None = Field(default=None, ge=1, le=65535)
    tls: TlsSpec | None = None
    # the secret (or env) holding the client API keys, comma-separated; None: no keys
    api_keys_env: str | None = None
    api_key_header: str = "Authorization"
    forward_api_key: bool = False

    @field_validator("api_keys_env")
    @classmethod
    def _keys_env(cls, name: str | None) -> str | None:
        if name is not None and not _ENV_NAME.fullmatch(name):
            raise spotd_error(
                f"api_keys_env names a variable of `secrets:` or `envs:`, got `{name}` "
                "(the keys themselves do not go in the YAML)"
            )
        return name

    @field_validator("api_key_header")
    @classmethod
    def _header(cls, name: str) -> str:
        if not _HEADER_NAME.fullmatch(name):
            raise spotd_error(f"api_key_header must be an HTTP header name, got `{name}`")
        return name

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
