"""The ``providers.aws`` section (config.yaml or ``SPOTD_PROVIDERS_JSON``), validated."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PROVIDER_NAME = "aws"
DEFAULT_NOTICE_URL = "http://169.254.169.254"  # the instance metadata service
DEFAULT_AGENT_INSTALL = "spotd[aws]"


class AwsConfigError(ValueError):
    """The ``providers.aws`` section cannot be used; the message names the key."""


_CONFIG_KEYS = frozenset(
    {
        "regions",
        "endpoint_url",
        "profile",
        "image_id",
        "key_name",
        "security_group_ids",
        "subnet_by_zone",
        "iam_instance_profile",
        "daemon_url",
        "notice_url",
        "checkpoint_store",
        "agent_install",
        "catalog",
        "package_store",
        "imds_hop_limit",
    }
)


def _per_region(value: Any, key: str) -> dict[str, Any]:
    """``"ami-1"`` (every region) or ``{us-east-1: ami-1, ...}``; ``"*"`` is the default."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, str | list):
        return {"*": value}
    raise AwsConfigError(f"providers.aws.{key}: expected a string or a region mapping")


@dataclass(frozen=True, slots=True)
class AwsConfig:
    """``providers.aws`` in config.yaml (or ``SPOTD_PROVIDERS_JSON``)::

    providers:
      aws:
        regions: [us-east-1, us-west-2]        # default: every region of the catalog
        endpoint_url: http://127.0.0.1:5000    # moto, LocalStack; default: AWS itself
        profile: my-profile                    # default: the standard credential chain
        image_id: ami-0abc                     # or {us-east-1: ami-1, us-west-2: ami-2}
        key_name: my-key
        security_group_ids: [sg-1]             # or per region
        subnet_by_zone: {us-east-1a: subnet-1}
        iam_instance_profile: spotd-agent      # lets agents write S3 checkpoints
        daemon_url: http://10.0.0.5:8470       # how agents reach this daemon's TCP API
        notice_url: http://169.254.169.254     # the metadata service agents poll
        checkpoint_store: s3://bucket/prefix   # checkpoints at s3://bucket/prefix/<task>/
        package_store: s3://bucket/prefix      # workdir/file_mounts packages
                                               # (spotd.files.mounts; default:
                                               # <checkpoint_store>/packages)
        agent_install: spotd[aws]==0.1.0       # what user-data pip-installs
        catalog: /path/to/aws.yaml             # default: refreshed copy, else the snapshot
        imds_hop_limit: 1                      # IMDSv2 token hops (2: containers need tokens)

    Instances require IMDSv2 session tokens. ``imds_hop_limit`` is how many network hops the
    token's answer may travel: 1 (the default) reaches the instance's own network namespace,
    where user-data runs the agent, and no further, so a container on a bridge network (one
    more hop) gets no token and cannot read the instance role's credentials. Set 2 when jobs
    run containers that need the role (AWS's advice for container hosts).
    """

    regions: tuple[str, ...] = ()
    endpoint_url: str | None = None
    profile: str | None = None
    image_id: Mapping[str, str] = field(default_factory=dict)
    key_name: str | None = None
    security_group_ids: Mapping[str, list[str]] = field(default_factory=dict)
    subnet_by_zone: Mapping[str, str] = field(default_factory=dict)
    iam_instance_profile: str | None = None
    daemon_url: str | None = None
    notice_url: str = DEFAULT_NOTICE_URL
    checkpoint_store: str | None = None
    agent_install: str = DEFAULT_AGENT_INSTALL
    catalog: str | None = None
    package_store: str | None = None
    imds_hop_limit: int = 1

    @property
    def package_store_url(self) -> str | None:
        """Where agents on EC2 get workdir/file_mounts packages from (None: nowhere in S3)."""
        if self.package_store:
            return self.package_store
        return f"{self.checkpoint_store}/packages" if self.checkpoint_store else None

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> AwsConfig:
        unknown = sorted(set(raw) - _CONFIG_KEYS)
        if unknown:
            known = ", ".join(sorted(_CONFIG_KEYS))
            raise AwsConfigError(f"providers.aws: unknown key {unknown[0]!r} (known: {known})")
        regions = raw.get("regions") or []
        if isinstance(regions, str):
            regions = [regions]
        if not isinstance(regions, list) or not all(isinstance(r, str) for r in regions):
            raise AwsConfigError("providers.aws.regions: expected a list of region names")
        store = raw.get("checkpoint_store")
        if store is not None and not str(store).startswith("s3://"):
            raise AwsConfigError("providers.aws.checkpoint_store: expected s3://bucket/prefix")
        packages = raw.get("package_store")
        if packages is not None and not str(packages).startswith("s3://"):
            raise AwsConfigError("providers.aws.package_store: expected s3://bucket/prefix")
        hops = raw.get("imds_hop_limit", 1)
        if isinstance(hops, bool) or not isinstance(hops, int) or not 1 <= hops <= 64:
            raise AwsConfigError("providers.aws.imds_hop_limit: expected a whole number, 1 to 64")
        groups = {
            k: [v] if isinstance(v, str) else list(v)
            for k, v in _per_region(raw.get("security_group_ids"), "security_group_ids").items()
        }
        return cls(
            regions=tuple(regions),
            endpoint_url=raw.get("endpoint_url") or None,
            profile=raw.get("profile") or None,
            image_id=_per_region(raw.get("image_id"), "image_id"),
            key_name=raw.get("key_name") or None,
            security_group_ids=groups,
            subnet_by_zone=dict(raw.get("subnet_by_zone") or {}),
            iam_instance_profile=raw.get("iam_instance_profile") or None,
            daemon_url=raw.get("daemon_url") or None,
            notice_url=raw.get("notice_url") or DEFAULT_NOTICE_URL,
            checkpoint_store=str(store).rstrip("/") if store else None,
            agent_install=raw.get("agent_install") or DEFAULT_AGENT_INSTALL,
            catalog=raw.get("catalog") or None,
            package_store=str(packages).rstrip("/") if packages else None,
            imds_hop_limit=hops,
        )

    def for_region(self, mapping: Mapping[str, Any], region: str) -> Any:
        return mapping.get(region, mapping.get("*"))
