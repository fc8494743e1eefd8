"""SkyPilot users bring their YAMLs: ``spotctl check`` over a corpus of SkyPilot-style task
files (``skypilot_corpus/``, one construct or a few per file).

``check`` validates, it does not place: every file spotd can read exits 0, with notes for
what is due at launch and warnings for what spotd cannot honour or place yet; the few it
cannot read fail with one clear reason. Never a traceback. The launch column says what
``load_tasks`` (the daemon's reading, at launch) does with the same file: it refuses, with one
clear reason, what spotd lacks yet (another cloud, a storage object, a pool, a docker image, a
config override).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from spotd.cli.check import check
from spotd.spec import SpecError, load_tasks

CORPUS = Path(__file__).resolve().parent / "skypilot_corpus"
ROOT = Path(__file__).resolve().parents[2]

# values for every env/secret the corpus leaves null (due at launch)
LAUNCH_ENV = {"WANDB_PROJECT": "p", "HF_TOKEN": "t", "WANDB_API_KEY": "k", "MODEL": "m"}

OK, FAIL = 0, 1
# file -> (check's exit code, phrases check prints, what launch says: None = accepted)
EXPECTED: dict[str, tuple[int, tuple[str, ...], str | None]] = {
    "01_minimal.yaml": (OK, ("OK (1 task)",), None),
    "02_train_a100.yaml": (OK, ("OK (1 task)",), None),
    "03_l4_needs_aws.yaml": (
        OK,
        ("no enabled provider offers L4; aws g6 does — enable aws",),
        None,
    ),
    "04_gcp_infra.yaml": (OK, ("no provider for `gcp`",), "`gcp` is not supported by spotd"),
    "05_cloud_azure.yaml": (OK, ("no provider for `azure`",), "`azure` is not supported by spotd"),
    "06_envs_null.yaml": (OK, ("envs.HF_TOKEN: note: no value here: due at launch",), None),
    "07_secrets_null.yaml": (OK, ("secrets.HF_TOKEN: note:", "secrets.WANDB_API_KEY: note:"), None),
    "08_any_of.yaml": (OK, ("OK (1 task)",), None),
    "09_ordered.yaml": (OK, ("OK (1 task)",), None),
    "10_accelerator_set.yaml": (OK, ("OK (1 task)",), None),
    "11_storage_mount.yaml": (OK, ("OK (1 task)",), None),
    "12_storage_mount_cached.yaml": (OK, ("OK (1 task)",), None),
    "13_storage_gcs_source.yaml": (OK, ("no buckets in gs://",), "not supported by spotd"),
    "14_disk_units.yaml": (OK, ("disk_tier best is not honoured", "network_tier best"), None),
    "15_disk_gb.yaml": (OK, ("disk_tier medium",), None),
    "16_docker_image.yaml": (OK, ("docker image", "enable k8s"), None),
    "17_ami_by_region.yaml": (OK, ("provider aws is not enabled",), None),
    "18_pipeline.yaml": (OK, ("OK (3 tasks)",), None),
    "19_service.yaml": (OK, ("OK (1 task)",), None),
    "20_service_autoscale.yaml": (OK, ("envs.MODEL: note:",), None),
    "21_job_recovery_string.yaml": (OK, ("OK (1 task)",), None),
    "22_job_recovery_dict.yaml": (OK, ("OK (1 task)",), None),
    "23_num_nodes.yaml": (OK, ("OK (1 task)",), None),
    "24_config_controller.yaml": (OK, ("config.jobs.controller: warning: ignored",), None),
    "25_config_other.yaml": (
        OK,
        ("config.kubernetes.pod_config",),
        "`kubernetes.pod_config` is not supported",
    ),
    "26_pool.yaml": (OK, ("OK (1 task)",), None),  # a pool: `spotctl jobs pool apply`
    "27_kubernetes.yaml": (OK, ("enable k8s",), None),
    "28_lambda_runpod_any_of.yaml": (OK, ("`lambda`", "`runpod`", "`nebius`"), "`lambda` is"),
    "29_volumes.yaml": (FAIL, ("volumes: not supported by spotd",), "not supported by spotd"),
    "30_tpu_accelerator_args.yaml": (FAIL, ("accelerator_args: not supported",), "not supported"),
    "31_oci_fluidstack_cudo.yaml": (OK, ("`oci`", "`vast`", "`do`"), "`oci` is not supported"),
    "41_aws_disk_efa.yaml": (OK, ("provider aws is not enabled; aws p4d does — enable aws",), None),
    "42_docker_on_k8s.yaml": (OK, ("enable k8s",), None),
    "43_config_overrides.yaml": (
        OK,
        ("config overrides `kubernetes.pod_config`, `docker.run_options`",),
        "`kubernetes.pod_config`, `docker.run_options` are not supported",
    ),
    "44_docker_on_aws.yaml": (OK, ("aws runs no containers",), None),
}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty spotd home: the local provider alone is enabled."""
    monkeypatch.setenv("SPOTD_HOME", str(tmp_path))
    return tmp_path


def test_the_table_covers_the_corpus() -> None:
    assert sorted(EXPECTED) == sorted(p.name for p in CORPUS.glob("*.yaml"))
    assert len(EXPECTED) >= 30


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_check(name: str, home: Path) -> None:
    code, phrases, _ = EXPECTED[name]
    result = CliRunner().invoke(check, [str(CORPUS / name)])
    text = result.output  # stdout and stderr, interleaved
    assert result.exception is None or isinstance(result.exception, SystemExit), text
    assert "Traceback" not in text
    assert result.exit_code == code, text
    for phrase in phrases:
        assert phrase in text, text
    if code != OK:
        errors = [line for line in text.splitlines() if line.strip()]
        assert len(errors) == 1, text  # one clear reason


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launch_reading(name: str) -> None:
    _, _, refusal = EXPECTED[name]
    if refusal is None:
        assert load_tasks(CORPUS / name, env_overrides=LAUNCH_ENV)
        return
    with pytest.raises(SpecError) as info:
        load_tasks(CORPUS / name, env_overrides=LAUNCH_ENV)
    assert refusal in str(info.value), str(info.value)


def _spotctl_check(home: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPOTD_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "spotd.cli", "check", *map(str, files)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_spotctl_check_over_the_readable_corpus_exits_0(home: Path) -> None:
    files = [CORPUS / n for n, (code, _, _) in sorted(EXPECTED.items()) if code == OK]
    r = _spotctl_check(home, *files)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert r.stdout.count(": OK (") == len(files), r.stdout


def test_spotctl_check_names_the_one_reason_a_file_fails(home: Path) -> None:
    r = _spotctl_check(home, CORPUS / "29_volumes.yaml")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"{CORPUS / '29_volumes.yaml'}:2: volumes: not supported by spotd"
    ]
