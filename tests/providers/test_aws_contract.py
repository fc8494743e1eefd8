"""The AWS provider passes the provider contract against moto on loopback (EC2 wire protocol).

EC2's two-minute interruption notice is not part of the EC2 API: it appears in the instance
metadata service, which the agent polls, so the provider does not declare ``AdvanceNotices``
and the notice path has its own test (``tests/aws/test_metadata_notice.py``). A preemption is
staged on moto's backend the way RECIPES.md describes (terminated with
``Server.SpotInstanceTermination``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from spotd.providers.aws import AwsConfig, AwsProvider, load_aws_catalog
from spotd.providers.base import TAG_HOME, TAG_KEY, InstanceSpec
from spotd.types import AgentConfig, InstanceId, Market
from tests.aws.motoserver import AMI, Moto, moto_server  # noqa: F401 - the fixture
from tests.providers.contract import ProviderContract

pytestmark = pytest.mark.aws

REGIONS = ("us-east-1", "us-west-2")


class AwsHarness:
    def __init__(self, m: Moto) -> None:
        self.moto = m
        self.home_tag = f"contract-{uuid.uuid4().hex[:8]}"  # moto is shared: keep tests apart
        self.config = AwsConfig(
            regions=REGIONS,
            endpoint_url=m.url,
            image_id={"*": AMI},
            daemon_url="http://127.0.0.1:9",
            checkpoint_store="s3://spotd-contract/ckpt",
        )
        self.catalog = load_aws_catalog(self.config, None)
        self.provider = AwsProvider(self.config, self.catalog, home_tag=self.home_tag)
        self.others: list[AwsProvider] = []

    def spec(self, key: str) -> InstanceSpec:
        e = next(
            e for e in self.catalog if e.instance_type == "g4dn.xlarge" and e.region == "us-west-2"
        )
        agent = AgentConfig(
            instance_key=key,
            attempt_id=key.rsplit("-", 1)[0],
            job_id=1,
            task_id="t",
            attempt=1,
            node_rank=0,
            num_nodes=1,
            setup=None,
            run="sleep 600",
            daemon_url="http://127.0.0.1:9",
            token="x",
            checkpoint_store="/nowhere",
        )
        return InstanceSpec(
            key=key,
            region=e.region,
            zone=e.zone,
            instance_type=e.instance_type,
            market=Market.SPOT,
            tags={TAG_HOME: self.home_tag, TAG_KEY: key},
            agent=agent,
        )

    async def preempt(self, instance_id: InstanceId) -> None:
        self.moto.stage_spot_interruption("us-west-2", instance_id)

    async def new_provider(self) -> AwsProvider:
        return AwsProvider(self.config, self.catalog, home_tag=self.home_tag)

    async def make_stray(self, key: str) -> InstanceId:
        other = AwsProvider(self.config, self.catalog)
        self.others.append(other)
        return await other.launch(self.spec(key))


@pytest.fixture
async def harness(moto_server: Moto) -> AsyncIterator[AwsHarness]:  # noqa: F811
    h = AwsHarness(moto_server)
    yield h
    for o in await h.provider.list_instances():
        await h.provider.terminate(o.id)
    await h.provider.close()
    for p in h.others:
        await p.close()


class TestAwsProviderContract(ProviderContract):
    pass
