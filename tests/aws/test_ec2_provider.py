"""The EC2 provider against moto on loopback, through aioboto3 (the EC2 wire protocol).

What moto cannot show, and how it is covered instead: moto ignores ``ClientToken`` (so the
tag lookup before ``RunInstances`` is what these tests see deduplicate; real EC2 would also
answer the repeated token), never runs out of capacity (a test makes ``RunInstances`` answer
an EC2 error code), never interrupts a spot instance (a test stages it on the backend), and
cannot run user-data (the script is checked with ``bash -n`` and decoded back instead).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioboto3
import pytest

from spotd.providers import aws
from spotd.providers.aws import AwsConfig, AwsProvider, client_token, load_aws_catalog
from spotd.providers.base import (
    TAG_ATTEMPT,
    TAG_HOME,
    TAG_JOB,
    TAG_KEY,
    TAG_NODE,
    CapacityUnavailable,
    InstanceSpec,
    InvalidRequest,
    ProviderUnavailable,
    QuotaExceeded,
)
from spotd.types import AgentConfig, InstanceState, Market
from tests.aws.motoserver import AMI, NO_CREDS_UNSET, Moto, moto_server  # noqa: F401

pytestmark = pytest.mark.aws

REGIONS = ("us-west-2", "us-east-1", "eu-west-1")


def make_config(m: Moto, **kw: Any) -> AwsConfig:
    base: dict[str, Any] = {
        "regions": REGIONS,
        "endpoint_url": m.url,
        "image_id": {"*": AMI},
        "daemon_url": "http://10.0.0.5:8470",
        "checkpoint_store": "s3://spotd-ckpt/jobs",
        "subnet_by_zone": {},
        "key_name": None,
    }
    base.update(kw)
    return AwsConfig(**base)


class Fixture:
    def __init__(self, m: Moto) -> None:
        self.moto = m
        self.home = f"h-{uuid.uuid4().hex[:10]}"
        self.config = make_config(m)
        self.catalog = load_aws_catalog(self.config, None)
        self.session = aioboto3.Session()
        self.calls: list[str] = []
        self.session.events.register(
            "before-call.ec2.*", lambda model, **_: self.calls.append(model.name)
        )
        self.providers: list[AwsProvider] = []
        self.provider = self.new()

    def new(self) -> AwsProvider:
        p = AwsProvider(self.config, self.catalog, home_tag=self.home, session=self.session)
        self.providers.append(p)
        return p

    def spec(
        self,
        key: str,
        *,
        market: Market = Market.SPOT,
        region: str = "us-west-2",
        zone: str = "us-west-2b",
        instance_type: str = "g4dn.xlarge",
    ) -> InstanceSpec:
        agent = AgentConfig(
            instance_key=key,
            attempt_id=key.rsplit("-", 1)[0],
            job_id=7,
            task_id="spotd-t-j7",
            attempt=2,
            node_rank=0,
            num_nodes=1,
            setup="echo setup",
            run="python train.py",
            envs={"LR": "0.1"},
            daemon_url="http://10.0.0.5:8470",
            token="tok-" + key,
            checkpoint_store="/home/u/.spotd/checkpoints/spotd-t-j7",
        )
        tags = {
            TAG_HOME: self.home,
            TAG_JOB: "7",
            TAG_ATTEMPT: "j7-a2",
            TAG_NODE: "0",
            TAG_KEY: key,
        }
        return InstanceSpec(
            key=key,
            region=region,
            zone=zone,
            instance_type=instance_type,
            market=market,
            tags=tags,
            agent=agent,
        )

    async def describe(self, region: str, **kw: Any) -> list[dict[str, Any]]:
        async with aioboto3.Session().client(
            "ec2", region_name=region, endpoint_url=self.moto.url
        ) as ec2:
            r = await ec2.describe_instances(**kw)
        return [i for res in r["Reservations"] for i in res["Instances"]]

    async def user_data(self, region: str, instance_id: str) -> str:
        async with aioboto3.Session().client(
            "ec2", region_name=region, endpoint_url=self.moto.url
        ) as ec2:
            r = await ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        return base64.b64decode(r["UserData"]["Value"]).decode()


@pytest.fixture
async def fx(moto_server: Moto) -> AsyncIterator[Fixture]:  # noqa: F811
    f = Fixture(moto_server)
    yield f
    for p in f.providers:
        await p.close()


async def test_spot_launch_is_tagged_tokened_and_bootstrapped(fx: Fixture) -> None:
    spec = fx.spec("j7-a2-n0")
    iid = await fx.provider.launch(spec)
    [inst] = await fx.describe("us-west-2", InstanceIds=[iid])
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert {k: tags[k] for k in spec.tags} == dict(spec.tags)
    assert tags["Name"] == "spotd-j7-a2-n0"
    assert inst["InstanceLifecycle"] == "spot"
    assert inst["InstanceType"] == "g4dn.xlarge"
    assert inst["Placement"]["AvailabilityZone"] == "us-west-2b"
    assert inst["ClientToken"] == client_token(spec) == f"spotd-{fx.home}-j7-a2-n0"
    # IMDSv2 only: a metadata GET without a session token is refused on the instance
    options = inst["MetadataOptions"]
    assert (options["HttpTokens"], options["HttpEndpoint"]) == ("required", "enabled")
    assert options["HttpPutResponseHopLimit"] == 1
    script = await fx.user_data("us-west-2", iid)
    # a job's node: user-data carries a one-time bootstrap token, no secret and no agent token
    boot = aws.agent_from_user_data(script)
    assert set(boot) == {"daemon_url", "daemon_ca_pem", "instance_key", "bootstrap_token"}
    assert boot["daemon_url"] == "http://10.0.0.5:8470"
    assert boot["instance_key"] == "j7-a2-n0"
    assert "tok-j7-a2-n0" not in script and "python train.py" not in script
    # the config the daemon holds for that bootstrap is the one the instance runs
    agent = dataclasses.asdict(fx.provider.instance_agent(spec.agent))
    assert agent["token"] == "tok-j7-a2-n0"
    assert agent["notice_url"] == "http://169.254.169.254"
    assert agent["checkpoint_store"] == "s3://spotd-ckpt/jobs/spotd-t-j7/"
    assert agent["instance_dir"] == "/var/lib/spotd/j7-a2-n0"
    assert (agent["run"], agent["envs"]) == ("python train.py", {"LR": "0.1"})


async def test_on_demand_launch_has_no_spot_market(fx: Fixture) -> None:
    iid = await fx.provider.launch(
        fx.spec("j7-a2-n1", market=Market.ON_DEMAND, region="us-east-1", zone="us-east-1a")
    )
    [inst] = await fx.describe("us-east-1", InstanceIds=[iid])
    assert "InstanceLifecycle" not in inst
    [obs] = [o for o in await fx.provider.list_instances() if o.id == iid]
    assert (obs.region, obs.zone, obs.state) == ("us-east-1", "us-east-1a", InstanceState.RUNNING)


def test_user_data_is_valid_bash_and_within_the_limit(tmp_path: Path) -> None:
    agent = AgentConfig(
        instance_key="j1-a1-n0",
        attempt_id="j1-a1",
        job_id=1,
        task_id="t",
        attempt=1,
        node_rank=0,
        num_nodes=1,
        setup="pip install -r req.txt",
        run="python train.py 'a b'",
        daemon_url="http://10.0.0.5:8470",
        token="secret-token",
        checkpoint_store="s3://b/p/t/",
        instance_dir="/var/lib/spotd/j1-a1-n0",
        notice_url="http://169.254.169.254",
    )
    script = aws.render_user_data(agent, install="spotd[aws]==0.1.0")
    (tmp_path / "ud.sh").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "ud.sh")], check=True, timeout=10)
    assert script.startswith("#!/bin/bash\n") and len(script) < aws.USER_DATA_LIMIT
    assert "systemd-run" in script and "'spotd[aws]==0.1.0'" in script
    assert aws.agent_from_user_data(script)["token"] == "secret-token"
    big = AgentConfig(
        instance_key="k",
        attempt_id="a",
        job_id=1,
        task_id="t",
        attempt=1,
        node_rank=0,
        num_nodes=1,
        setup=None,
        run=os.urandom(12_000).hex(),
    )
    with pytest.raises(InvalidRequest, match="16 KiB"):
        aws.render_user_data(big, install="spotd")


async def test_listing_is_one_describe_per_region(fx: Fixture) -> None:
    await fx.provider.launch(fx.spec("j7-a2-n0"))
    fx.calls.clear()
    await fx.provider.list_instances()
    assert sorted(fx.calls) == ["DescribeInstances"] * len(REGIONS)


async def test_relaunch_after_a_crash_between_intent_and_create_finds_the_instance(
    fx: Fixture,
) -> None:
    """The daemon wrote the intent, RunInstances created the machine, and the daemon died
    before it recorded the id: the restarted daemon's provider re-launches the same key."""
    spec = fx.spec("j7-a2-n0")
    first = await fx.provider.launch(spec)
    restarted = fx.new()  # no memory of the first launch
    fx.calls.clear()
    assert await restarted.launch(spec) == first
    assert "RunInstances" not in fx.calls
    mine = await fx.describe(
        "us-west-2",
        Filters=[
            {"Name": f"tag:{TAG_HOME}", "Values": [fx.home]},
            {"Name": f"tag:{TAG_KEY}", "Values": [spec.key]},
        ],
    )
    assert [i["InstanceId"] for i in mine] == [first]


