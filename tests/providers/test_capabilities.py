"""Which backend declares which capability, and each capability's behaviour on exactly those.

The table ``DECLARED`` is the source of truth: the first test checks every backend against it
(by ``isinstance`` on the runtime-checkable Protocols, as callers ask), and every capability
test is parametrized over the backends the table gives it — none is skipped elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spotd.pricing.catalog import default_local_catalog
from spotd.providers.aws import AwsConfig, AwsProvider, load_aws_catalog
from spotd.providers.base import Provider, ProviderUnavailable
from spotd.providers.capabilities import (
    AdvanceNotices,
    AgentEndpoint,
    Chaos,
    Disableable,
    ObjectStore,
    PackageStore,
    SpotPriceFeed,
)
from spotd.providers.childenv import SERVICE_ONLY_VARS, child_env
from spotd.providers.kubernetes import KubernetesProvider, parse_config
from spotd.providers.local import LocalProvider
from spotd.providers.slurm import SlurmProvider, parse_partitions

CAPABILITIES = (AgentEndpoint, PackageStore, Chaos, Disableable, AdvanceNotices, SpotPriceFeed)
DAEMON_URL = "http://10.0.0.5:8470"

DECLARED: dict[str, set[type]] = {
    "local": {Chaos, AdvanceNotices, SpotPriceFeed},
    "aws": {AgentEndpoint, PackageStore, Disableable, SpotPriceFeed},
    "k8s": {AgentEndpoint, AdvanceNotices},
    "slurm": {AgentEndpoint},
}


def _local(tmp: Path, **_: Any) -> Provider:
    return LocalProvider(tmp, default_local_catalog())


def _aws(tmp: Path, **cfg: Any) -> Provider:
    config = AwsConfig.from_mapping({"daemon_url": DAEMON_URL, **cfg})
    return AwsProvider(config, load_aws_catalog(config, None))


def _k8s(tmp: Path, **_: Any) -> Provider:
    regions = {"east": {"namespace": "spotd", "host": "http://127.0.0.1:1"}}
    return KubernetesProvider(
        parse_config({"regions": regions, "daemon_url": DAEMON_URL}), home_tag="h"
    )


def _slurm(tmp: Path, **_: Any) -> Provider:
    return SlurmProvider(
        root=tmp,
        partitions=parse_partitions({"debug": {"cpus": 1, "memory_gb": 1}}),
        daemon_url=DAEMON_URL,
    )


BACKENDS: dict[str, Callable[..., Provider]] = {
    "local": _local,
    "aws": _aws,
    "k8s": _k8s,
    "slurm": _slurm,
}


def declaring(capability: type) -> list[str]:
    return [name for name, caps in DECLARED.items() if capability in caps]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
async def test_each_backend_declares_exactly_its_capabilities(backend: str, tmp_path: Path) -> None:
    provider = BACKENDS[backend](tmp_path)
    try:
        assert isinstance(provider, Provider)
        assert {c for c in CAPABILITIES if isinstance(provider, c)} == DECLARED[backend]
    finally:
        await provider.close()


# -- AgentEndpoint --------------------------------------------------------------------------

NOTICE_URLS = {"aws": "http://169.254.169.254", "k8s": "", "slurm": ""}


@pytest.mark.parametrize("backend", declaring(AgentEndpoint))
async def test_agents_are_told_the_configured_daemon_and_notice_source(
    backend: str, tmp_path: Path
) -> None:
    provider = BACKENDS[backend](tmp_path)
    assert isinstance(provider, AgentEndpoint)
    assert provider.daemon_url == DAEMON_URL
    assert provider.notice_url == NOTICE_URLS[backend]
    await provider.close()


# -- PackageStore ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", declaring(PackageStore))
@pytest.mark.parametrize(
    ("cfg", "store"),
    [
        ({}, ObjectStore()),
        ({"checkpoint_store": "s3://b/ck"}, ObjectStore(package_store_url="s3://b/ck/packages")),
        (
            {"checkpoint_store": "s3://b/ck", "package_store": "s3://p/x/"},
            ObjectStore(package_store_url="s3://p/x"),
        ),
        (
            {"endpoint_url": "http://127.0.0.1:5000", "profile": "dev"},
            ObjectStore(endpoint_url="http://127.0.0.1:5000", profile="dev"),
        ),
    ],
)
async def test_the_package_store_and_how_the_daemon_reaches_it(
    backend: str, cfg: dict[str, str], store: ObjectStore, tmp_path: Path
) -> None:
    provider = BACKENDS[backend](tmp_path, **cfg)
    assert isinstance(provider, PackageStore)
    assert provider.object_store == store
    assert provider.package_store_url == store.package_store_url
    await provider.close()


# -- Disableable ----------------------------------------------------------------------------


def _disabled(backend: str, tmp_path: Path, reason: str) -> Provider:
    provider = BACKENDS[backend](tmp_path)
    if isinstance(provider, AwsProvider):
        provider = AwsProvider(provider.config, provider.snapshot, disabled_reason=reason)
    return provider


@pytest.mark.parametrize("backend", declaring(Disableable))
@pytest.mark.parametrize("reason", [None, "no AWS credentials found"])
async def test_a_disabled_backend_offers_nothing_and_cannot_list(
    backend: str, reason: str | None, tmp_path: Path
) -> None:
    provider = _disabled(backend, tmp_path, reason) if reason else BACKENDS[backend](tmp_path)
    assert isinstance(provider, Disableable)
    assert provider.disabled_reason == reason
    assert bool(provider.catalog()) == (reason is None)
    if reason is not None:
        with pytest.raises(ProviderUnavailable, match=reason):
            await provider.list_instances()
    await provider.close()


# -- Chaos and AdvanceNotices: their behaviours run in the contract suites ------------------


@pytest.mark.parametrize("backend", declaring(Chaos))
async def test_chaos_on_an_unknown_instance_or_region_is_a_key_error(
    backend: str, tmp_path: Path
) -> None:
    provider = BACKENDS[backend](tmp_path)
    assert isinstance(provider, Chaos)
    for act in (
        lambda: provider.preempt("nope"),
        lambda: provider.kill("nope"),
        lambda: provider.partition("nope", seconds=1),
        lambda: provider.stockout("mars", seconds=1),
    ):
        with pytest.raises(KeyError):
            act()
    await provider.close()


@pytest.mark.parametrize("backend", declaring(AdvanceNotices))
async def test_a_notice_source_is_named_for_the_operator(backend: str, tmp_path: Path) -> None:
    provider = BACKENDS[backend](tmp_path)
    assert isinstance(provider, AdvanceNotices)
    assert provider.notice_source.strip()
    await provider.close()


# -- the environment of what providers start ------------------------------------------------


def test_children_lose_exactly_the_variables_systemd_gives_the_service() -> None:
    from spotd.ops.sdnotify import NOTIFY_ENV_VARS

    assert set(SERVICE_ONLY_VARS) == set(NOTIFY_ENV_VARS)
    env = {"PATH": "/usr/bin", "NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "HOME": "/h"}
    assert child_env(env) == {"PATH": "/usr/bin", "HOME": "/h"}
