"""service: and job_recovery: sections, their defaults and their short forms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from spotd.spec import JobRecovery, LoadBalancingPolicy, ReplicaPolicy
from spotd.types import RecoveryStrategy
from tests.spec.conftest import task_of


def test_probe_short_form_and_defaults() -> None:
    t = task_of("run: x\nservice:\n  readiness_probe: /health\n")
    assert t.service is not None
    probe = t.service.readiness_probe
    assert (probe.path, probe.initial_delay_seconds, probe.timeout_seconds) == ("/health", 1200, 15)
    assert t.service.load_balancing_policy is LoadBalancingPolicy.LEAST_LOAD
    assert t.service.policy() == ReplicaPolicy(min_replicas=1, max_replicas=1)


@pytest.mark.parametrize(
    ("service", "policy"),
    [
        ("replicas: 3", ReplicaPolicy(min_replicas=3, max_replicas=3)),
        ("replica_policy: {min_replicas: 0, max_replicas: 4, target_qps_per_replica: 1.5}",
         ReplicaPolicy(min_replicas=0, max_replicas=4, target_qps_per_replica=1.5)),
        ("replica_policy: {min_replicas: 2}", ReplicaPolicy(min_replicas=2)),
    ],
)  # fmt: skip
def test_replicas_and_replica_policy(service: str, policy: ReplicaPolicy) -> None:
    t = task_of(f"run: x\nservice:\n  readiness_probe: /\n  {service}\n")
    assert t.service is not None and t.service.policy() == policy


@pytest.mark.parametrize(
    ("written", "policy"),
    [("round_robin", LoadBalancingPolicy.ROUND_ROBIN),
     ("least_load", LoadBalancingPolicy.LEAST_LOAD),
     ("power_of_two", LoadBalancingPolicy.POWER_OF_TWO),
     ("Power-Of-Two", LoadBalancingPolicy.POWER_OF_TWO),
     ("power_of_two_choices", LoadBalancingPolicy.POWER_OF_TWO)],
)  # fmt: skip
def test_load_balancing_policy_names(written: str, policy: LoadBalancingPolicy) -> None:
    t = task_of(f"run: x\nservice:\n  readiness_probe: /\n  load_balancing_policy: {written}\n")
    assert t.service is not None and t.service.load_balancing_policy is policy


@pytest.mark.parametrize(
    ("service_ports", "resource_ports", "port"),
    [("ports: 8080", None, 8080), (None, "8000", 8000), (None, "[8000, 9000]", None),
     ("ports: 8080", "8000", 8080), (None, None, None)],
)  # fmt: skip
def test_service_port(
    service_ports: str | None, resource_ports: str | None, port: int | None
) -> None:
    text = "run: x\nservice:\n  readiness_probe: /\n"
    text += f"  {service_ports}\n" if service_ports else ""
    text += f"resources:\n  ports: {resource_ports}\n" if resource_ports else ""
    assert task_of(text).service_port() == port


@pytest.mark.parametrize(
    ("written", "strategy"),
    [("job_recovery: FAILOVER", RecoveryStrategy.FAILOVER),
     ("job_recovery: eager_next_region", RecoveryStrategy.EAGER_NEXT_REGION),
     ("job_recovery: {strategy: Failover}", RecoveryStrategy.FAILOVER),
     ("job_recovery: {max_restarts_on_errors: 2}", RecoveryStrategy.EAGER_NEXT_REGION),
     ("job_recovery: {strategy: DEADLINE, expected_duration: 2h}", RecoveryStrategy.DEADLINE),
     ("resources: {job_recovery: failover}", RecoveryStrategy.FAILOVER)],
)  # fmt: skip
def test_strategies(written: str, strategy: RecoveryStrategy) -> None:
    assert task_of(f"run: x\n{written}\n").job_recovery.strategy is strategy


def test_recovery_fields() -> None:
    rec = task_of(
        "run: x\njob_recovery:\n  strategy: DEADLINE\n  expected_duration: 2h\n"
        "  give_up_after: 10m\n  deadline: 6h\n  recover_on_exit_codes: 33\n"
    ).job_recovery
    assert rec.expected_duration_seconds == 7200 and rec.give_up_after_seconds == 600
    assert rec.deadline == timedelta(hours=6) and rec.recover_on_exit_codes == [33]
    assert rec.resolve_deadline(100.0) == 100.0 + 6 * 3600


@pytest.mark.parametrize(
    ("written", "epoch"),
    [("2030-01-02T03:04:05Z", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()),
     ("'2030-01-02T03:04:05+00:00'", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()),
     ("90m", 1_000.0 + 5400), ("3600", 1_000.0 + 3600)],
)  # fmt: skip
def test_deadline_absolute_or_relative(written: str, epoch: float) -> None:
    rec = task_of(f"run: x\njob_recovery:\n  deadline: {written}\n").job_recovery
    assert rec.resolve_deadline(1_000.0) == epoch


def test_naive_deadline_is_local_time() -> None:
    rec = task_of("run: x\njob_recovery:\n  deadline: 2030-01-02T03:04:05\n").job_recovery
    assert rec.resolve_deadline(0.0) == datetime(2030, 1, 2, 3, 4, 5).timestamp()


def test_no_deadline_by_default() -> None:
    assert JobRecovery().resolve_deadline(5.0) is None
