"""EC2 instances, spot or on-demand, through aioboto3 (the only module that talks to EC2).

An instance is one EC2 instance per node of an attempt, tagged with the daemon's home, the
job, the attempt, the node and the idempotency key, and bootstrapped by user-data that installs
spotd and starts the agent with the daemon's address and the node's own bearer token.

Idempotency. ``launch`` first looks for an instance carrying the key's tag (one
``DescribeInstances``), and only then calls ``RunInstances`` with a ``ClientToken`` derived from
the daemon's home and the key. EC2 itself answers a repeated token with the original instance,
which covers a crash between the call and its answer; the tag lookup covers the same crash on
backends that ignore tokens (moto does) and makes a restarted daemon find what it launched.

Observation. One ``DescribeInstances`` per region per tick, filtered by the home tag; every
region answers or the whole listing fails (``ProviderUnavailable``): a region that did not
answer must never read as "every instance there vanished", which the controller would take
for preemptions. ``StateReason.Code == "Server.SpotInstanceTermination"`` is a preemption; any
other terminated or stopped instance is TERMINATED with EC2's own reason.

The two-minute interruption notice is not an EC2 API answer: it appears in the instance
metadata service, which the agent polls (``notice_url``). So this provider never reports
NOTICE itself; the agent does, through its heartbeat.

Failures are classified by EC2's error *code* (never its message) into the provider error
types: capacity, quota, invalid request, and everything transient (throttling, 5xx, no
endpoint) as unavailable.

Credentials come from the standard chain (environment, shared files and profiles, container
and instance roles). Without any, the provider is built *disabled*: it offers nothing, refuses
to launch, and its listing fails (slowly, so the log is not flooded) rather than report no
instances; ``disabled_reason`` says why in one line (``spotctl check --providers``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import gzip
import hashlib
import json
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
import yaml
from spotd.pricing.catalog import load_catalog, parse_catalog
from spotd.providers.base import (
    TAG_HOME,
    TAG_KEY,
    CapacityUnavailable,
    InstanceSpec,
    InvalidRequest,
    ObservedInstance,
    ProviderError,
    ProviderUnavailable,
    QuotaExceeded,
)
from spotd.types import AgentConfig, CatalogEntry, InstanceId, InstanceState, Market

log = structlog.get_logger("spotd.providers.aws")

PROVIDER_NAME = "aws"
DEFAULT_NOTICE_URL = "http://169.254.169.254"  # the instance metadata service
SPOT_TERMINATION = "Server.SpotInstanceTermination"
AGENT_ROOT = "/var/lib/spotd"  # where user-data puts the agent's files on the instance
DEFAULT_AGENT_INSTALL = "spotd[aws]"
USER_DATA_LIMIT = 16 * 1024  # EC2 refuses larger user-data
DISABLED_LIST_PAUSE = 3.0  # a disabled provider's listing fails at most this often (the
# pause holds only the aws observer, and stays under the supervisor's 5 s stop timeout)

# -- failure classification by error code ------------------------------------------------

CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientFreeAddressesInSubnet",
        "SpotMaxPriceTooLow",
        "InsufficientCapacityOnOutpost",
        "capacity-not-available",
    }
)
QUOTA_CODES = frozenset({"MaxSpotInstanceCountExceeded", "InstanceLimitExceeded"})
UNAVAILABLE_CODES = frozenset(
    {
        "RequestLimitExceeded",  # EC2's throttling code: transient, not a quota
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "SlowDown",
        "ServiceUnavailable",
        "Unavailable",
        "InternalError",
        "InternalFailure",
        "ServerInternal",
        "RequestTimeout",
        "RequestExpired",
    }
)
INVALID_CODES = frozenset(
    {
        "Unsupported",
        "UnsupportedOperation",
        "MissingParameter",
        "IdempotentParameterMismatch",
        "UnauthorizedOperation",
        "AuthFailure",
        "OptInRequired",
        "Blocked",
        "InvalidInstanceType",
    }
)


def classify_error(code: str, message: str, *, http_status: int | None = None) -> ProviderError:
    """The provider error type for an EC2 error code (the message is only carried along)."""
    text = f"{code}: {message}" if message else code
    if code in CAPACITY_CODES:
        return CapacityUnavailable(text)
    if code in UNAVAILABLE_CODES:
        return ProviderUnavailable(text)
    if code in QUOTA_CODES or code.endswith("LimitExceeded"):
        return QuotaExceeded(text)
    if code in INVALID_CODES or code.startswith("Invalid"):
        return InvalidRequest(text)
    if http_status is not None and http_status >= 500:
        return ProviderUnavailable(text)
    return InvalidRequest(text)  # an unknown 4xx: repeating the same request will not help


def _from_client_error(exc: Any, what: str) -> ProviderError:
    err = exc.response.get("Error", {}) if hasattr(exc, "response") else {}
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    out = classify_error(str(err.get("Code", "")), str(err.get("Message", "")), http_status=status)
    out.args = (f"{what}: {out.args[0]}",)
    return out


# -- configuration -----------------------------------------------------------------------


class AwsConfigError(ValueError):
    """The ``providers.aws`` section cannot be used; the message names the key."""


_CONFIG_KEYS = {
    "regions", "endpoint_url", "profile", "image_id", "key_name", "security_group_ids",
    "subnet_by_zone", "iam_instance_profile", "daemon_url", "notice_url", "checkpoint_store",
    "agent_install", "catalog", "package_store",
}


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
            package_store: s3://bucket/prefix      # workdir/file_mounts packages (spotd.files.mounts);
                                                   # default: <checkpoint_store>/packages
            agent_install: spotd[aws]==0.1.0       # what user-data pip-installs
            catalog: /path/to/aws.yaml             # default: refreshed copy, else the snapshot
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
            raise AwsConfigError(
                f"providers.aws: unknown key {unknown[0]!r} (known: {', '.join(sorted(_CONFIG_KEYS))})"
            )
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
        )

    def for_region(self, mapping: Mapping[str, Any], region: str) -> Any:
        return mapping.get(region, mapping.get("*"))


def credentials_problem(profile: str | None = None) -> str | None:
    """None if the standard chain finds credentials, else why not (one line)."""
    try:
        import aioboto3  # noqa: F401 - only to say plainly that it is missing
        import botocore.exceptions
        import botocore.session
    except ImportError:
        return "aioboto3 is not installed (pip install 'spotd[aws]')"
    try:
        creds = botocore.session.Session(profile=profile).get_credentials()
    except botocore.exceptions.BotoCoreError as exc:
        return f"no usable AWS credentials: {exc}"
    if creds is None:
        return (
            "no AWS credentials found (environment, ~/.aws, profile or instance role); "
            "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        )
    return None


# -- pure helpers: token, user-data, observation -------------------------------------------


def client_token(spec: InstanceSpec) -> str:
    """EC2's idempotency token for one node of one attempt of one daemon (at most 64 chars)."""
    raw = f"spotd-{spec.tags.get(TAG_HOME, '')}-{spec.key}"
    if len(raw) <= 64:
        return raw
    return "spotd-" + hashlib.sha256(raw.encode()).hexdigest()[:58]