async def test_spot_interruption_is_a_preemption_with_ec2s_reason(fx: Fixture) -> None:
    iid = await fx.provider.launch(fx.spec("j7-a2-n0"))
    fx.moto.stage_spot_interruption("us-west-2", iid)
    [obs] = [o for o in await fx.provider.list_instances() if o.id == iid]
    assert obs.state == InstanceState.PREEMPTED
    assert obs.reason.startswith("Server.SpotInstanceTermination")


async def test_our_own_terminate_is_not_a_preemption_and_is_idempotent(fx: Fixture) -> None:
    iid = await fx.provider.launch(fx.spec("j7-a2-n0"))
    await fx.provider.terminate(iid)
    await fx.new().terminate(iid)  # a provider that must search the regions for it
    await fx.provider.terminate("i-0123456789abcdef0")  # never existed: a no-op
    [obs] = [o for o in await fx.provider.list_instances() if o.id == iid]
    assert obs.state == InstanceState.TERMINATED
    assert "UserInitiatedShutdown" in obs.reason


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("InsufficientInstanceCapacity", CapacityUnavailable),
        ("SpotMaxPriceTooLow", CapacityUnavailable),
        ("MaxSpotInstanceCountExceeded", QuotaExceeded),
        ("VcpuLimitExceeded", QuotaExceeded),
        ("InvalidParameterValue", InvalidRequest),
        ("Unsupported", InvalidRequest),
        ("RequestLimitExceeded", ProviderUnavailable),
    ],
)
async def test_run_instances_errors_are_classified_by_code(
    fx: Fixture, code: str, kind: type[Exception]
) -> None:
    with fx.moto.run_instances_fails(code, f"staged {code}"), pytest.raises(kind, match=code):
        await fx.provider.launch(fx.spec("j7-a2-n0"))


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("InsufficientHostCapacity", 500, CapacityUnavailable),
        ("InstanceLimitExceeded", 400, QuotaExceeded),
        ("InvalidAMIID.NotFound", 400, InvalidRequest),
        ("Throttling", 400, ProviderUnavailable),
        ("InternalError", 500, ProviderUnavailable),
        ("SomethingNew", 503, ProviderUnavailable),
        ("SomethingNew", 400, InvalidRequest),
    ],
)
def test_classification_table(code: str, status: int, kind: type[Exception]) -> None:
    assert type(aws.classify_error(code, "m", http_status=status)) is kind


