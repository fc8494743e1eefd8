"""spotd.sdk.serve against a real daemon: up, status, update, down, errors by type.

Skipped when the daemon has no services API (``ServicesUnavailableError``), so that the SDK
and the services work can land in either order.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import spotd
from spotd.sdk import serve
from spotd.sdk.errors import ConflictError, ServicesUnavailableError


@pytest.fixture
def svc_conn(conn: spotd.Connection) -> spotd.Connection:
    try:
        serve.status(connection=conn)
    except ServicesUnavailableError as exc:
        pytest.skip(f"this daemon has no services API: {exc}")
    return conn


def stub_service(name: str, *, env: str = "1") -> spotd.Task:
    task = spotd.Task(
        name=name,
        run="python3 -m spotd.serve.stub_replica --port $SPOTD_REPLICA_PORT",
        envs={"GENERATION": env},
        service=spotd.Service(
            readiness_probe={"path": "/health", "initial_delay_seconds": 30}, replicas=1
        ),
    )
    return task.set_resources(spotd.Resources(cpus="1+"))


def wait_ready(
    name: str, conn: spotd.Connection, *, version: int = 1, timeout: float = 60
) -> spotd.ServiceStatus:
    deadline = time.monotonic() + timeout
    svc = serve.status(name, connection=conn)
    while time.monotonic() < deadline:
        if any(r.ready and r.version == version for r in svc.replicas):
            return svc
        time.sleep(0.3)
        svc = serve.status(name, connection=conn)
    raise AssertionError(f"no READY replica of version {version} in {timeout}s: {svc}")


@pytest.fixture
def service(svc_conn: spotd.Connection) -> Iterator[str]:
    name = f"sdk-svc-{time.monotonic_ns() % 10**6}"
    yield name
    try:
        serve.down(name, connection=svc_conn)
    except spotd.NotFoundError:
        pass


def test_up_status_update_down(service: str, svc_conn: spotd.Connection) -> None:
    started = serve.up(stub_service(service), connection=svc_conn)
    assert isinstance(started, spotd.ServiceStatus)
    assert (started.name, started.version) == (service, 1)
    assert started.endpoint and started.endpoint.startswith("http://")

    svc = wait_ready(service, svc_conn)
    [replica] = [r for r in svc.replicas if r.ready]
    assert replica.url and replica.market and replica.zone
    assert service in [s.name for s in serve.status(connection=svc_conn)]

    with pytest.raises(ConflictError):
        serve.up(stub_service(service), connection=svc_conn)
    replica_lines = list(serve.logs(service, replica.id, connection=svc_conn))
    assert replica_lines and all("\n" not in line for line in replica_lines)

    updated = serve.update(
        service, stub_service(service, env="2"), mode="rolling", connection=svc_conn
    )
    assert updated.version == 2
    wait_ready(service, svc_conn, version=2)

    assert serve.down(service, connection=svc_conn).status in ("SHUTTING_DOWN", "DOWN")


def test_service_errors_by_type(svc_conn: spotd.Connection) -> None:
    with pytest.raises(spotd.NotFoundError, match="no service 'nope'"):
        serve.status("nope", connection=svc_conn)
    with pytest.raises(spotd.NotFoundError, match="no service 'nope'"):
        list(serve.logs("nope", connection=svc_conn))
    with pytest.raises(spotd.InvalidTaskError, match="no `service:` section"):
        serve.up(spotd.Task(name="job-not-service", run="echo"), connection=svc_conn)
    huge = stub_service("huge").set_resources(spotd.Resources(accelerators="A100:16"))
    with pytest.raises(spotd.NoFeasiblePlacementError):
        serve.up(huge, connection=svc_conn)
    with pytest.raises(ValueError, match="mode must be one of"):
        serve.update("x", stub_service("x"), mode="sideways", connection=svc_conn)  # type: ignore[arg-type]


async def test_async_twin_status(svc_conn: spotd.Connection) -> None:
    services = await spotd.aio.serve.status(connection=svc_conn)
    assert isinstance(services, list)
    with pytest.raises(spotd.NotFoundError):
        await spotd.aio.serve.down("nope", connection=svc_conn)