def agent_for_instance(agent: AgentConfig, *, notice_url: str, checkpoint_store: str | None) -> AgentConfig:
    """The agent's config as it runs on the instance: its own directory, the metadata service,
    and the S3 checkpoint prefix of the task (the daemon's local directory means nothing there)."""
    store = agent.checkpoint_store
    if checkpoint_store:
        store = f"{checkpoint_store}/{agent.task_id}/"
    return dataclasses.replace(
        agent,
        instance_dir=f"{AGENT_ROOT}/{agent.instance_key}",
        notice_url=notice_url,
        checkpoint_store=store,
    )


def render_user_data(agent: AgentConfig, *, install: str) -> str:
    """The bash script EC2 runs as root on first boot: install spotd, write the agent's config,
    start the agent as a systemd unit (restarted if it crashes; it resumes from its state file).

    The agent config (job scripts, envs and the per-instance token) is embedded gzip+base64.
    """
    blob = base64.b64encode(
        gzip.compress(json.dumps(dataclasses.asdict(agent)).encode(), mtime=0)
    ).decode()
    d = shlex.quote(agent.instance_dir)
    script = f"""#!/bin/bash
# spotd agent bootstrap for {agent.instance_key} (EC2 user-data; runs once, as root)
set -euo pipefail
exec >>/var/log/spotd-bootstrap.log 2>&1
mkdir -p {d}
chmod 700 {d}
if ! [ -x /opt/spotd/bin/python ]; then
  command -v python3 >/dev/null || (dnf install -y python3 || apt-get install -y python3-venv)
  python3 -m venv /opt/spotd
  /opt/spotd/bin/pip install --quiet {shlex.quote(install)}
fi
echo {blob} | base64 -d | gunzip > {d}/agent.json
chmod 600 {d}/agent.json
systemd-run --unit=spotd-agent-{agent.instance_key} --property=Restart=on-failure \\
  --working-directory={d} /opt/spotd/bin/python -m spotd.agent {d}
"""
    if len(script.encode()) > USER_DATA_LIMIT:
        raise InvalidRequest(
            f"user-data for {agent.instance_key} is {len(script.encode())} bytes, over EC2's "
            f"16 KiB: shorten the task's setup/run/envs"
        )
    return script


