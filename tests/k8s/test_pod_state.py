"""How a pod's status maps to an instance state, and how API failures are classified.

Pure functions: one row per case a cluster can report (the table in the provider's docstring).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client.rest import ApiException

import tests.k8s.kmock_env  # noqa: F401 - skips (or fails under CI=1) without the k8s deps
from spotd.providers.base import (
    InvalidRequest,
    ProviderUnavailable,
    QuotaExceeded,
)
from spotd.providers.kubernetes import classify, label_value, pod_name, pod_state
from spotd.types import InstanceState

pytestmark = pytest.mark.k8s

NOW = 1_800_000_000.0


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def pod(
    phase: str | None = "Running",
    *,
    reason: str = "",
    conditions: list[Any] | None = None,
    deletion: float | None = None,
    grace: int = 30,
) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": conditions or []}
    if phase:
        status["phase"] = phase
    if reason:
        status["reason"] = reason
    meta: dict[str, Any] = {"name": "spotd-j1-a1-n0"}
    if deletion is not None:
        meta["deletionTimestamp"] = _iso(deletion)
    return {"metadata": meta, "spec": {"terminationGracePeriodSeconds": grace}, "status": status}


def disruption(at: float | None, reason: str = "TerminationByKubelet") -> dict[str, Any]:
    c = {"type": "DisruptionTarget", "status": "True", "reason": reason}
    if at is not None:
        c["lastTransitionTime"] = _iso(at)
    return c


def unschedulable(at: float) -> dict[str, Any]:
    return {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "lastTransitionTime": _iso(at),
        "message": "0/3 nodes have nvidia.com/gpu",
    }


CASES = [
    # (what, pod, deleting, state, deadline)
    ("no status yet", pod(None), False, InstanceState.PENDING, None),
    ("pending", pod("Pending"), False, InstanceState.PENDING, None),
    (
        "unschedulable briefly",
        pod("Pending", conditions=[unschedulable(NOW - 60)]),
        False,
        InstanceState.PENDING,
        None,
    ),
    (
        "unschedulable too long",
        pod("Pending", conditions=[unschedulable(NOW - 301)]),
        False,
        InstanceState.TERMINATED,
        None,
    ),
    ("running", pod("Running"), False, InstanceState.RUNNING, None),
    (
        "disruption target",
        pod("Running", conditions=[disruption(NOW - 10)]),
        False,
        InstanceState.NOTICE,
        NOW + 20,
    ),
    (
        "disruption, 120 s grace",
        pod("Running", conditions=[disruption(NOW)], grace=120),
        False,
        InstanceState.NOTICE,
        NOW + 120,
    ),
    (
        "disruption without a time",
        pod("Running", conditions=[disruption(None)]),
        False,
        InstanceState.NOTICE,
        NOW - 5 + 30,
    ),
    (
        "deleted by someone else",
        pod("Running", deletion=NOW + 25),
        False,
        InstanceState.NOTICE,
        NOW + 25,
    ),
    ("deleted by spotd", pod("Running", deletion=NOW + 25), True, InstanceState.TERMINATED, None),
    ("evicted", pod("Failed", reason="Evicted"), False, InstanceState.PREEMPTED, None),
    ("preempted", pod("Failed", reason="Preempted"), False, InstanceState.PREEMPTED, None),
    ("node shutdown", pod("Failed", reason="NodeShutdown"), False, InstanceState.PREEMPTED, None),
    ("terminated", pod("Failed", reason="Terminated"), False, InstanceState.PREEMPTED, None),
    (
        "failed after disruption",
        pod("Failed", conditions=[disruption(NOW)]),
        False,
        InstanceState.PREEMPTED,
        None,
    ),
    ("node lost", pod("Running", reason="NodeLost"), False, InstanceState.PREEMPTED, None),
    ("failed otherwise", pod("Failed", reason="Error"), False, InstanceState.TERMINATED, None),
    ("completed", pod("Succeeded"), False, InstanceState.TERMINATED, None),
    ("node unreachable", pod("Unknown"), False, InstanceState.RUNNING, None),
]


@pytest.mark.parametrize(
    ("what", "p", "deleting", "state", "deadline"), CASES, ids=[c[0] for c in CASES]
)
def test_pod_state(
    what: str, p: dict[str, Any], deleting: bool, state: InstanceState, deadline: float | None
) -> None:
    view = pod_state(
        p, now=NOW, first_seen=lambda _what: NOW - 5, unschedulable_seconds=300, deleting=deleting
    )
    assert view.state == state, view
    if deadline is not None:
        assert view.notice_deadline == pytest.approx(deadline)
    if state == InstanceState.PREEMPTED:
        assert view.reason  # the evidence goes into the event


def api_error(status: int, message: str = "") -> ApiException:
    e = ApiException(status=status, reason="x")
    e.body = json.dumps({"kind": "Status", "code": status, "message": message})
    return e


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (
            api_error(
                403,
                'pods "p" is forbidden: exceeded quota: spotd-gpu-quota, requested: '
                "requests.nvidia.com/gpu=2, used: 4, limited: 4",
            ),
            QuotaExceeded,
        ),
        (api_error(403, 'pods is forbidden: User "x" cannot create resource'), InvalidRequest),
        (
            api_error(422, "Pod is invalid: spec.containers[0].image: Required value"),
            InvalidRequest,
        ),
        (api_error(400, "bad"), InvalidRequest),
        (api_error(404, 'namespaces "nope" not found'), InvalidRequest),
        (api_error(401, "Unauthorized"), ProviderUnavailable),
        (api_error(429, "too many requests"), ProviderUnavailable),
        (api_error(500, "etcdserver: request timed out"), ProviderUnavailable),
        (api_error(503, ""), ProviderUnavailable),
        (aiohttp.ClientConnectionError("refused"), ProviderUnavailable),
        (TimeoutError(), ProviderUnavailable),
    ],
)
def test_classify(exc: BaseException, kind: type) -> None:
    assert type(classify(exc, action="create pod")) is kind


@pytest.mark.parametrize(
    ("key", "ok"),
    [("j3-a2-n0", "spotd-j3-a2-n0"), ("J3_a2.n0", None), ("x" * 80, None)],
)
def test_pod_names_are_dns_labels(key: str, ok: str | None) -> None:
    name = pod_name(key)
    assert len(name) <= 63 and name == name.lower() and "_" not in name and "." not in name
    if ok:
        assert name == ok
    assert pod_name(key) == name  # stable: the idempotency key


def test_label_values_are_safe_and_distinct() -> None:
    assert label_value("abc123") == "abc123"
    a, b = label_value("x/" + "y" * 80), label_value("x/" + "y" * 79 + "z")
    assert a != b and len(a) <= 63 and "/" not in a