async def test_unreachable_endpoint_is_provider_unavailable(fx: Fixture) -> None:
    p = AwsProvider(
        make_config(fx.moto, endpoint_url="http://127.0.0.1:9"), fx.catalog, home_tag=fx.home
    )
    fx.providers.append(p)
    with pytest.raises(ProviderUnavailable):
        await p.list_instances()


async def test_launch_refuses_what_the_catalog_does_not_offer(fx: Fixture) -> None:
    with pytest.raises(InvalidRequest, match="not offered"):
        await fx.provider.launch(
            fx.spec("j7-a2-n0", instance_type="p5.48xlarge", region="eu-west-1", zone="eu-west-1a")
        )
    with pytest.raises(InvalidRequest, match="not configured"):
        await fx.provider.launch(
            fx.spec("j7-a2-n0", region="ap-northeast-1", zone="ap-northeast-1a")
        )


async def test_without_credentials_aws_is_disabled_with_a_reason(
    moto_server: Moto,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for k in NO_CREDS_UNSET:
        monkeypatch.delenv(k, raising=False)
    from spotd.config import load_settings

    settings = load_settings(tmp_path, env={"SPOTD_HOME": str(tmp_path)})
    p = aws.from_settings(settings, {"regions": ["us-east-1"], "image_id": AMI})
    assert p.disabled_reason and "no AWS credentials" in p.disabled_reason
    assert "\n" not in p.disabled_reason
    assert p.catalog() == [] and p.snapshot
    with pytest.raises(ProviderUnavailable, match="disabled"):
        await p.list_instances()
    await p.close()


async def test_the_region_map_holds_what_is_listed_not_every_instance_ever(fx: Fixture) -> None:
    """The map terminate looks regions up in grew with every instance the daemon launched or
    listed, for months. Now it holds the last two listings and launches since: an instance
    no longer listed (gone from EC2's listings long after it ended) drops out of it, and a
    terminate of it still finds its region by asking each."""
    gone = await fx.provider.launch(fx.spec("j7-a2-n0"))
    kept = await fx.provider.launch(fx.spec("j8-a1-n0", region="us-east-1", zone="us-east-1a"))
    async with aioboto3.Session().client(
        "ec2", region_name="us-west-2", endpoint_url=fx.moto.url
    ) as ec2:
        await ec2.delete_tags(Resources=[gone], Tags=[{"Key": TAG_HOME}])  # out of our listing
    for _ in range(2):
        listed = {o.id for o in await fx.provider.list_instances()}
    assert listed == {kept}
    assert set(fx.provider._region_of) == {kept}
    await fx.provider.terminate(gone)
    [inst] = await fx.describe("us-west-2", InstanceIds=[gone])
    assert inst["State"]["Name"] in ("shutting-down", "terminated")