def agent_from_user_data(script: str) -> dict[str, Any]:
    """The agent config embedded by ``render_user_data`` (for tests that play the instance)."""
    for line in script.splitlines():
        if line.startswith("echo ") and "| base64 -d | gunzip" in line:
            blob = line.split()[1]
            data: dict[str, Any] = json.loads(gzip.decompress(base64.b64decode(blob)))
            return data
    raise ValueError("no agent config in this user-data")


_STATES = {
    "pending": InstanceState.PENDING,
    "running": InstanceState.RUNNING,
}


def observe(inst: Mapping[str, Any], region: str) -> ObservedInstance | None:
    """One ``DescribeInstances`` item as an observation; None if it carries no spotd key."""
    tags = {t["Key"]: t["Value"] for t in inst.get("Tags") or []}
    key = tags.get(TAG_KEY)
    if not key:
        return None
    name = inst.get("State", {}).get("Name", "")
    reason = inst.get("StateReason") or {}
    code = str(reason.get("Code") or "")
    said = str(reason.get("Message") or inst.get("StateTransitionReason") or "")
    state = _STATES.get(name)
    if state is None:  # shutting-down, terminated, stopping, stopped: not running our agent
        state = InstanceState.PREEMPTED if code == SPOT_TERMINATION else InstanceState.TERMINATED
    text = code if not said or said.startswith(code) else f"{code}: {said}"
    return ObservedInstance(
        id=InstanceId(inst["InstanceId"]),
        key=key,
        region=region,
        zone=inst.get("Placement", {}).get("AvailabilityZone", ""),
        state=state,
        tags=tags,
        reason=text if state not in (InstanceState.PENDING, InstanceState.RUNNING) else "",
        address=inst.get("PrivateIpAddress") or inst.get("PublicIpAddress") or "",
    )


# -- the catalog ---------------------------------------------------------------------------


def snapshot_path() -> Any:
    import importlib.resources

    return importlib.resources.files("spotd").joinpath("data/aws_catalog.yaml")


def refreshed_path(home: Path) -> Path:
    """Where ``spotctl catalog refresh`` writes the catalog with live spot prices."""
    return home / "catalogs" / "aws.yaml"


def load_aws_catalog(config: AwsConfig, home: Path | None) -> list[CatalogEntry]:
    """The configured file, else a refreshed copy under the home, else the packaged snapshot;
    restricted to the configured regions."""
    if config.catalog:
        entries = load_catalog(config.catalog)
    elif home is not None and refreshed_path(home).exists():
        entries = load_catalog(refreshed_path(home))
    else:
        entries = parse_catalog(snapshot_path().read_text(encoding="utf-8"),
                                source="spotd:data/aws_catalog.yaml")
    entries = [e for e in entries if e.provider == PROVIDER_NAME]
    if config.regions:
        entries = [e for e in entries if e.region in config.regions]
    return entries


# -- the provider --------------------------------------------------------------------------


