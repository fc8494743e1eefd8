"""``review_file``: how ``spotctl check`` reads a file (it validates, it does not place), and
the SkyPilot resource keys (issue #19): accepted at parse level, warned about where the backend
a key lands on cannot honour it (naming the one that would), ``image_id: docker:`` placed on
Kubernetes and refused at launch where nothing runs containers, ``config:`` overrides read
for the settings spotd has and the others named in one message."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from spotd.cli.main import main as cli
from spotd.control.submit import InvalidRequest, check_containers, with_infra
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
        ("config: {kubernetes: {pod_config: {}}}", "config override `kubernetes.pod_config` is"),
        (
            "config: {aws: {vpc_name: v, labels: {a: b}}, docker: {run_options: []}}",
            "config overrides `aws.vpc_name`, `docker.run_options` are not supported by spotd",
        ),
        ("config: {aws: {disk_encrypted: 'yes'}}", "expected true or false"),
        ("config: {aws: {labels: [a]}}", "expected a mapping of names to strings"),
        ("config: {kubernetes: {custom_metadata: {spec: {}}}}", "takes `labels` and"),
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
        (
            "resources: {image_id: 'docker:x'}",
            ["resources.image_id: warning: docker image `x` runs only on kubernetes"],
        ),
        ("resources: {infra: k8s, image_id: 'docker:x'}", []),
        (
            "resources: {infra: slurm, image_id: 'docker:x'}",
            [
                "resources.image_id: warning: docker image `x` runs only on kubernetes (as the "
                "pod's image); slurm runs no containers"
            ],
        ),
        (
            "resources: {disk_tier: best}",
            [
                "resources.disk_tier: warning: disk_tier best is not honoured on kubernetes, "
                "slurm or local (the default disk there); aws honours it: EBS io2, 20000 IOPS"
            ],
        ),
        ("resources: {infra: aws, disk_tier: low, disk_size: 10}", []),
        (
            "resources: {infra: k8s, disk_tier: high}",
            ["resources.disk_tier: warning: disk_tier high is not honoured on kubernetes"],
        ),
        ("resources: {infra: aws, network_tier: best}", []),
        (
            "resources: {infra: local, network_tier: best}",
            [
                "resources.network_tier: warning: network_tier best is not honoured on local "
                "(the default network there); aws honours it: EFA on the types that have it"
            ],
        ),
        ("resources: {network_tier: standard}", []),
        (
            "resources: {infra: k8s, image_id: ami-1}",
            ["resources.image_id: warning: a machine image (an AWS AMI): k8s ignores it"],
        ),
        ("resources: {infra: aws, image_id: {us-east-1: ami-1}}", []),
        (
            "resources: {any_of: [{infra: aws, disk_tier: high}, {infra: k8s, disk_tier: high}]}",
            ["resources.any_of[1].disk_tier: warning: disk_tier high is not honoured on k"],
        ),
        ("config: {jobs: {controller: {}}}", ["config.jobs.controller: warning: ignored"]),
        (
            "config: {aws: {labels: {a: b}, disk_encrypted: true}, "
            "kubernetes: {custom_metadata: {labels: {q: b}}}}",
            [],
        ),
        (
            "config: {aws: {labels: {}, vpc_name: v}, gcp: {labels: {a: b}}}",
            ["config.aws.vpc_name: warning: config overrides `aws.vpc_name`, `gcp.labels` are not"],
        ),
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


@pytest.mark.parametrize(
    ("text", "enabled", "refusal"),
    [
        ("image_id: 'docker:x'", {"k8s"}, None),
        ("image_id: 'docker:x'", {"k8s", "local"}, None),
        ("image_id: 'docker:x'", {"aws", "local"}, "runs only on kubernetes (as the pod's image)"),
        ("{infra: aws, image_id: 'docker:x'}", {"aws", "k8s"}, "aws runs no containers"),
        ("{infra: slurm, image_id: 'docker:x'}", {"slurm"}, "slurm runs no containers"),
        ("{any_of: [{infra: aws}, {image_id: 'docker:x'}]}", {"aws", "k8s"}, None),
        ("{infra: aws, image_id: ami-1}", {"aws"}, None),
    ],
)
def test_launch_refuses_a_docker_image_only_where_nothing_runs_containers(
    text: str, enabled: set[str], refusal: str | None
) -> None:
    """The daemon's reading accepts the image; placement (launch and ``--dry-run``,
    ``plan_submission``) refuses it with one reason naming the backend that would run it."""
    resources = text if text.startswith("{") else "{" + text + "}"
    task = load_task("t.yaml", text=f"run: x\nresources: {resources}\n")
    if refusal is None:
        check_containers(task, enabled)
        return
    with pytest.raises(InvalidRequest) as info:
        check_containers(task, enabled)
    assert refusal in info.value.message
    assert "drop image_id" in info.value.message


def test_a_docker_option_without_a_provider_is_placed_on_kubernetes() -> None:
    task = load_task("t.yaml", text="run: x\nresources: {image_id: 'docker:x', cpus: 2}\n")
    assert [o.provider for o in task.resource_request().options] == ["k8s"]
    moved = with_infra(task, "aws")  # --infra aws: the user's choice stands, and is refused
    assert [o.provider for o in moved.resource_request().options] == ["aws"]
    with pytest.raises(InvalidRequest, match="aws runs no containers"):
        check_containers(moved, {"aws", "k8s"})


def test_config_overrides_reach_the_machine_of_their_provider() -> None:
    task = load_task(
        "t.yaml",
        text="run: x\nresources: {labels: {team: ml}}\nconfig:\n"
        "  aws: {labels: {team: infra, cost: 1}, disk_encrypted: true}\n"
        "  kubernetes: {custom_metadata: {labels: {q: b}, annotations: {a: c}}}\n",
    )
    aws = task.machine(provider="aws", region="us-east-1")
    k8s = task.machine(provider="k8s", region="east")
    local = task.machine(provider="local", region="local")
    assert (dict(aws.labels), aws.disk_encrypted, dict(aws.annotations)) == (
        {"team": "infra", "cost": "1"},
        True,
        {},
    )
    assert (dict(k8s.labels), k8s.disk_encrypted, dict(k8s.annotations)) == (
        {"team": "ml", "q": "b"},
        False,
        {"a": "c"},
    )
    assert dict(local.labels) == {"team": "ml"} and not local.disk_encrypted
