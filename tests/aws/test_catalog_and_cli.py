"""The EC2 catalog snapshot, its spot price refresh, and the CLI around providers
(``spotctl catalog show|refresh``, ``spotctl check --providers``).

moto answers every ``DescribeSpotPriceHistory`` price as 0.00001: the refresh must see that
such a quote is implausible and keep the snapshot's price, which is what these tests show on
the wire; that a plausible quote replaces the snapshot's is shown on the pure function.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spotd.pricing.catalog import load_catalog, parse_catalog
from spotd.providers.aws import AwsConfig, apply_spot_quotes, load_aws_catalog, snapshot_path
from tests.aws.motoserver import AMI, CREDS, NO_CREDS_UNSET, Moto, moto_server  # noqa: F401

pytestmark = pytest.mark.aws
ROOT = Path(__file__).resolve().parents[2]


def spotctl(home: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {**env, "SPOTD_HOME": str(home)}
    full.pop("SPOTD_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "spotd.cli.main", *args],
        env=full,
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_snapshot_covers_the_gpu_families_in_four_regions() -> None:
    entries = load_aws_catalog(AwsConfig(), None)
    families = {e.instance_type.split(".")[0] for e in entries}
    assert {"g4dn", "g5", "g6", "p3", "p4d", "p5"} <= families
    for fam in ("g4dn", "g5", "g6", "p3"):
        assert len({e.instance_type for e in entries if e.instance_type.startswith(fam + ".")}) >= 3
    assert {e.region for e in entries} >= {"us-east-1", "us-west-2", "eu-west-1", "ap-northeast-1"}
    assert all(e.accelerator and e.accelerator_count >= 1 for e in entries)
    assert all(e.spot_price is not None and 0 < e.spot_price < e.ondemand_price for e in entries)
    p4d = next(e for e in entries if e.instance_type == "p4d.24xlarge")
    assert (p4d.accelerator, p4d.accelerator_count, p4d.vcpus) == ("A100", 8, 96)
    assert {e.region for e in entries if e.instance_type == "p5.48xlarge"} == {
        "us-east-1",
        "us-west-2",
        "ap-northeast-1",
    }
    only = load_aws_catalog(AwsConfig(regions=("eu-west-1",)), None)
    assert {e.region for e in only} == {"eu-west-1"}


def test_plausible_quotes_replace_snapshot_prices_and_implausible_ones_do_not() -> None:
    text = snapshot_path().read_text()
    quotes = {
        ("us-east-1", "us-east-1b", "g5.xlarge"): 0.3021,
        ("us-east-1", "us-east-1a", "g5.xlarge"): 0.00001,
    }
    result = apply_spot_quotes(text, quotes, now=0)
    assert (result.updated, result.kept) == (1, len(load_aws_catalog(AwsConfig(), None)) - 1)
    assert "implausible" in result.lines[0]
    new = {
        (e.zone, e.instance_type): e.spot_price
        for e in parse_catalog(result.text)
        if e.region == "us-east-1"
    }
    old = {
        (e.zone, e.instance_type): e.spot_price
        for e in parse_catalog(text)
        if e.region == "us-east-1"
    }
    assert new[("us-east-1b", "g5.xlarge")] == 0.3021
    assert new[("us-east-1a", "g5.xlarge")] == old[("us-east-1a", "g5.xlarge")]


def test_catalog_refresh_against_moto_keeps_the_snapshot_prices(
    moto_server: Moto,  # noqa: F811
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "SPOTD_PROVIDERS_JSON": json.dumps(
            {
                "aws": {
                    "regions": ["us-east-1", "us-west-2"],
                    "endpoint_url": moto_server.url,
                    "image_id": AMI,
                }
            }
        ),
    }
    r = spotctl(tmp_path, env, "catalog", "refresh")
    assert r.returncode == 0, r.stderr
    assert "0 spot prices updated" in r.stdout and "implausible" in r.stdout, r.stdout
    written = tmp_path / "catalogs" / "aws.yaml"
    assert load_catalog(written) == load_catalog(snapshot_path())  # every price kept
    cfg = AwsConfig(regions=("us-east-1",))
    assert load_aws_catalog(cfg, tmp_path) == load_aws_catalog(cfg, None)


def test_catalog_show_filters_by_gpu_and_provider(moto_server: Moto, tmp_path: Path) -> None:  # noqa: F811
    env = {
        **os.environ,
        "SPOTD_PROVIDERS_JSON": json.dumps(
            {"aws": {"regions": ["us-east-1", "us-west-2"], "endpoint_url": moto_server.url}}
        ),
    }
    r = spotctl(tmp_path, env, "catalog", "show", "--gpu", "A100", "-o", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert {row["provider"] for row in rows} == {"aws", "local"}
    assert all(row["accelerator"] == "A100" for row in rows)
    assert {row["instance_type"] for row in rows if row["provider"] == "aws"} == {"p4d.24xlarge"}
    r = spotctl(tmp_path, env, "catalog", "show", "--gpu", "T4:1", "--provider", "aws")
    assert r.returncode == 0, r.stderr
    assert "g4dn.xlarge" in r.stdout and "g4dn.12xlarge" not in r.stdout
    assert "us-west-2a" in r.stdout  # the cheapest zone of the region is named


def test_check_providers_says_enabled_or_why_not(moto_server: Moto, tmp_path: Path) -> None:  # noqa: F811
    cfg = json.dumps({"aws": {"regions": ["us-east-1"], "endpoint_url": moto_server.url}})
    env = {**os.environ, "SPOTD_PROVIDERS_JSON": cfg}
    r = spotctl(tmp_path, env, "check", "--providers")
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(": ", 1) for line in r.stdout.strip().splitlines())
    assert lines["aws"].startswith("enabled (24 instance types in 1 region)"), r.stdout
    assert lines["local"].startswith("enabled")
    bare = {k: v for k, v in env.items() if k not in NO_CREDS_UNSET}
    bare.update(
        {
            k: CREDS[k]
            for k in ("AWS_EC2_METADATA_DISABLED", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")
        }
    )
    r = spotctl(tmp_path, bare, "check", "--providers")
    assert r.returncode == 0, r.stderr
    [line] = [x for x in r.stdout.splitlines() if x.startswith("aws:")]
    assert line.startswith("aws: disabled: no AWS credentials found"), r.stdout
    r = spotctl(tmp_path, bare, "catalog", "refresh")
    assert r.returncode == 1 and "aws: disabled" in r.stdout