class AwsProvider:
    """EC2 through aioboto3, one client per region, opened on first use."""

    name = PROVIDER_NAME

    def __init__(
        self,
        config: AwsConfig,
        catalog: Sequence[CatalogEntry],
        *,
        home_tag: str | None = None,
        disabled_reason: str | None = None,
        session: Any = None,  # an aioboto3.Session to share (tests hook its events)
    ) -> None:
        self.config = config
        self.snapshot = [e for e in catalog if e.provider == PROVIDER_NAME]
        self.regions = config.regions or tuple(dict.fromkeys(e.region for e in self.snapshot))
        self.home_tag = home_tag  # when set, listings ask EC2 for this daemon's instances only
        self.disabled_reason = disabled_reason
        self.daemon_url = config.daemon_url  # read by the controller for agents' AgentConfig
        self.notice_url = config.notice_url
        self._offered = {(e.region, e.zone, e.instance_type) for e in self.snapshot}
        self._region_of: dict[str, str] = {}
        self._clients: dict[str, Any] = {}
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()
        self._session: Any = session
        self._disabled_listed = False

    def catalog(self) -> Sequence[CatalogEntry]:
        return [] if self.disabled_reason else self.snapshot

    # -- clients -----------------------------------------------------------------------------

    async def _client(self, region: str) -> Any:
        if self.disabled_reason:
            raise ProviderUnavailable(f"aws is disabled: {self.disabled_reason}")
        client = self._clients.get(region)
        if client is not None:
            return client
        async with self._lock:
            if region not in self._clients:
                import aioboto3
                from aiobotocore.config import AioConfig

                if self._session is None:
                    self._session = aioboto3.Session(profile_name=self.config.profile)
                cfg = AioConfig(
                    connect_timeout=5, read_timeout=20,
                    retries={"max_attempts": 3, "mode": "standard"},
                )
                self._clients[region] = await self._stack.enter_async_context(
                    self._session.client(
                        "ec2", region_name=region, endpoint_url=self.config.endpoint_url, config=cfg
                    )
                )
            return self._clients[region]

    async def _call(self, region: str, op: str, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        client = await self._client(region)
        try:
            return await getattr(client, op)(**kw)
        except ClientError as exc:
            raise _from_client_error(exc, f"{region} {op}") from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise ProviderUnavailable(f"{region} {op}: {exc}") from exc

    async def _describe(self, region: str, filters: list[dict[str, Any]]) -> list[ObservedInstance]:
        from botocore.exceptions import BotoCoreError, ClientError

        client = await self._client(region)
        out: list[ObservedInstance] = []
        try:
            async for page in client.get_paginator("describe_instances").paginate(
                Filters=filters, PaginationConfig={"PageSize": 1000}
            ):
                for res in page.get("Reservations", []):
                    for inst in res.get("Instances", []):
                        obs = observe(inst, region)
                        if obs is not None:
                            self._region_of[obs.id] = region
                            out.append(obs)
        except ClientError as exc:
            raise _from_client_error(exc, f"{region} DescribeInstances") from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise ProviderUnavailable(f"{region} DescribeInstances: {exc}") from exc
        return out

    def _home_filter(self, home: str | None) -> dict[str, Any]:
        if home:
            return {"Name": f"tag:{TAG_HOME}", "Values": [home]}
        return {"Name": "tag-key", "Values": [TAG_HOME]}

    # -- the provider interface ------------------------------------------------------------

    async def launch(self, spec: InstanceSpec) -> InstanceId:
        if spec.region not in self.regions:
            raise InvalidRequest(f"region {spec.region} is not configured for aws "
                                 f"(configured: {', '.join(self.regions)})")
        if (spec.region, spec.zone, spec.instance_type) not in self._offered:
            raise InvalidRequest(f"{spec.instance_type} is not offered in {spec.region}/{spec.zone}")
        image = self.config.for_region(self.config.image_id, spec.region)
        if not image:
            raise InvalidRequest(f"no image_id configured for {spec.region} (providers.aws.image_id)")
        home = spec.tags.get(TAG_HOME)
        found = await self._describe(
            spec.region,
            [self._home_filter(home), {"Name": f"tag:{TAG_KEY}", "Values": [spec.key]}],
        )
        if found:  # launched before a crash: the same instance, never a second one
            live = [o for o in found if o.state in (InstanceState.PENDING, InstanceState.RUNNING)]
            return (live or found)[0].id
        agent = agent_for_instance(
            spec.agent, notice_url=self.config.notice_url,
            checkpoint_store=self.config.checkpoint_store,
        )
        tags = [{"Key": k, "Value": str(v)} for k, v in spec.tags.items()]
        tags.append({"Key": "Name", "Value": f"spotd-{spec.key}"})
        kw: dict[str, Any] = {
            "ImageId": image,
            "InstanceType": spec.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": client_token(spec),
            "Placement": {"AvailabilityZone": spec.zone},
            "UserData": render_user_data(agent, install=self.config.agent_install),
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
            # The agent polls the metadata service without an IMDSv2 session token.
            "MetadataOptions": {"HttpTokens": "optional", "HttpEndpoint": "enabled"},
            "InstanceInitiatedShutdownBehavior": "terminate",
        }
        if spec.market == Market.SPOT:
            kw["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                },
            }
        subnet = self.config.subnet_by_zone.get(spec.zone)
        if subnet:
            kw["SubnetId"] = subnet
        groups = self.config.for_region(self.config.security_group_ids, spec.region)
        if groups:
            kw["SecurityGroupIds"] = list(groups)
        if self.config.key_name:
            kw["KeyName"] = self.config.key_name
        if self.config.iam_instance_profile:
            arn = self.config.iam_instance_profile.startswith("arn:")
            kw["IamInstanceProfile"] = (
                {"Arn": self.config.iam_instance_profile} if arn
                else {"Name": self.config.iam_instance_profile}
            )
        resp = await self._call(spec.region, "run_instances", **kw)
        iid = InstanceId(resp["Instances"][0]["InstanceId"])
        self._region_of[iid] = spec.region
        log.info("launched", instance=iid, key=spec.key, region=spec.region, zone=spec.zone,
                 instance_type=spec.instance_type, market=str(spec.market))
        return iid

    async def list_instances(self) -> Sequence[ObservedInstance]:
        if self.disabled_reason:
            if self._disabled_listed:
                await asyncio.sleep(DISABLED_LIST_PAUSE)
            self._disabled_listed = True
            raise ProviderUnavailable(f"aws is disabled: {self.disabled_reason}")
        filters = [self._home_filter(self.home_tag)]
        per_region = await asyncio.gather(*(self._describe(r, filters) for r in self.regions))
        return [o for found in per_region for o in found]

    async def terminate(self, instance_id: InstanceId) -> None:
        known = self._region_of.get(instance_id)
        for region in [known] if known else list(self.regions):
            try:
                await self._call(region, "terminate_instances", InstanceIds=[instance_id])
            except InvalidRequest as exc:
                if "InvalidInstanceID" in str(exc):
                    continue  # not in this region (or long gone): nothing to do here
                raise
            self._region_of[instance_id] = region
            return

    async def close(self) -> None:
        await self._stack.aclose()
        self._clients.clear()


def from_settings(settings: Any, raw: Mapping[str, Any]) -> AwsProvider:
    """The factory ``spotd.server`` registers as ``"aws"``."""
    config = AwsConfig.from_mapping(raw)
    catalog = load_aws_catalog(config, settings.home)
    reason = credentials_problem(config.profile)
    if reason:
        log.warning("aws provider disabled", reason=reason)
    elif not config.checkpoint_store:
        log.warning("aws: no checkpoint_store (s3://...) configured: checkpoints of jobs on "
                    "EC2 do not outlive their instances")
    return AwsProvider(config, catalog, home_tag=settings.home_tag, disabled_reason=reason)


# -- spot price refresh --------------------------------------------------------------------


@dataclass
class RefreshResult:
    text: str  # the refreshed catalog, in the catalog format
    updated: int = 0  # zone prices replaced by a live quote
    kept: int = 0  # zone prices kept from the snapshot (no quote, or an implausible one)
    lines: list[str] = field(default_factory=list)


PLAUSIBLE_SPOT = (0.02, 1.0)  # a live spot quote is used only within these fractions of on-demand


def apply_spot_quotes(
    snapshot_text: str, quotes: Mapping[tuple[str, str, str], float], *, now: float
) -> RefreshResult:
    """The snapshot with per-zone spot overrides from ``quotes`` ((region, zone, type) -> $/h).

    A quote outside ``PLAUSIBLE_SPOT`` times on-demand is ignored and the snapshot's price kept:
    moto answers 0.00001 for everything, and a real market never sells a GPU for nothing.
    """
    entries = parse_catalog(snapshot_text, source="aws catalog")
    doc = yaml.safe_load(snapshot_text)
    by_type = {t["name"]: t for t in doc["instance_types"]}
    result = RefreshResult(text="")
    implausible = 0
    for e in entries:
        if e.provider != PROVIDER_NAME or e.spot_price is None:
            continue
        quote = quotes.get((e.region, e.zone, e.instance_type))
        lo, hi = PLAUSIBLE_SPOT
        if quote is None or not lo * e.ondemand_price <= quote <= hi * e.ondemand_price:
            result.kept += 1
            implausible += quote is not None
            continue
        prices = by_type[e.instance_type]["prices"][e.region]
        prices.setdefault("zones", {}).setdefault(e.zone, {})["spot"] = round(quote, 4)
        result.updated += 1
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"# EC2 catalog with spot prices refreshed from DescribeSpotPriceHistory at {stamp}\n"
        f"# ({result.updated} zone prices live, {result.kept} kept from the snapshot).\n"
    )
    result.text = header + yaml.safe_dump(doc, sort_keys=False)
    parse_catalog(result.text, source="refreshed aws catalog")  # never write a broken catalog
    if implausible:
        result.lines.append(
            f"{implausible} quotes were implausible (outside {lo:g}-{hi:g}x on-demand, e.g. "
            f"moto's 0.00001): kept the snapshot's prices for them"
        )
    return result


