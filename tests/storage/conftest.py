"""Fixtures of the storage tests: daemons with extra environment, moto on loopback."""

from tests.aws.motoserver import moto_server  # noqa: F401
from tests.ops.conftest import make_daemon  # noqa: F401
