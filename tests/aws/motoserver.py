"""moto on loopback for the AWS tiers: one ``ThreadedMotoServer`` in the test process.

Everything spotd does goes over HTTP to it (aioboto3, the EC2 and S3 wire protocol). Being in
the same process, a test can also reach moto's backend to stage what moto does not model: a
spot interruption (terminate the instance and set its ``state_reason`` to
``Server.SpotInstanceTermination``, after which ``DescribeInstances`` reports it as EC2 does),
an error answer from ``RunInstances`` (a stock-out, a quota), or a ``RunInstances`` that
creates the instance and then stalls before answering (a daemon killed in between).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

ACCOUNT = "123456789012"  # moto's default account
AMI = "ami-12c6146b"
CREDS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # never ask 169.254.169.254 for credentials: tests talk to loopback only
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/spotd-test-credentials",
    "AWS_CONFIG_FILE": "/nonexistent/spotd-test-config",
}
NO_CREDS_UNSET = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@dataclass
class Moto:
    url: str
    server: Any
    _hold: threading.Event = field(default_factory=threading.Event)

    def instance(self, region: str, instance_id: str) -> Any:
        from moto.backends import get_backend

        return get_backend("ec2")[ACCOUNT][region].get_instance(instance_id)

    def instances(self, region: str) -> list[Any]:
        from moto.backends import get_backend

        backend = get_backend("ec2")[ACCOUNT][region]
        return [i for r in backend.reservations.values() for i in r.instances]

    def stage_spot_interruption(self, region: str, instance_id: str) -> None:
        """EC2 reclaims a spot instance: terminated, with the spot termination reason."""
        from moto.ec2.models.instances import StateReason

        inst = self.instance(region, instance_id)
        inst.terminate()
        inst.state_reason = StateReason(
            "Server.SpotInstanceTermination: Spot instance termination",
            "Server.SpotInstanceTermination",
        )

    @contextlib.contextmanager
    def run_instances_fails(self, code: str, message: str) -> Iterator[None]:
        """``RunInstances`` answers with this EC2 error code (moto never runs out of anything)."""
        from moto.ec2.exceptions import EC2ClientError
        from moto.ec2.models.instances import InstanceBackend

        original = InstanceBackend.run_instances

        def failing(self: Any, *a: Any, **kw: Any) -> Any:
            raise EC2ClientError(code, message)

        InstanceBackend.run_instances = failing  # type: ignore[method-assign]
        try:
            yield
        finally:
            InstanceBackend.run_instances = original  # type: ignore[method-assign]

    @contextlib.contextmanager
    def run_instances_stalls(self, created: Callable[[Any], None]) -> Iterator[threading.Event]:
        """``RunInstances`` creates the instances, calls ``created(reservation)``, then waits
        (30 s at most) for the yielded event before it answers."""
        from moto.ec2.models.instances import InstanceBackend

        original = InstanceBackend.run_instances
        release = threading.Event()

        def stalling(self: Any, *a: Any, **kw: Any) -> Any:
            reservation = original(self, *a, **kw)
            created(reservation)
            release.wait(30)
            return reservation

        InstanceBackend.run_instances = stalling  # type: ignore[method-assign]
        try:
            yield release
        finally:
            release.set()
            InstanceBackend.run_instances = original  # type: ignore[method-assign]


_MOTO: Moto | None = None


def moto() -> Moto:
    """The process's moto server, started on first use (about a second), stopped at exit."""
    global _MOTO
    if _MOTO is None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request, else
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        _MOTO = Moto(url=f"http://{host}:{port}", server=server)
        atexit.register(server.stop)
    return _MOTO


@pytest.fixture
def moto_server(monkeypatch: pytest.MonkeyPatch) -> Moto:
    """moto on loopback, with dummy credentials in the environment (and none elsewhere)."""
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    m = moto()
    monkeypatch.setenv("AWS_ENDPOINT_URL", m.url)  # a client built without one stays on loopback
    return m


def aws_env(m: Moto) -> dict[str, str]:
    """Environment for a process (a daemon, an agent) that talks to moto."""
    env = dict(os.environ, **CREDS)
    env["AWS_ENDPOINT_URL"] = m.url
    return env