async def fetch_spot_quotes(
    provider: AwsProvider, types_by_region: Mapping[str, set[str]]
) -> dict[tuple[str, str, str], float]:
    """The newest Linux spot price per (region, zone, type), one paginated call per region."""
    quotes: dict[tuple[str, str, str], tuple[datetime, float]] = {}

    async def region(r: str) -> None:
        client = await provider._client(r)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            async for page in client.get_paginator("describe_spot_price_history").paginate(
                InstanceTypes=sorted(types_by_region[r]),
                ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
                StartTime=datetime.now(UTC),
            ):
                for q in page.get("SpotPriceHistory", []):
                    k = (r, q["AvailabilityZone"], q["InstanceType"])
                    ts, price = q["Timestamp"], float(q["SpotPrice"])
                    if k not in quotes or ts > quotes[k][0]:
                        quotes[k] = (ts, price)
        except ClientError as exc:
            raise _from_client_error(exc, f"{r} DescribeSpotPriceHistory") from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise ProviderUnavailable(f"{r} DescribeSpotPriceHistory: {exc}") from exc

    await asyncio.gather(*(region(r) for r in types_by_region))
    return {k: v[1] for k, v in quotes.items()}


async def refresh_catalog(settings: Any, raw: Mapping[str, Any]) -> RefreshResult:
    """Live spot prices over the snapshot, written to ``refreshed_path(home)``."""
    config = AwsConfig.from_mapping(raw)
    reason = credentials_problem(config.profile)
    if reason:
        raise ProviderUnavailable(reason)
    text = (
        Path(config.catalog).read_text(encoding="utf-8") if config.catalog
        else snapshot_path().read_text(encoding="utf-8")
    )
    entries = [e for e in parse_catalog(text) if e.provider == PROVIDER_NAME]
    provider = AwsProvider(config, entries)
    types: dict[str, set[str]] = {}
    for e in entries:
        if e.region in provider.regions and e.spot_price is not None:
            types.setdefault(e.region, set()).add(e.instance_type)
    try:
        quotes = await fetch_spot_quotes(provider, types)
    finally:
        await provider.close()
    result = apply_spot_quotes(text, quotes, now=time.time())
    out = refreshed_path(settings.home)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(result.text, encoding="utf-8")
    tmp.replace(out)
    result.lines.insert(0, f"wrote {out}: {result.updated} spot prices updated, "
                           f"{result.kept} kept from the snapshot")
    return result
