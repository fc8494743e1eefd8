"""What a task asks of an EC2 machine beyond its type (issue #19): ``disk_size`` and
``disk_tier`` as the root EBS volume, ``network_tier: best`` as EFA interfaces where the type
has them, ``labels`` (and ``config: aws.labels``) as tags, ``image_id`` as the AMI.

The request is checked as EC2 would be asked (a table, no I/O), then against moto through
aioboto3: moto records each volume's size and type, the tags, and the network interfaces it
created, but not IOPS, throughput or an interface's type, so those are read from the request
as botocore sent it (a session event hook).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioboto3
import pytest
from moto.backends import get_backend

from spotd.providers.aws import AwsConfig, AwsProvider, load_aws_catalog, run_instances_request
from spotd.providers.aws.machine import efa_problem
from spotd.providers.base import TAG_HOME, TAG_KEY, InstanceSpec, InvalidRequest
from spotd.spec import load_task
from spotd.spec.resources import MachineAsk
from spotd.types import AgentConfig, Market
from tests.aws.motoserver import ACCOUNT, AMI, Moto, moto_server  # noqa: F401
from tests.aws.test_daemon_on_moto import AwsDaemon, aws_daemon, eventually, tags  # noqa: F401

pytestmark = pytest.mark.aws

XVDA_AMI = "ami-760aaa0f"  # one of moto's images whose root device is /dev/xvda


def spec(
    ask: MachineAsk,
    *,
    instance_type: str = "g4dn.xlarge",
    region: str = "us-west-2",
    zone: str = "us-west-2a",
    home: str = "h",
    key: str = "j1-a1-n0",
) -> InstanceSpec:
    agent = AgentConfig(
        instance_key=key,
        attempt_id="j1-a1",
        job_id=1,
        task_id="t",
        attempt=1,
        node_rank=0,
        num_nodes=1,
        setup=None,
        run="true",
        daemon_url="http://d:1",
        token="x",
        checkpoint_store="/c",
    )
    return InstanceSpec(
        key=key,
        region=region,
        zone=zone,
        instance_type=instance_type,
        market=Market.SPOT,
        tags={TAG_HOME: home, TAG_KEY: key},
        agent=agent,
        machine=ask,
    )


def request(ask: MachineAsk, *, instance_type: str = "g4dn.xlarge", **cfg: Any) -> dict[str, Any]:
    config = AwsConfig.from_mapping(cfg)
    return run_instances_request(
        spec(ask, instance_type=instance_type),
        config,
        image="ami-1",
        token="t",
        user_data="",
        root_device="/dev/sda1",
    )


@pytest.mark.parametrize(
    ("ask", "ebs"),
    [
        (MachineAsk(), None),
        (
            MachineAsk(disk_size_gb=1024),
            {"VolumeType": "gp3", "VolumeSize": 1024, "DeleteOnTermination": True},
        ),
        (
            MachineAsk(disk_tier="low"),
            {"VolumeType": "standard", "VolumeSize": 256, "DeleteOnTermination": True},
        ),
        (
            MachineAsk(disk_size_gb=100, disk_tier="medium"),
            {
                "VolumeType": "gp3",
                "VolumeSize": 100,
                "Iops": 3500,
                "Throughput": 218,
                "DeleteOnTermination": True,
            },
        ),
        (
            MachineAsk(disk_size_gb=500, disk_tier="high"),
            {
                "VolumeType": "gp3",
                "VolumeSize": 500,
                "Iops": 7000,
                "Throughput": 437,
                "DeleteOnTermination": True,
            },
        ),
        (
            MachineAsk(disk_tier="ultra"),
            {"VolumeType": "io2", "VolumeSize": 256, "Iops": 20000, "DeleteOnTermination": True},
        ),
        (
            MachineAsk(disk_size_gb=2048, disk_tier="best", disk_encrypted=True),
            {
                "VolumeType": "io2",
                "VolumeSize": 2048,
                "Iops": 20000,
                "DeleteOnTermination": True,
                "Encrypted": True,
            },
        ),
    ],
)
def test_disk_keys_are_the_root_volume(ask: MachineAsk, ebs: dict[str, Any] | None) -> None:
    kw = request(ask)
    if ebs is None:
        assert "BlockDeviceMappings" not in kw
    else:
        assert kw["BlockDeviceMappings"] == [{"DeviceName": "/dev/sda1", "Ebs": ebs}]


@pytest.mark.parametrize(
    ("instance_type", "cfg", "cards"),
    [
        ("p4d.24xlarge", {}, 4),
        ("g5.12xlarge", {}, 1),
        ("p5.48xlarge", {}, 32),
        ("p4d.24xlarge", {"subnet_by_zone": {"us-west-2a": "subnet-1"}}, 4),
        ("p4d.24xlarge", {"security_group_ids": ["sg-1", "sg-2"]}, 4),
        ("g4dn.xlarge", {"subnet_by_zone": {"us-west-2a": "subnet-1"}}, 0),
    ],
)
def test_network_tier_best_is_efa_where_the_type_has_it(
    instance_type: str, cfg: dict[str, Any], cards: int
) -> None:
    kw = request(MachineAsk(network_tier="best"), instance_type=instance_type, **cfg)
    nics = kw.get("NetworkInterfaces", [])
    assert [n["NetworkCardIndex"] for n in nics] == list(range(cards))
    assert [n["DeviceIndex"] for n in nics] == [0, *[1] * (cards - 1)][:cards]
    assert all(n["InterfaceType"] == "efa" for n in nics)
    subnet = cfg.get("subnet_by_zone", {}).get("us-west-2a")
    groups = cfg.get("security_group_ids")
    if cards:  # EC2 takes the subnet and groups in the interfaces, never beside them too
        assert "SubnetId" not in kw and "SecurityGroupIds" not in kw
        assert all(n.get("SubnetId") == subnet and n.get("Groups") == groups for n in nics)
        assert efa_problem(MachineAsk(network_tier="best"), instance_type) is None
    else:
        assert kw.get("SubnetId") == subnet
        why = efa_problem(MachineAsk(network_tier="best"), instance_type)
        assert why is not None and f"{instance_type} has no EFA" in why


def test_standard_network_tier_changes_nothing() -> None:
    assert request(MachineAsk(network_tier="standard"), instance_type="p4d.24xlarge") == request(
        MachineAsk(), instance_type="p4d.24xlarge"
    )


def test_labels_are_tags_and_spotd_keeps_its_own() -> None:
    ask = MachineAsk(labels={"team": "ml", TAG_KEY: "forged", "Name": "mine"})
    kw = request(ask)
    for spec_ in kw["TagSpecifications"]:
        tags = {t["Key"]: t["Value"] for t in spec_["Tags"]}
        assert tags["team"] == "ml"
        assert tags[TAG_KEY] == "j1-a1-n0" and tags["Name"] == "spotd-j1-a1-n0"
        assert [t["Key"] for t in spec_["Tags"]].count(TAG_KEY) == 1


# -- from the task file to the request -------------------------------------------------------


def test_a_task_file_becomes_the_machine_it_asks_for() -> None:
    task = load_task(
        "t.yaml",
        text=(
            "run: x\n"
            "resources:\n"
            "  infra: aws\n"
            "  disk_size: 1TB\n"
            "  disk_tier: high\n"
            "  network_tier: best\n"
            "  labels: {team: ml}\n"
            "  image_id: {us-west-2: ami-west, us-east-1: ami-east}\n"
            "config:\n"
            "  aws: {labels: {cost-center: '42'}, disk_encrypted: true}\n"
        ),
    )
    ask = task.machine(provider="aws", region="us-west-2", instance_type="p4d.24xlarge")
    assert ask == MachineAsk(
        disk_size_gb=1024,
        disk_tier="high",
        network_tier="best",
        labels={"team": "ml", "cost-center": "42"},
        image_id="ami-west",
        disk_encrypted=True,
    )
    kw = request(ask, instance_type="p4d.24xlarge")
    assert kw["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 1024
    assert len(kw["NetworkInterfaces"]) == 4


def test_an_any_of_entry_brings_its_own_keys() -> None:
    task = load_task(
        "t.yaml",
        text=(
            "run: x\n"
            "resources:\n"
            "  disk_size: 100\n"
            "  any_of:\n"
            "    - {infra: aws, disk_tier: ultra, labels: {at: aws}}\n"
            "    - {infra: k8s, disk_size: 50}\n"
        ),
    )
    on_aws = task.machine(provider="aws", region="us-east-1")
    on_k8s = task.machine(provider="k8s", region="east")
    assert (on_aws.disk_size_gb, on_aws.disk_tier, dict(on_aws.labels)) == (
        100,
        "ultra",
        {"at": "aws"},
    )
    assert (on_k8s.disk_size_gb, on_k8s.disk_tier, dict(on_k8s.labels)) == (50, None, {})


# -- on moto ---------------------------------------------------------------------------------


class OnMoto:
    def __init__(self, m: Moto) -> None:
        self.moto = m
        self.home = f"h-{uuid.uuid4().hex[:10]}"
        self.sent: list[dict[str, Any]] = []
        self.session = aioboto3.Session()
        self.session.events.register(
            "before-parameter-build.ec2.RunInstances",
            lambda params, **_: self.sent.append(dict(params)),
        )
        config = AwsConfig.from_mapping(
            {"regions": ["us-west-2"], "endpoint_url": m.url, "image_id": AMI}
        )
        self.provider = AwsProvider(
            config, load_aws_catalog(config, None), home_tag=self.home, session=self.session
        )

    async def ec2(self, op: str, **kw: Any) -> Any:
        async with aioboto3.Session().client(
            "ec2", region_name="us-west-2", endpoint_url=self.moto.url
        ) as ec2:
            return await getattr(ec2, op)(**kw)


@pytest.fixture
async def on_moto(moto_server: Moto) -> AsyncIterator[OnMoto]:  # noqa: F811
    o = OnMoto(moto_server)
    yield o
    await o.provider.close()


async def test_disk_and_labels_on_moto(on_moto: OnMoto) -> None:
    ask = MachineAsk(disk_size_gb=500, disk_tier="high", labels={"team": "ml"}, image_id=XVDA_AMI)
    iid = await on_moto.provider.launch(spec(ask, home=on_moto.home, key="j9-a1-n0"))
    [sent] = on_moto.sent
    assert sent["ImageId"] == XVDA_AMI  # the task's AMI, not the configured one
    # the root volume is named as the AMI names it (DescribeImages), with the tier's IOPS
    assert sent["BlockDeviceMappings"] == [
        {
            "DeviceName": "/dev/xvda",
            "Ebs": {
                "VolumeType": "gp3",
                "VolumeSize": 500,
                "Iops": 7000,
                "Throughput": 437,
                "DeleteOnTermination": True,
            },
        }
    ]
    r = await on_moto.ec2("describe_instances", InstanceIds=[iid])
    [inst] = [i for res in r["Reservations"] for i in res["Instances"]]
    assert {"Key": "team", "Value": "ml"} in inst["Tags"]
    vols = await on_moto.ec2(
        "describe_volumes", Filters=[{"Name": "attachment.instance-id", "Values": [iid]}]
    )
    [vol] = vols["Volumes"]
    assert (vol["Size"], vol["VolumeType"]) == (500, "gp3")
    assert {"Key": "team", "Value": "ml"} in vol["Tags"]


async def test_efa_interfaces_on_moto(on_moto: OnMoto) -> None:
    ask = MachineAsk(network_tier="best")
    iid = await on_moto.provider.launch(
        spec(ask, instance_type="p4d.24xlarge", home=on_moto.home, key="j8-a1-n0")
    )
    [sent] = on_moto.sent
    assert [n["InterfaceType"] for n in sent["NetworkInterfaces"]] == ["efa"] * 4
    assert "BlockDeviceMappings" not in sent  # no disk asked: the AMI's own root volume
    enis = await on_moto.ec2(
        "describe_network_interfaces",
        Filters=[{"Name": "attachment.instance-id", "Values": [iid]}],
    )
    assert len(enis["NetworkInterfaces"]) == 4


async def test_a_docker_image_is_refused_on_ec2(on_moto: OnMoto) -> None:
    ask = MachineAsk(container_image="ubuntu:22.04")
    with pytest.raises(InvalidRequest, match="aws runs no containers"):
        await on_moto.provider.launch(spec(ask, home=on_moto.home, key="j7-a1-n0"))
    assert on_moto.sent == []


async def test_an_unknown_ami_is_an_invalid_request(on_moto: OnMoto) -> None:
    ask = MachineAsk(disk_size_gb=100, image_id="ami-00000000000000000")
    with pytest.raises(InvalidRequest):
        await on_moto.provider.launch(spec(ask, home=on_moto.home, key="j6-a1-n0"))
    assert on_moto.sent == []


@pytest.mark.slow
async def test_dry_run_refuses_a_docker_image_naming_kubernetes(
    aws_daemon: AwsDaemon,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A daemon with aws (and local) enabled: the one reason names the backend that would
    run the image, and how to get there."""
    task = tmp_path / "docker.yaml"
    task.write_text("resources: {image_id: 'docker:ubuntu:22.04'}\nrun: cat /etc/os-release\n")
    r = aws_daemon.proc.spotctl("jobs", "launch", str(task), "--dry-run", "-o", "json")
    assert r.returncode != 0
    said = r.stderr + r.stdout
    assert "docker:ubuntu:22.04 runs only on kubernetes (as the pod's image)" in said
    assert "not enabled (enabled: aws, local): enable k8s" in said


@pytest.mark.slow
async def test_the_instance_has_the_disk_and_tags_the_task_asks_for(
    aws_daemon: AwsDaemon,  # noqa: F811
    tmp_path: Path,
) -> None:
    spec = tmp_path / "disk.yaml"
    spec.write_text(
        "name: disk\n"
        "resources: {accelerators: T4:1, use_spot: true, disk_size: 300GB, disk_tier: high,"
        " labels: {team: ml}}\n"
        "config: {aws: {labels: {cost-center: '42'}}}\n"
        "run: sleep 60\n"
    )
    r = aws_daemon.proc.spotctl("jobs", "launch", str(spec), "-d", "-y", "-o", "json")
    assert r.returncode == 0, r.stderr
    jid = json.loads(r.stdout)["id"]
    [(region, inst)] = await eventually(
        lambda: aws_daemon.by_key(f"j{jid}-a1-n0"), timeout=30, what="the instance"
    )
    assert tags(inst)["team"] == "ml" and tags(inst)["cost-center"] == "42"
    [(_, vol)] = list(inst.block_device_mapping.items())
    volume = get_backend("ec2")[ACCOUNT][region].get_volume(vol.volume_id)
    assert (volume.size, volume.volume_type) == (300, "gp3")
