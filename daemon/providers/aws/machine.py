"""What a task asks of an EC2 machine beyond its type, in EC2's words (no I/O).

``resources.disk_size`` / ``disk_tier`` become the root volume's ``BlockDeviceMappings``,
``network_tier: best`` becomes EFA network interfaces where the instance type has them, and
``labels`` (with ``config: aws.labels``) become tags on the instance and its volumes.

Disk tiers follow SkyPilot's AWS mapping (``sky/clouds/aws.py``, ``AWS._get_disk_type`` and
``AWS._get_disk_specs``; ``best`` is the best tier the cloud has, ``ultra`` on AWS)::

    low     standard (magnetic)        no IOPS setting
    medium  gp3   3500 IOPS   218 MiB/s  (throughput = IOPS // 16, gp3 only)
    high    gp3   7000 IOPS   437 MiB/s
    ultra   io2  20000 IOPS
    best    = ultra

A tier without a ``disk_size`` gets SkyPilot's default size, 256 GB (io2's 20000 IOPS need at
least 40 GiB: 500 IOPS per GiB); a ``disk_size`` without a tier gets gp3 at its baseline (3000
IOPS, 125 MiB/s), the cheapest SSD, not a dearer tier the user did not ask for.

EFA: ``network_tier: best`` on a type of ``EFA_INTERFACES`` asks for one EFA interface per
network card (AWS: "Elastic Fabric Adapter", supported instance types; "Network cards"): the
first on card 0 as the primary interface (device 0), the others on cards 1.. (device 1). The
subnet and security groups then move into the interfaces, as EC2 requires. On any other type
the request is unchanged and ``efa_problem`` says why (the provider logs it): the default
network, never a launch that fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from spotd.providers.base import TAG_PREFIX
from spotd.spec.resources import MachineAsk

DEFAULT_TIER_DISK_GB = 256  # SkyPilot's default disk_size

# tier -> (volume type, IOPS or None); SkyPilot's AWS mapping (module docstring)
DISK_TIERS: Mapping[str, tuple[str, int | None]] = MappingProxyType(
    {
        "low": ("standard", None),
        "medium": ("gp3", 3500),
        "high": ("gp3", 7000),
        "ultra": ("io2", 20000),
        "best": ("io2", 20000),
    }
)

# instance type -> how many EFA interfaces it takes (one per network card); from AWS's list of
# EFA-capable instance types. A type not here gets the default network.
EFA_INTERFACES: Mapping[str, int] = MappingProxyType(
    {
        **dict.fromkeys(("c5n.18xlarge", "c5n.metal", "p3dn.24xlarge"), 1),
        **dict.fromkeys(("g4dn.8xlarge", "g4dn.12xlarge", "g4dn.16xlarge", "g4dn.metal"), 1),
        **dict.fromkeys(("g5.8xlarge", "g5.12xlarge", "g5.16xlarge", "g5.24xlarge"), 1),
        "g5.48xlarge": 1,
        **dict.fromkeys(("g6.8xlarge", "g6.12xlarge", "g6.16xlarge", "g6.24xlarge"), 1),
        "g6.48xlarge": 1,
        **dict.fromkeys(("g6e.8xlarge", "g6e.12xlarge", "g6e.16xlarge"), 1),
        "g6e.24xlarge": 2,
        "g6e.48xlarge": 4,
        "p4d.24xlarge": 4,
        "p4de.24xlarge": 4,
        "p5.48xlarge": 32,
        "p5e.48xlarge": 32,
        "p5en.48xlarge": 16,
        "trn1.32xlarge": 8,
        "trn1n.32xlarge": 16,
    }
)


def wants_root_volume(ask: MachineAsk) -> bool:
    """Whether the launch must say what the root volume is (and so needs its device name)."""
    return ask.disk_size_gb is not None or ask.disk_tier is not None or ask.disk_encrypted


def root_volume(ask: MachineAsk, device_name: str) -> dict[str, Any]:
    """The ``BlockDeviceMappings`` entry of the root volume (``device_name``: the AMI's)."""
    kind, iops = DISK_TIERS[ask.disk_tier] if ask.disk_tier else ("gp3", None)
    size = ask.disk_size_gb or (DEFAULT_TIER_DISK_GB if ask.disk_tier else None)
    ebs: dict[str, Any] = {"VolumeType": kind, "DeleteOnTermination": True}
    if size is not None:
        ebs["VolumeSize"] = size
    if iops is not None:
        ebs["Iops"] = iops
    if kind == "gp3" and iops is not None:
        ebs["Throughput"] = iops // 16  # SkyPilot's choice; custom throughput is gp3's only
    if ask.disk_encrypted:
        ebs["Encrypted"] = True
    return {"DeviceName": device_name, "Ebs": ebs}


def efa_problem(ask: MachineAsk, instance_type: str) -> str | None:
    """Why ``network_tier: best`` gets the default network here (None: EFA, or not asked)."""
    if ask.network_tier != "best" or instance_type in EFA_INTERFACES:
        return None
    return (
        f"network_tier best: {instance_type} has no EFA (EFA types include p4d.24xlarge, "
        "p5.48xlarge, g5.8xlarge and up): the default network"
    )


def efa_interfaces(
    ask: MachineAsk, instance_type: str, *, subnet: str | None, groups: list[str]
) -> list[dict[str, Any]]:
    """The ``NetworkInterfaces`` for ``network_tier: best`` (empty: the default network)."""
    if ask.network_tier != "best":
        return []
    out: list[dict[str, Any]] = []
    for card in range(EFA_INTERFACES.get(instance_type, 0)):
        nic: dict[str, Any] = {
            "NetworkCardIndex": card,
            "DeviceIndex": 0 if card == 0 else 1,
            "InterfaceType": "efa",
            "DeleteOnTermination": True,
        }
        if subnet:
            nic["SubnetId"] = subnet
        if groups:
            nic["Groups"] = list(groups)
        out.append(nic)
    return out


def user_tags(ask: MachineAsk) -> list[dict[str, str]]:
    """The task's labels as EC2 tags; spotd's own tags (``spotd-*``) and ``Name`` stay its."""
    return [
        {"Key": k, "Value": v}
        for k, v in ask.labels.items()
        if not k.startswith(TAG_PREFIX) and k != "Name"
    ]
