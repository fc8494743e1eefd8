"""The k8s tier's fixtures (kmock cluster, fake kubelet) live in kmock_env; registered here."""

import pytest

try:
    from tests.k8s.kmock_env import cluster, kubelet  # noqa: F401
except pytest.skip.Exception:  # no kmock outside CI: the test modules skip themselves
    pass
