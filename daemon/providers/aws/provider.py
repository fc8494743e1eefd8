"""EC2 instances, spot or on-demand, through aioboto3 (with ``config.credentials_problem``'s
check, the only module of spotd's providers that talks to AWS).

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
for preemptions.

What a task asks of the machine beyond its type (``spec.machine``: disk size and tier, EFA,
labels, its own AMI) is laid into the request by ``spotd.providers.aws.machine``; a root volume
is named by the AMI's root device (one ``DescribeImages`` per image and region), and a docker
image is refused (EC2 runs no containers; placement sends those tasks to Kubernetes).

The two-minute interruption notice is not an EC2 API answer: it appears in the instance
metadata service, which the agent polls (``notice_url``). So this provider never reports
NOTICE itself (it does not declare ``AdvanceNotices``); the agent does, through its heartbeat.

Credentials come from the standard chain (environment, shared files and profiles, container
and instance roles). Without any, the provider is built *disabled*: it offers nothing, refuses
to launch, and its listing fails (slowly, so the log is not flooded) rather than report no
instances; ``disabled_reason`` says why in one line (``spotctl check --providers``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from spotd.clock import wall
from spotd.providers.aws.bootstrap import issue_token
from spotd.providers.aws.catalog import load_aws_catalog
from spotd.providers.aws.config import PROVIDER_NAME, AwsConfig
from spotd.providers.aws.ec2 import from_client_error, observe, run_instances_request
from spotd.providers.aws.machine import efa_problem, wants_root_volume
from spotd.providers.aws.userdata import (
    agent_for_instance,
    client_token,
    render_bootstrap_user_data,
    render_user_data,
)
from spotd.providers.base import (
    TAG_HOME,
    TAG_KEY,
    InstanceSpec,
    InvalidRequest,
    ObservedInstance,
    ProviderUnavailable,
)
from spotd.providers.capabilities import ObjectStore
from spotd.types import AgentConfig, CatalogEntry, InstanceId, InstanceState

log = structlog.get_logger("spotd.providers.aws")

DISABLED_LIST_PAUSE = 3.0  # a disabled provider's listing fails at most this often (the
# pause holds only the aws observer, and stays under the supervisor's 5 s stop timeout)

SpotQuotes = dict[tuple[str, str, str], float]  # (region, zone, type) -> $/h


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


class AwsProvider:
    """EC2 through aioboto3, one client per region, opened on first use.

    Capabilities: ``AgentEndpoint`` (agents call ``daemon_url`` and poll the metadata service
    at ``notice_url``), ``PackageStore`` (packages travel through S3) and ``Disableable``.
    """

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
        self.daemon_url = config.daemon_url  # where agents on EC2 reach this daemon
        self.notice_url = config.notice_url
        self._offered = {(e.region, e.zone, e.instance_type) for e in self.snapshot}
        self._region_of: dict[str, str] = {}  # instance id -> its region (for terminate)
        self._noted: dict[str, str] = {}  # the same, noted since the last listing began
        self._root_devices: dict[tuple[str, str], str] = {}
        self._clients: dict[str, Any] = {}
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()
        self._session: Any = session
        self._disabled_listed = False

    @property
    def package_store_url(self) -> str | None:
        """Where agents on EC2 get workdir/file_mounts packages from (None: nowhere in S3)."""
        return self.config.package_store_url

    @property
    def object_store(self) -> ObjectStore:
        return ObjectStore(
            endpoint_url=self.config.endpoint_url,
            profile=self.config.profile,
            package_store_url=self.config.package_store_url,
        )

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
                    connect_timeout=5,
                    read_timeout=20,
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
            raise from_client_error(exc, f"{region} {op}") from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise ProviderUnavailable(f"{region} {op}: {exc}") from exc

    async def _pages(self, region: str, op: str, what: str, **kw: Any) -> list[dict[str, Any]]:
        """Every page of a paginated call, failures classified as ``_call`` does."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = await self._client(region)
        try:
            return [page async for page in client.get_paginator(op).paginate(**kw)]
        except ClientError as exc:
            raise from_client_error(exc, f"{region} {what}") from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise ProviderUnavailable(f"{region} {what}: {exc}") from exc

    async def _describe(self, region: str, filters: list[dict[str, Any]]) -> list[ObservedInstance]:
        pages = await self._pages(
            region,
            "describe_instances",
            "DescribeInstances",
            Filters=filters,
            PaginationConfig={"PageSize": 1000},
        )
        out: list[ObservedInstance] = []
        for page in pages:
            for res in page.get("Reservations", []):
                for inst in res.get("Instances", []):
                    obs = observe(inst, region)
                    if obs is not None:
                        self._note_region(obs.id, region)
                        out.append(obs)
        return out

    def _home_filter(self, home: str | None) -> dict[str, Any]:
        if home:
            return {"Name": f"tag:{TAG_HOME}", "Values": [home]}
        return {"Name": "tag-key", "Values": [TAG_HOME]}

    # -- the provider interface ------------------------------------------------------------

    async def launch(self, spec: InstanceSpec) -> InstanceId:
        if spec.region not in self.regions:
            raise InvalidRequest(
                f"region {spec.region} is not configured for aws "
                f"(configured: {', '.join(self.regions)})"
            )
        if (spec.region, spec.zone, spec.instance_type) not in self._offered:
            raise InvalidRequest(
                f"{spec.instance_type} is not offered in {spec.region}/{spec.zone}"
            )
        if spec.machine.container_image is not None:
            raise InvalidRequest(
                f"image_id docker:{spec.machine.container_image}: aws runs no containers "
                "(only kubernetes does)"
            )
        image = spec.machine.image_id or self.config.for_region(self.config.image_id, spec.region)
        if not image:
            raise InvalidRequest(
                f"no image_id configured for {spec.region} (providers.aws.image_id)"
            )
        home = spec.tags.get(TAG_HOME)
        found = await self._describe(
            spec.region,
            [self._home_filter(home), {"Name": f"tag:{TAG_KEY}", "Values": [spec.key]}],
        )
        if found:  # launched before a crash: the same instance, never a second one
            live = [o for o in found if o.state in (InstanceState.PENDING, InstanceState.RUNNING)]
            return (live or found)[0].id
        no_efa = efa_problem(spec.machine, spec.instance_type)
        if no_efa:
            log.warning("network tier not honoured", key=spec.key, reason=no_efa)
        root = None
        if wants_root_volume(spec.machine):
            root = await self._root_device(spec.region, image)
        kw = run_instances_request(
            spec,
            self.config,
            image=image,
            token=client_token(spec),
            user_data=self._user_data(spec.agent),
            root_device=root,
        )
        resp = await self._call(spec.region, "run_instances", **kw)
        iid = InstanceId(resp["Instances"][0]["InstanceId"])
        self._note_region(iid, spec.region)
        log.info(
            "launched",
            instance=iid,
            key=spec.key,
            region=spec.region,
            zone=spec.zone,
            instance_type=spec.instance_type,
            market=str(spec.market),
        )
        return iid

    async def _root_device(self, region: str, image: str) -> str:
        """The AMI's root device name (``/dev/sda1``, ``/dev/xvda``): the one a root volume's
        size and type must be given for. One ``DescribeImages`` per (region, image)."""
        known = self._root_devices.get((region, image))
        if known is None:
            resp = await self._call(region, "describe_images", ImageIds=[image])
            images = resp.get("Images") or []
            if not images:
                raise InvalidRequest(f"image {image} not found in {region}")
            known = str(images[0].get("RootDeviceName") or "/dev/sda1")
            self._root_devices[(region, image)] = known
        return known

    def instance_agent(self, agent: AgentConfig) -> AgentConfig:
        """The agent's config as it runs on an EC2 instance (``agent_for_instance``): what the
        daemon holds for the instance's bootstrap. Idempotent."""
        return agent_for_instance(
            agent,
            notice_url=self.config.notice_url,
            checkpoint_store=self.config.checkpoint_store,
        )

    def _user_data(self, agent: AgentConfig) -> str:
        """A job's node gets a one-time bootstrap token (the daemon holds its config: see
        ``spotd.control.agent_config.BootstrapsAgents``); a service replica, whose config the
        daemon does not hold, still gets it embedded."""
        agent = self.instance_agent(agent)
        install = self.config.agent_install
        if not agent.job_id:
            return render_user_data(agent, install=install)
        token = issue_token(agent.token, key=agent.instance_key, now=wall())
        return render_bootstrap_user_data(agent, bootstrap_token=token, install=install)

    async def list_instances(self) -> Sequence[ObservedInstance]:
        if self.disabled_reason:
            if self._disabled_listed:
                await asyncio.sleep(DISABLED_LIST_PAUSE)
            self._disabled_listed = True
            raise ProviderUnavailable(f"aws is disabled: {self.disabled_reason}")
        filters = [self._home_filter(self.home_tag)]
        noted, self._noted = self._noted, {}
        per_region = await asyncio.gather(*(self._describe(r, filters) for r in self.regions))
        # the regions of what is listed now, and of what was noted since the listing before
        # began (a launch EC2 does not list yet): kept for ever, this grew with every
        # instance the daemon ever launched or listed
        self._region_of = {**noted, **self._noted}
        return [o for found in per_region for o in found]

    def _note_region(self, instance_id: str, region: str) -> None:
        self._region_of[instance_id] = self._noted[instance_id] = region

    async def terminate(self, instance_id: InstanceId) -> None:
        known = self._region_of.get(instance_id)
        for region in [known] if known else list(self.regions):
            try:
                await self._call(region, "terminate_instances", InstanceIds=[instance_id])
            except InvalidRequest as exc:
                if "InvalidInstanceID" in str(exc):
                    continue  # not in this region (or long gone): nothing to do here
                raise
            self._note_region(instance_id, region)
            return

    async def close(self) -> None:
        await self._stack.aclose()
        self._clients.clear()

    # -- prices ------------------------------------------------------------------------------

    async def spot_quotes(self, types_by_region: Mapping[str, set[str]]) -> SpotQuotes:
        """The newest Linux spot price per (region, zone, type), one paginated call per region."""
        newest: dict[tuple[str, str, str], tuple[datetime, float]] = {}

        async def region(r: str) -> None:
            pages = await self._pages(
                r,
                "describe_spot_price_history",
                "DescribeSpotPriceHistory",
                InstanceTypes=sorted(types_by_region[r]),
                ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
                StartTime=datetime.now(UTC),
            )
            for page in pages:
                for q in page.get("SpotPriceHistory", []):
                    k = (r, q["AvailabilityZone"], q["InstanceType"])
                    ts, price = q["Timestamp"], float(q["SpotPrice"])
                    if k not in newest or ts > newest[k][0]:
                        newest[k] = (ts, price)

        await asyncio.gather(*(region(r) for r in types_by_region))
        return {k: v[1] for k, v in newest.items()}


def from_settings(settings: Any, raw: Mapping[str, Any]) -> AwsProvider:
    """The factory ``spotd.server`` registers as ``"aws"``."""
    config = AwsConfig.from_mapping(raw)
    catalog = load_aws_catalog(config, settings.home)
    reason = credentials_problem(config.profile)
    if reason:
        log.warning("aws provider disabled", reason=reason)
    elif not config.checkpoint_store:
        log.warning(
            "aws: no checkpoint_store (s3://...) configured: checkpoints of jobs on "
            "EC2 do not outlive their instances"
        )
    return AwsProvider(config, catalog, home_tag=settings.home_tag, disabled_reason=reason)
