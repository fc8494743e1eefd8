"""The ``RunInstances`` request for one node, built without EC2: one row per configuration
knob that changes what EC2 is asked for."""

from __future__ import annotations

from typing import Any

import pytest

from spotd.providers.aws import AwsConfig, AwsConfigError, run_instances_request
from spotd.providers.base import TAG_HOME, TAG_KEY, InstanceSpec
from spotd.types import AgentConfig, Market


def spec(market: Market) -> InstanceSpec:
    agent = AgentConfig(
        instance_key="j1-a1-n0",
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
        key="j1-a1-n0",
        region="us-east-1",
        zone="us-east-1a",
        instance_type="g4dn.xlarge",
        market=market,
        tags={TAG_HOME: "h", TAG_KEY: "j1-a1-n0"},
        agent=agent,
    )


@pytest.mark.parametrize(
    ("market", "cfg", "expected"),
    [
        (Market.ON_DEMAND, {}, {}),
        (
            Market.SPOT,
            {},
            {
                "InstanceMarketOptions": {
                    "MarketType": "spot",
                    "SpotOptions": {
                        "SpotInstanceType": "one-time",
                        "InstanceInterruptionBehavior": "terminate",
                    },
                }
            },
        ),
        (
            Market.ON_DEMAND,
            {"subnet_by_zone": {"us-east-1a": "subnet-1", "us-east-1b": "s-2"}},
            {"SubnetId": "subnet-1"},
        ),
        (
            Market.ON_DEMAND,
            {"security_group_ids": {"us-east-1": "sg-1", "*": ["sg-9"]}},
            {"SecurityGroupIds": ["sg-1"]},
        ),
        (
            Market.ON_DEMAND,
            {"security_group_ids": ["sg-8", "sg-9"]},
            {"SecurityGroupIds": ["sg-8", "sg-9"]},
        ),
        (Market.ON_DEMAND, {"key_name": "mine"}, {"KeyName": "mine"}),
        (
            Market.ON_DEMAND,
            {"iam_instance_profile": "spotd-agent"},
            {"IamInstanceProfile": {"Name": "spotd-agent"}},
        ),
        (
            Market.ON_DEMAND,
            {"iam_instance_profile": "arn:aws:iam::1:instance-profile/p"},
            {"IamInstanceProfile": {"Arn": "arn:aws:iam::1:instance-profile/p"}},
        ),
    ],
)
def test_the_request_carries_market_network_and_identity(
    market: Market, cfg: dict[str, Any], expected: dict[str, Any]
) -> None:
    kw = run_instances_request(
        spec(market),
        AwsConfig.from_mapping(cfg),
        image="ami-1",
        token="tok",
        user_data="#!/bin/bash\n",
    )
    optional = {
        "InstanceMarketOptions",
        "SubnetId",
        "SecurityGroupIds",
        "KeyName",
        "IamInstanceProfile",
    }
    assert {k: v for k, v in kw.items() if k in optional} == expected
    assert (kw["ImageId"], kw["ClientToken"], kw["UserData"]) == ("ami-1", "tok", "#!/bin/bash\n")
    assert kw["Placement"] == {"AvailabilityZone": "us-east-1a"}
    assert kw["InstanceInitiatedShutdownBehavior"] == "terminate"


def test_instance_and_volumes_carry_the_tags_and_a_name() -> None:
    kw = run_instances_request(
        spec(Market.SPOT), AwsConfig(), image="ami-1", token="t", user_data=""
    )
    by_type = {t["ResourceType"]: t["Tags"] for t in kw["TagSpecifications"]}
    assert by_type["instance"] == by_type["volume"]
    tags = {t["Key"]: t["Value"] for t in by_type["instance"]}
    assert tags == {TAG_HOME: "h", TAG_KEY: "j1-a1-n0", "Name": "spotd-j1-a1-n0"}


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        # the agent runs in the instance's own network namespace: one hop is enough
        ({}, {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1}),
        # jobs that run containers needing the instance role: one hop more
        (
            {"imds_hop_limit": 2},
            {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 2},
        ),
    ],
)
def test_instances_require_imdsv2(cfg: dict[str, Any], expected: dict[str, Any]) -> None:
    for market in Market:
        kw = run_instances_request(
            spec(market), AwsConfig.from_mapping(cfg), image="ami-1", token="t", user_data=""
        )
        assert kw["MetadataOptions"] == expected


@pytest.mark.parametrize("hops", [0, 65, -1, "2", True, 1.5, None])
def test_a_hop_limit_ec2_would_refuse_is_a_config_error(hops: object) -> None:
    with pytest.raises(AwsConfigError, match="imds_hop_limit"):
        AwsConfig.from_mapping({"imds_hop_limit": hops})
