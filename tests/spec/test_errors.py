"""Bad task files: every problem is reported with its key path, its line and a clear phrase,
all at once, and never as a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotd.spec import SpecError, check_file, load_task, load_tasks
from tests.spec.conftest import issues_of

# (yaml, path, line, phrase); each YAML has exactly one problem
ONE_PROBLEM = [
    pytest.param(
        "name: x\nresources:\n  acclerators: A100:1\nrun: echo\n",
        "resources.acclerators",
        3,
        "did you mean `accelerators`?",
        id="typo-in-resources",
    ),
    pytest.param("nme: x\nrun: echo\n", "nme", 1, "did you mean `name`?", id="typo-at-top-level"),
    pytest.param(
        "run: echo\nservice:\n  readiness_probe: /\n  replica_policy:\n    min_replica: 1\n",
        "service.replica_policy.min_replica",
        5,
        "did you mean `min_replicas`?",
        id="typo-in-replica-policy",
    ),
    pytest.param(
        "run: echo\nfrobnicate: 1\n",
        "frobnicate",
        2,
        "unknown key (expected one of: name,",
        id="unknown-key-no-close-match",
    ),
    pytest.param(
        "run: echo\nresources:\n  memory: 32GB+\n",
        "resources.memory",
        3,
        "units such as GB",
        id="memory-with-units",
    ),
    pytest.param(
        "run: echo\nresources:\n  memory: lots\n",
        "resources.memory",
        3,
        "memory is GiB",
        id="memory-words",
    ),
    pytest.param(
        "run: echo\nresources:\n  cpus: 4++\n",
        "resources.cpus",
        3,
        "4+ (at least 4)",
        id="cpus-double-plus",
    ),
    pytest.param(
        "run: echo\nresources:\n  cpus: -2\n",
        "resources.cpus",
        3,
        "must be > 0",
        id="cpus-negative",
    ),
    pytest.param(
        "run: echo\nresources:\n  accelerators: A100:abc\n",
        "resources.accelerators",
        3,
        "count must be a number, got `abc`",
        id="accelerator-count-not-a-number",
    ),
    pytest.param(
        "run: echo\nresources:\n  accelerators: ':8'\n",
        "resources.accelerators",
        3,
        "accelerator name is missing",
        id="accelerator-without-name",
    ),
    pytest.param(
        "run: echo\nresources:\n  accelerators: A100:1.5\n",
        "resources.accelerators",
        3,
        "fractional accelerator count must be below 1",
        id="accelerator-fraction-above-one",
    ),
    pytest.param(
        "run: echo\nresources:\n  accelerators:\n    - A100:8\n    - H100:x\n",
        "resources.accelerators[1]",
        5,
        "got `x`",
        id="bad-entry-in-ordered-list",
    ),
    pytest.param(
        "run: echo\nresources:\n  accelerators:\n    A100: 8\n    H100: many\n",
        "resources.accelerators.H100",
        5,
        "must be a number",
        id="bad-count-in-any-of-mapping",
    ),
    pytest.param(
        "run: echo\nnum_nodes: 0\n", "num_nodes", 2, "must be >= 1, got 0", id="zero-nodes"
    ),
    pytest.param(
        "run: echo\nnum_nodes: two\n",
        "num_nodes",
        2,
        "expected an integer, got 'two'",
        id="nodes-not-a-number",
    ),
    pytest.param(
        "run: echo\nenvs:\n  A: 1\n  MUST_GIVE: null\n",
        "envs.MUST_GIVE",
        4,
        "--env MUST_GIVE=VALUE",
        id="env-without-value",
    ),
    pytest.param(
        "run: echo\nenvs:\n  not-a-name: 1\n",
        "envs.not-a-name",
        3,
        "not a valid environment variable name",
        id="bad-env-name",
    ),
    pytest.param(
        "run: echo\nenvs:\n  A: [1, 2]\n",
        "envs.A",
        3,
        "expected a string, number",
        id="env-value-a-list",
    ),
    pytest.param(
        "run: echo\nenvs: {A: x}\nsecrets: {A: y}\n",
        "secrets.A",
        3,
        "both an env and a secret",
        id="env-and-secret",
    ),
    pytest.param(
        "run: echo\nvolumes:\n  /mnt: vol\n",
        "volumes",
        2,
        "not supported by spotd",
        id="volumes-unsupported",
    ),
    pytest.param(
        "run: echo\nconfig:\n  jobs: {}\n",
        "config",
        2,
        "not supported by spotd",
        id="config-unsupported",
    ),
    pytest.param(
        "run: echo\nresources:\n  autostop: 10m\n",
        "resources.autostop",
        3,
        "not supported by spotd",
        id="autostop-unsupported",
    ),
    pytest.param(
        "run: echo\nresources:\n  _cluster_config_overrides: {}\n",
        "resources._cluster_config_overrides",
        3,
        "not supported by spotd",
        id="cluster-config-overrides-unsupported",
    ),
    pytest.param(
        "run: echo\nresources:\n  spot_recovery: FAILOVER\n",
        "resources.spot_recovery",
        3,
        "write `job_recovery`",
        id="old-spot-recovery-key",
    ),
    pytest.param(
        "run: echo\nresources:\n  infra: gcp/us-central1\n",
        "resources.infra",
        3,
        "`gcp` is not supported by spotd",
        id="unsupported-cloud",
    ),
    pytest.param(
        "run: echo\nresources:\n  cloud: awz\n",
        "resources.cloud",
        3,
        "unknown cloud `awz`",
        id="unknown-cloud",
    ),
    pytest.param(
        "run: echo\nresources:\n  infra: aws/us-east-1/a/b\n",
        "resources.infra",
        3,
        "at most three parts",
        id="infra-too-long",
    ),
    pytest.param(
        "run: echo\nresources:\n  infra: aws/us-east-1\n  region: us-west-2\n",
        "resources.infra",
        3,
        "either `infra` or `cloud`/`region`/`zone`",
        id="infra-and-region",
    ),
    pytest.param(
        "run: echo\nresources:\n  any_of: [{cpus: 2}]\n  ordered: [{cpus: 4}]\n",
        "resources.ordered",
        4,
        "either `any_of` or `ordered`",
        id="any-of-and-ordered",
    ),
    pytest.param(
        "run: echo\nresources:\n  accelerators: {A100: 8, H100: 8}\n  any_of:\n    - infra: aws\n",
        "resources.accelerators",
        3,
        "cannot be combined with any_of/ordered",
        id="accelerator-choice-and-any-of",
    ),
    pytest.param(
        "run: echo\nresources:\n  any_of:\n    - cpus: 2\n    - ordered: []\n",
        "resources.any_of[1].ordered",
        5,
        "cannot be nested",
        id="nested-ordered",
    ),
    pytest.param(
        "run: echo\nresources:\n  ports: 70000\n",
        "resources.ports",
        3,
        "outside 1-65535",
        id="port-out-of-range",
    ),
    pytest.param(
        "run: echo\nfile_mounts:\n  /data:\n    source: s3://b/p\n    mode: MOUNTED\n",
        'file_mounts["/data"].mode',
        5,
        "unknown mode `MOUNTED`; modes are COPY, MOUNT and MOUNT_CACHED",
        id="mount-mode-unknown",
    ),
    pytest.param(
        "run: echo\nfile_mounts:\n  /data:\n    source: ./d\n    mode: MOUNT\n",
        'file_mounts["/data"].name',
        3,
        "mode MOUNT of a local source needs `name:`",
        id="mount-of-a-local-source-needs-a-bucket",
    ),
    pytest.param(
        "run: echo\nfile_mounts:\n  /data: gs://bucket/path\n",
        'file_mounts["/data"]',
        3,
        "`gs://` sources are not supported by spotd",
        id="gcs-source-unsupported",
    ),
    pytest.param(
        "run: echo\nfile_mounts:\n  /data: {source: ./d, store: gcs}\n",
        'file_mounts["/data"].store',
        3,
        "store `gcs` is not supported by spotd",
        id="gcs-store-unsupported",
    ),
    pytest.param(
        "run: echo\nfile_mounts:\n  /data: {name: My_Bucket, source: ./d}\n",
        'file_mounts["/data"].name',
        3,
        "bucket name `My_Bucket` is not valid",
        id="bucket-name-invalid",
    ),
    pytest.param(
        "run: echo\nfile_mounts:\n  /data: {mode: COPY}\n",
        'file_mounts["/data"].source',
        3,
        "required key is missing",
        id="mount-without-source",
    ),
    pytest.param(
        "run: echo\nfile_mounts:\n  data: ./d\n",
        "file_mounts.data",
        3,
        "must be absolute",
        id="relative-remote-path",
    ),
    pytest.param(
        # the short form has no `strategy` key to point at: the path is where it was written
        "run: echo\njob_recovery: EAGER_NEXT_ZONE\n",
        "job_recovery",
        2,
        "did you mean `EAGER_NEXT_REGION`?",
        id="unknown-strategy",
    ),
    pytest.param(
        "run: echo\njob_recovery:\n  strategy: DEADLINE\n  deadline: 6h\n",
        "job_recovery.strategy",
        3,
        "needs `expected_duration`",
        id="deadline-strategy-without-duration",
    ),
    pytest.param(
        "run: echo\njob_recovery:\n  give_up_after: soon\n",
        "job_recovery.give_up_after",
        3,
        "90s, 15m, 6h",
        id="bad-duration",
    ),
    pytest.param(
        "run: echo\njob_recovery:\n  deadline: next tuesday\n",
        "job_recovery.deadline",
        3,
        "ISO-8601",
        id="bad-deadline",
    ),
    pytest.param(
        "run: echo\njob_recovery:\n  recover_on_exit_codes: [1, 300]\n",
        "job_recovery.recover_on_exit_codes[1]",
        3,
        "integer 0-255",
        id="bad-exit-code",
    ),
    pytest.param(
        "run: echo\njob_recovery: {max_restarts_on_errors: -1}\n",
        "job_recovery.max_restarts_on_errors",
        2,
        "must be >= 0",
        id="negative-restarts",
    ),
    pytest.param(
        "run: echo\njob_recovery: {strategy: FAILOVER}\nresources:\n"
        "  job_recovery: EAGER_NEXT_REGION\n",
        "resources.job_recovery",
        4,
        "unknown key",
        id="job-recovery-in-both-places",
    ),
    pytest.param(
        "run: echo\nresources:\n  job_recovery:\n    max_restarts_on_errors: x\n",
        "resources.job_recovery.max_restarts_on_errors",
        4,
        "expected an integer",
        id="error-inside-job-recovery-under-resources",
    ),
    pytest.param(
        "run: echo\nservice:\n  readiness_probe: /health\n  replicas: 2\n"
        "  replica_policy: {min_replicas: 1, max_replicas: 3, target_qps_per_replica: 1}\n",
        "service.replicas",
        4,
        "either `replicas`",
        id="replicas-and-replica-policy",
    ),
    pytest.param(
        "run: echo\nservice:\n  readiness_probe: /health\n  replica_policy:\n"
        "    min_replicas: 3\n    max_replicas: 2\n",
        "service.replica_policy.max_replicas",
        6,
        "below min_replicas",
        id="max-below-min",
    ),
    pytest.param(
        "run: echo\nservice:\n  readiness_probe: /health\n  replica_policy:\n"
        "    min_replicas: 1\n    max_replicas: 4\n",
        "service.replica_policy.max_replicas",
        6,
        "needs target_qps_per_replica",
        id="autoscaling-without-target-qps",
    ),
    pytest.param(
        "run: echo\nservice:\n  replicas: 2\n",
        "service.readiness_probe",
        2,
        "required key is missing",
        id="service-without-probe",
    ),
    pytest.param(
        "run: echo\nservice:\n  readiness_probe: health\n",
        "service.readiness_probe",
        3,
        "starts with /",
        id="probe-path-relative",
    ),
    pytest.param(
        "run: echo\nservice:\n  readiness_probe: /\n  load_balancing_policy: least_loud\n",
        "service.load_balancing_policy",
        4,
        "did you mean `least_load`?",
        id="unknown-lb-policy",
    ),
    pytest.param(
        "run: echo\nservice:\n  readiness_probe: /\n  tls: {keyfile: k}\n",
        "service.tls",
        4,
        "tls needs both `keyfile` and `certfile` (`certfile` is missing)",
        id="tls-half-configured",
    ),
    pytest.param(
        "run: echo\nresources: 4\n",
        "resources",
        2,
        "expected a mapping, got 4",
        id="resources-not-a-mapping",
    ),
    pytest.param("run: [a, b]\n", "run", 1, "expected a string, got a list", id="run-a-list"),
    pytest.param("run: echo\nrun: echo again\n", "run", 2, "key given twice", id="duplicate-key"),
    pytest.param("- run: echo\n", "", 1, "a task is a mapping", id="task-is-a-list"),
]


@pytest.mark.parametrize(("text", "path", "line", "phrase"), ONE_PROBLEM)
def test_one_problem_names_its_path_line_and_cause(
    text: str, path: str, line: int, phrase: str
) -> None:
    [issue] = issues_of(text)
    assert (issue.path, issue.line) == (path, line), issue
    assert phrase in issue.message, issue
    assert str(issue).startswith(f"t.yaml:{line}: {path + ': ' if path else ''}")


@pytest.mark.parametrize(
    ("text", "line", "phrase"),
    [
        ("name: x\nrun: [unclosed\n", 3, "expected ',' or ']'"),
        ("name: x\n  bad: indent\n", 2, "mapping values are not allowed here"),
        ("run: echo\n\tsetup: x\n", 2, "found character '\\t'"),
        ("a: *nowhere\n", 1, "undefined alias"),
    ],
)
def test_malformed_yaml_is_one_issue_with_the_line(text: str, line: int, phrase: str) -> None:
    [issue] = issues_of(text)
    assert issue.line == line and issue.path == ""
    assert issue.message.startswith("malformed YAML") and phrase in issue.message


def test_every_problem_is_reported_in_file_order() -> None:
    text = (
        "name: x\n"
        "resources:\n"
        "  acclerators: A100:1\n"
        "  memory: 32GB+\n"
        "num_nodes: 0\n"
        "volumes: {}\n"
        "envs:\n"
        "  TOKEN: null\n"
        "run: echo\n"
    )
    issues = issues_of(text)
    assert [(i.path, i.line) for i in issues] == [
        ("resources.acclerators", 3),
        ("resources.memory", 4),
        ("num_nodes", 5),
        ("volumes", 6),
        ("envs.TOKEN", 8),
    ]
    rendered = str(SpecError(issues))
    assert rendered.splitlines()[0] == (
        "t.yaml:3: resources.acclerators: unknown key; did you mean `accelerators`?"
    )
    assert len(rendered.splitlines()) == 5


def test_problems_in_several_documents_carry_their_own_lines() -> None:
    text = "run: a\n---\nrun: b\nnum_nodes: 0\n---\nrun: c\nresources: {cpus: x}\n"
    with pytest.raises(SpecError) as info:
        load_tasks("p.yaml", text=text)
    assert [(i.path, i.line) for i in info.value.issues] == [
        ("num_nodes", 4),
        ("resources.cpus", 7),
    ]


def test_load_task_refuses_several_documents() -> None:
    with pytest.raises(SpecError, match="expected one task, the file has 2"):
        load_task("p.yaml", text="run: a\n---\nrun: b\n")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n---\n"])
def test_a_file_without_a_task_is_an_error(text: str) -> None:
    [issue] = issues_of(text)
    assert "no task" in issue.message


def test_check_file_never_raises(tmp_path: Path) -> None:
    missing = check_file(tmp_path / "nope.yaml")
    assert len(missing) == 1 and "cannot read" in missing[0].message
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\x00\xff\xfe junk")
    assert len(check_file(binary)) == 1
    good = tmp_path / "ok.yaml"
    good.write_text("run: echo ok\n")
    assert check_file(good) == []


def test_secret_values_never_appear_in_messages() -> None:
    text = "run: echo\nsecrets:\n  TOKEN: [hunter2]\n  OTHER: {k: hunter2}\n"
    issues = issues_of(text)
    assert [i.path for i in issues] == ["secrets.TOKEN", "secrets.OTHER"]
    assert all("hunter2" not in str(i) for i in issues)
