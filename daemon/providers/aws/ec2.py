"""EC2's words, read and written without I/O: error codes → provider error classes,
``DescribeInstances`` items → observations, and the ``RunInstances`` request for one node.

Failures are classified by EC2's error *code* (never its message): capacity, quota, invalid
request, and everything transient (throttling, 5xx, no endpoint) as unavailable.
``StateReason.Code == "Server.SpotInstanceTermination"`` is a preemption; any other terminated
or stopped instance is TERMINATED with EC2's own reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from spotd.providers.aws.config import AwsConfig
from spotd.providers.aws.machine import efa_interfaces, root_volume, user_tags, wants_root_volume
from spotd.providers.base import (
    TAG_KEY,
    CapacityUnavailable,
    InstanceSpec,
    InvalidRequest,
    ObservedInstance,
    ProviderError,
    ProviderUnavailable,
    QuotaExceeded,
)
from spotd.types import InstanceId, InstanceState, Market

SPOT_TERMINATION = "Server.SpotInstanceTermination"

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


def from_client_error(exc: Any, what: str) -> ProviderError:
    """A botocore ``ClientError`` (read duck-typed: its ``response``) as a provider error."""
    err = exc.response.get("Error", {}) if hasattr(exc, "response") else {}
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    out = classify_error(str(err.get("Code", "")), str(err.get("Message", "")), http_status=status)
    out.args = (f"{what}: {out.args[0]}",)
    return out


_STATES: Mapping[str, InstanceState] = MappingProxyType(
    {"pending": InstanceState.PENDING, "running": InstanceState.RUNNING}
)


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


def metadata_options(config: AwsConfig) -> dict[str, Any]:
    """IMDSv2 only: a metadata GET without a session token is refused (the agent does the
    token exchange, ``spotd.agent.imds``), and the token's answer goes ``imds_hop_limit``
    hops at most (1: this instance's own network namespace, see ``AwsConfig``)."""
    return {
        "HttpTokens": "required",
        "HttpEndpoint": "enabled",
        "HttpPutResponseHopLimit": config.imds_hop_limit,
    }


def run_instances_request(
    spec: InstanceSpec,
    config: AwsConfig,
    *,
    image: str,
    token: str,
    user_data: str,
    root_device: str | None = None,
) -> dict[str, Any]:
    """The ``RunInstances`` arguments for one node: tagged (instance and volume, the task's
    labels too), placed in the spec's zone, spot one-time where the spec asks for spot,
    terminated (never stopped) when the agent's machine shuts down, and with IMDSv2 required
    (``metadata_options``). What the task asks of the machine (``spec.machine``: disk size
    and tier, EFA) is ``spotd.providers.aws.machine``'s; a root volume needs ``root_device``,
    the AMI's root device name."""
    tags = user_tags(spec.machine)
    tags += [{"Key": k, "Value": str(v)} for k, v in spec.tags.items()]
    tags.append({"Key": "Name", "Value": f"spotd-{spec.key}"})
    kw: dict[str, Any] = {
        "ImageId": image,
        "InstanceType": spec.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "ClientToken": token,
        "Placement": {"AvailabilityZone": spec.zone},
        "UserData": user_data,
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
        "MetadataOptions": metadata_options(config),
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
    if root_device is not None and wants_root_volume(spec.machine):
        kw["BlockDeviceMappings"] = [root_volume(spec.machine, root_device)]
    subnet = config.subnet_by_zone.get(spec.zone)
    groups = list(config.for_region(config.security_group_ids, spec.region) or [])
    efa = efa_interfaces(spec.machine, spec.instance_type, subnet=subnet, groups=groups)
    if efa:  # the subnet and groups are the interfaces' then (EC2 refuses both places)
        kw["NetworkInterfaces"] = efa
    if subnet and not efa:
        kw["SubnetId"] = subnet
    if groups and not efa:
        kw["SecurityGroupIds"] = groups
    if config.key_name:
        kw["KeyName"] = config.key_name
    if config.iam_instance_profile:
        arn = config.iam_instance_profile.startswith("arn:")
        kw["IamInstanceProfile"] = (
            {"Arn": config.iam_instance_profile} if arn else {"Name": config.iam_instance_profile}
        )
    return kw
