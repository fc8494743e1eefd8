"""``review_file``: how ``spotctl check`` reads a file (it validates, it does not place), and
the SkyPilot resource keys accepted at parse level (issue #19)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from spotd.cli.main import main as cli
from spotd.spec import SpecError, load_task, review_file
from spotd.spec.values import SyntaxProblem, parse_disk_size


def _notes(text: str) -> list[str]:
    review = review_file("t.yaml", text=text)
    assert review.errors == [], review.errors
    return [f"{i.path}: {i.message}" for i in review.notes]


@pytest.mark.parametrize(
    ("value", "gb"),
    [(256, 256), ("256", 256), ("256GB", 256), ("1024 GB", 1024), ("1TB", 1024), ("2t", 2048)],
)
def test_disk_size_units(value: object, gb: int) -> None:
    assert parse_disk_size(value) == gb


@pytest.mark.parametrize("value", [0, "0GB", "-1", "1.5GB", "big", "1PB", [1], True])
def test_bad_disk_size(value: object) -> None:
    with pytest.raises(SyntaxProblem, match="disk_size is GB"):
        parse_disk_size(value)


def test_resource_keys_accepted_at_launch() -> None:
    t = load_task(
        "t.yaml",
        text="run: x\nresources:\n  disk_size: 1TB\n  disk_tier: BEST\n  network_tier: standard\n"
        "  labels: {team: ml}\n  image_id: ami-1\n",
    )
    r = t.resources
    assert (r.disk_size, r.disk_tier, r.network_tier) == (1024, "best", "standard")
    assert load_task("t.yaml", text=t.to_yaml()) == t


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("resources: {disk_tier: fast}", "disk_tier is one of low, medium, high, ultra, best"),
        ("resources: {network_tier: low}", "network_tier is one of standard, best"),
        ("resources: {image_id: 'docker:ubuntu:22.04'}", "running a task in a container"),
        ("pool: {workers: 2}", "pools are not supported by spotd yet"),
        ("config: {kubernetes: {pod_config: {}}}", "config override `kubernetes`"),
        ("envs: {A: null}", "supply it at launch"),
        ("resources: {cloud: lambda}", "`lambda` is not supported by spotd"),
    ],
)
def test_launch_refuses_what_spotd_lacks_with_one_reason(text: str, phrase: str) -> None:
    with pytest.raises(SpecError) as info:
        load_task("t.yaml", text=f"run: x\n{text}\n")
    [issue] = info.value.issues
    assert phrase in issue.message, issue


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("envs: {A: null, B: 1}", ["envs.A: note: no value here: due at launch (--env A=VALUE)"]),
        ("secrets: {T: null}", ["secrets.T: note: no value here"]),
        ("resources: {infra: gcp/us-central1}", ["resources.infra: warning: spotd has no"]),
        ("resources: {cloud: oci}", ["resources.cloud: warning: spotd has no provider for `oci`"]),
        ("resources: {any_of: [{cloud: azure}]}", ["resources.any_of[0].cloud: warning"]),
        ("resources: {image_id: 'docker:x'}", ["resources.image_id: warning: docker image `x`"]),
        ("resources: {disk_tier: best}", ["resources.disk_tier: warning"]),
        ("pool: {workers: 2}", ["pool: warning: pools are not supported yet"]),
        ("config: {jobs: {controller: {}}}", ["config.jobs.controller: warning: ignored"]),
        ("config: {aws: {labels: {}}}", ["config.aws: warning: config override not supported"]),
        ("file_mounts: {/d: {name: my-bucket, mode: MOUNT}}", []),
        (
            "file_mounts: {/d: {name: my-bucket, store: gcs}}",
            ['file_mounts["/d"]: warning: spotd has no buckets in store gcs'],
        ),
        ("file_mounts: {/d: {source: s3://b/p}}", []),
        ("resources: {disk_size: 1TB, labels: {a: b}}", []),
    ],
)
def test_check_notes_and_warns_instead_of_refusing(text: str, expected: list[str]) -> None:
    notes = _notes(f"run: x\n{text}\n")
    assert len(notes) == len(expected), notes
    for got, phrase in zip(notes, expected, strict=True):
        assert got.startswith(phrase), got


def test_check_keeps_refusing_what_no_launch_could_use() -> None:
    review = review_file("t.yaml", text="run: x\nresources: {cloud: mars, cpus: x}\nvolumes: {}\n")
    assert review.tasks == []
    assert [i.path for i in review.errors] == ["resources.cloud", "resources.cpus", "volumes"]


def test_check_with_env_overrides_has_no_note() -> None:
    review = review_file("t.yaml", text="run: x\nenvs: {A: null}\n", env_overrides={"A": "1"})
    assert review.notes == [] and review.tasks[0].envs == {"A": "1"}


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "up", "--help"],
        ["serve", "update", "--help"],
        ["serve", "down", "--help"],
        ["jobs", "cancel", "--help"],
        ["jobs", "launch", "--help"],
    ],
)
def test_yes_is_accepted_where_skypilot_accepts_it(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and "-y, --yes" in result.output, result.output
